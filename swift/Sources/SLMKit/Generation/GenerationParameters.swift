/// Limits and stop conditions of one generation.
public struct GenerationParameters: Sendable, Equatable {
    /// Upper bound on sampled tokens (stop tokens included).
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// Token ids that end generation; the tokenizer's EOS is always added.
    public var stopTokenIDs: Set<Int32>
    /// Strings that end generation; text from the stop string on is not emitted.
    public var stopStrings: [String]
    /// Leave special tokens (such as `<|im_start|>`) out of the emitted text.
    public var skipSpecialTokens: Bool

    public init(
        maxTokens: Int = 256, sampling: SamplingParameters = .greedy, stopTokenIDs: Set<Int32> = [],
        stopStrings: [String] = [], skipSpecialTokens: Bool = true
    ) {
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopTokenIDs = stopTokenIDs
        self.stopStrings = stopStrings
        self.skipSpecialTokens = skipSpecialTokens
    }
}
