import Foundation

/// The individual steps of sampling, as pure functions so tests can check them exactly.
enum LogitProcessing {
    /// Divides positive logits and multiplies negative ones by `penalty` for every
    /// distinct token in `recentTokens` (the Hugging Face / mlx-lm rule).
    static func applyRepetitionPenalty(_ penalty: Float, to logits: inout [Float], recentTokens: ArraySlice<Int32>) {
        for token in Set(recentTokens) {
            let index = Int(token)
            guard logits.indices.contains(index) else { continue }
            logits[index] = logits[index] > 0 ? logits[index] / penalty : logits[index] * penalty
        }
    }

    /// Index of the largest logit (the first one on ties; NaNs are ignored).
    static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for (index, value) in logits.enumerated() where value > bestValue {
            best = index
            bestValue = value
        }
        return best
    }

    /// Softmax of `logits / temperature` in double precision, or `nil` when no logit is finite.
    static func softmax(_ logits: [Float], temperature: Float) -> [Double]? {
        let maximum = logits.lazy.filter { $0.isFinite }.max()
        guard let maximum else { return nil }
        let scale = 1 / Double(temperature)
        var probabilities = logits.map { logit -> Double in
            guard !logit.isNaN else { return 0 }
            return exp((Double(logit) - Double(maximum)) * scale)
        }
        let total = probabilities.reduce(0, +)
        guard total > 0, total.isFinite else { return nil }
        for index in probabilities.indices { probabilities[index] /= total }
        return probabilities
    }

    /// `log(softmax(logits)[index])` in double precision (`-inf` when no logit is finite).
    static func logSoftmax(_ logits: [Float], at index: Int) -> Double {
        guard let maximum = logits.lazy.filter({ $0.isFinite }).max() else { return -.infinity }
        let total = logits.reduce(0.0) { sum, logit in logit.isNaN ? sum : sum + exp(Double(logit) - Double(maximum)) }
        return Double(logits[index]) - Double(maximum) - log(total)
    }

    /// Token indices from most to least likely; equal probabilities keep id order.
    static func rankedByProbability(_ probabilities: [Double]) -> [Int] {
        probabilities.indices.sorted { lhs, rhs in
            probabilities[lhs] != probabilities[rhs] ? probabilities[lhs] > probabilities[rhs] : lhs < rhs
        }
    }

    /// The first `k` ranked tokens.
    static func topK(_ ranked: [Int], k: Int) -> [Int] {
        Array(ranked.prefix(k))
    }

    /// The shortest ranked prefix whose (renormalized) probability mass reaches `p`.
    static func topP(_ ranked: [Int], probabilities: [Double], p: Double) -> [Int] {
        let total = ranked.reduce(0) { $0 + probabilities[$1] }
        var kept: [Int] = []
        var mass = 0.0
        for index in ranked {
            kept.append(index)
            mass += probabilities[index]
            if mass >= p * total { break }
        }
        return kept
    }

    /// Ranked tokens at least `minP` times as likely as the most likely one.
    static func minP(_ ranked: [Int], probabilities: [Double], minP: Double) -> [Int] {
        guard let best = ranked.first else { return [] }
        let threshold = minP * probabilities[best]
        return ranked.filter { probabilities[$0] >= threshold }
    }

    /// Picks a candidate by inverse CDF over the candidates' renormalized probabilities.
    /// - Parameter uniform: a number in `[0, 1)`.
    static func draw(from candidates: [Int], probabilities: [Double], uniform: Double) -> Int {
        let total = candidates.reduce(0) { $0 + probabilities[$1] }
        let target = uniform * total
        var mass = 0.0
        for index in candidates {
            mass += probabilities[index]
            if target < mass { return index }
        }
        return candidates.last(where: { probabilities[$0] > 0 }) ?? candidates.first ?? 0
    }
}
