/// How the next token is chosen from the model's logits.
///
/// Order of application: repetition penalty, temperature, top-k, top-p, min-p.
/// A temperature of 0 means greedy decoding (the other filters are then irrelevant).
public struct SamplingParameters: Sendable, Equatable {
    /// Softmax temperature; `0` selects the most likely token.
    public var temperature: Float
    /// Keep only the `topK` most likely tokens; `0` disables the filter.
    public var topK: Int
    /// Keep the smallest set of most likely tokens whose probability reaches `topP`; `1` disables it.
    public var topP: Float
    /// Drop tokens less likely than `minP` times the most likely one; `0` disables it.
    public var minP: Float
    /// Divides positive (multiplies negative) logits of recently seen tokens; `1` disables it.
    public var repetitionPenalty: Float
    /// How many of the most recent tokens the repetition penalty looks at.
    public var repetitionContextSize: Int
    /// Seed of the random generator, so runs are reproducible.
    public var seed: UInt64

    public init(
        temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0,
        repetitionPenalty: Float = 1, repetitionContextSize: Int = 64, seed: UInt64 = 0
    ) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.repetitionContextSize = repetitionContextSize
        self.seed = seed
    }

    /// Always the most likely token.
    public static let greedy = SamplingParameters()
}
