/// A decoder-only language model that keeps its own KV cache between calls.
///
/// ``Generator`` calls ``reset()``, then ``logits(for:)`` once with the whole
/// prompt (prefill) and then once per generated token (decode).
public protocol CausalLanguageModel: Sendable {
    /// Clears the cache so the next call starts a new sequence.
    func reset() async

    /// Appends `tokens` to the sequence and returns the logits predicting the token after the last one.
    func logits(for tokens: [Int32]) async throws -> [Float]

    /// The most tokens the model can attend to, if bounded.
    var maximumContextLength: Int? { get }
}

extension CausalLanguageModel {
    public var maximumContextLength: Int? { nil }
}
