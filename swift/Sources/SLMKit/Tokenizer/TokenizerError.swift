import Foundation

/// Errors raised while loading a Hugging Face tokenizer.
public enum TokenizerError: Error, Equatable, CustomStringConvertible {
    /// `tokenizer.json` uses a component SLMKit does not implement.
    case unsupported(String)
    /// A regular expression from `tokenizer.json` could not be compiled.
    case invalidPattern(String)
    /// A required file is missing.
    case missingFile(String)

    public var description: String {
        switch self {
        case .unsupported(let what): return "Unsupported tokenizer component: \(what)"
        case .invalidPattern(let pattern): return "Invalid tokenizer regex: \(pattern)"
        case .missingFile(let path): return "Missing tokenizer file: \(path)"
        }
    }
}
