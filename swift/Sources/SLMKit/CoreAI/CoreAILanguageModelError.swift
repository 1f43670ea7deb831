/// Errors from ``CoreAILanguageModel`` and the request planning it shares with every platform.
public enum CoreAILanguageModelError: Error, Equatable, CustomStringConvertible {
    /// No manifest, or a manifest without a positive `max_context`: a Core AI export's RoPE table
    /// and KV cache are sized by it, so the runner cannot guess it.
    case missingMaximumContext
    case emptyInput
    /// The sequence would hold `requested` tokens, more than `max_context` allows.
    case contextOverflow(requested: Int, limit: Int)
    /// The program lacks the function, an input, a state or the output of the contract.
    case missingFeature(String)
    /// A cache state's declared shape does not have exactly one dynamic (sequence) axis.
    case unexpectedStateShape(String, [Int])
    /// `logits` is not `[1, T, vocabulary]` for the `T` tokens sent.
    case unexpectedLogitsShape([Int])
    /// A feature has an element type the runner does not read (logits must be float16).
    case unsupportedScalarType(String)

    public var description: String {
        switch self {
        case .missingMaximumContext:
            return "The Core AI program needs a manifest (Name.json) with a positive max_context"
        case .emptyInput:
            return "No tokens to run"
        case .contextOverflow(let requested, let limit):
            return "\(requested) tokens do not fit the \(limit)-token context (max_context) of the Core AI program"
        case .missingFeature(let name):
            return "The Core AI program has no '\(name)'"
        case .unexpectedStateShape(let name, let shape):
            return "State '\(name)' has shape \(shape); expected one dynamic sequence axis"
        case .unexpectedLogitsShape(let shape):
            return "logits have shape \(shape); expected [1, tokens, vocabulary]"
        case .unsupportedScalarType(let what):
            return "Unsupported element type: \(what)"
        }
    }
}
