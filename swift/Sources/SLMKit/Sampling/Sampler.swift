/// Chooses the next token from logits according to ``SamplingParameters``,
/// with its own seeded generator so a seed always yields the same choices.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var random: SeededRandomGenerator

    public init(parameters: SamplingParameters) {
        self.parameters = parameters
        random = SeededRandomGenerator(seed: parameters.seed)
    }

    /// Picks a token id.
    /// - Parameters:
    ///   - logits: one score per vocabulary entry.
    ///   - previousTokens: the tokens so far (prompt and generated), for the repetition penalty.
    public mutating func sample(logits: [Float], previousTokens: [Int32] = []) -> Int32 {
        var scores = logits
        if parameters.repetitionPenalty != 1 {
            LogitProcessing.applyRepetitionPenalty(
                parameters.repetitionPenalty, to: &scores,
                recentTokens: previousTokens.suffix(max(parameters.repetitionContextSize, 0)))
        }
        guard parameters.temperature > 0,
              let probabilities = LogitProcessing.softmax(scores, temperature: parameters.temperature) else {
            return Int32(LogitProcessing.argmax(scores))
        }
        let candidates = filteredCandidates(probabilities)
        let choice = LogitProcessing.draw(from: candidates, probabilities: probabilities, uniform: random.nextUniform())
        return Int32(choice)
    }

    /// Token indices that survive top-k, top-p and min-p.
    private func filteredCandidates(_ probabilities: [Double]) -> [Int] {
        let usesTopK = parameters.topK > 0
        let usesTopP = parameters.topP < 1
        let usesMinP = parameters.minP > 0
        guard usesTopK || usesTopP || usesMinP else { return Array(probabilities.indices) }
        var candidates = LogitProcessing.rankedByProbability(probabilities)
        if usesTopK {
            candidates = LogitProcessing.topK(candidates, k: parameters.topK)
        }
        if usesTopP {
            candidates = LogitProcessing.topP(candidates, probabilities: probabilities, p: Double(parameters.topP))
        }
        if usesMinP {
            candidates = LogitProcessing.minP(candidates, probabilities: probabilities, minP: Double(parameters.minP))
        }
        return candidates
    }
}
