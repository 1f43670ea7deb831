/// What a ``Generator`` stream delivers.
public enum GenerationEvent: Sendable, Equatable {
    /// A sampled token, stop tokens included, delivered before the text it completes.
    case token(GeneratedToken)
    /// Newly generated text (always complete UTF-8, never part of a stop string).
    case text(String)
    /// The last event of a generation that was not cancelled.
    case finished(GenerationSummary)
}

/// One sampled token with what the model thought of it.
public struct GeneratedToken: Sendable, Equatable {
    public var id: Int32
    /// The streaming detokenizer's text for this token: empty while it only starts a character (or
    /// a run of byte tokens) and for a stop token. `.text` events carry the same text minus stop strings.
    public var text: String
    /// The natural log of the probability the model gave this token: the log-softmax of the model's
    /// logits at it, before temperature, repetition penalty and top-k/top-p/min-p filtering.
    public var logprob: Double

    public init(id: Int32, text: String, logprob: Double) {
        self.id = id
        self.text = text
        self.logprob = logprob
    }
}

/// Why a generation ended.
public enum StopReason: Sendable, Equatable {
    case stopToken
    case stopString
    case maxTokens
    case contextLimit
    case cancelled
}

/// Counts and timings of a finished generation.
public struct GenerationSummary: Sendable, Equatable {
    public var promptTokenCount: Int
    /// Prompt tokens run through the model: all of them, or in a ``ChatSession`` only those its
    /// KV cache did not already hold.
    public var prefilledTokenCount: Int
    /// Tokens sampled, including a final stop token.
    public var generatedTokenCount: Int
    public var prefillDuration: Duration
    public var decodeDuration: Duration
    public var stopReason: StopReason

    /// Prompt tokens processed per second during prefill.
    public var prefillTokensPerSecond: Double {
        Self.rate(prefilledTokenCount, prefillDuration)
    }

    /// Tokens generated per second after prefill.
    public var tokensPerSecond: Double {
        Self.rate(generatedTokenCount, decodeDuration)
    }

    private static func rate(_ count: Int, _ duration: Duration) -> Double {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) * 1e-18
        return seconds > 0 ? Double(count) / seconds : 0
    }
}

/// Errors a generation can end with.
public enum GenerationError: Error, Equatable {
    case emptyPrompt
    case promptTooLong(tokenCount: Int, limit: Int)
    case emptyLogits
}
