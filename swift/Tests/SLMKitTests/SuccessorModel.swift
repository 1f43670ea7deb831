import SLMKit

/// A deterministic model whose logits strongly favour token `(last + 1) mod vocabularySize`.
actor SuccessorModel: CausalLanguageModel {
    enum Failure: Error, Equatable { case planned }

    nonisolated let maximumContextLength: Int?
    private let vocabularySize: Int
    private let delay: Duration?
    private let failOnCall: Int?
    private(set) var calls: [[Int32]] = []
    private(set) var resetCount = 0
    /// Every token fed since the last reset: what a real model's KV cache would hold.
    private(set) var sequence: [Int32] = []

    /// - Parameters:
    ///   - delay: sleep per call, to make generation slow enough to cancel.
    ///   - failOnCall: throw `Failure.planned` on this call number (0 = prefill).
    init(vocabularySize: Int, maximumContextLength: Int? = nil, delay: Duration? = nil, failOnCall: Int? = nil) {
        self.vocabularySize = vocabularySize
        self.maximumContextLength = maximumContextLength
        self.delay = delay
        self.failOnCall = failOnCall
    }

    func reset() {
        resetCount += 1
        sequence = []
    }

    func logits(for tokens: [Int32]) async throws -> [Float] {
        let callIndex = calls.count
        calls.append(tokens)
        if callIndex == failOnCall { throw Failure.planned }
        if let delay { try await Task.sleep(for: delay) }
        sequence += tokens
        var logits = [Float](repeating: 0, count: vocabularySize)
        if let last = tokens.last {
            logits[(Int(last) + 1) % vocabularySize] = 10
        }
        return logits
    }
}
