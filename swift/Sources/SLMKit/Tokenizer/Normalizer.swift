import Foundation

/// Applies a `tokenizer.json` normalizer: Unicode normalization forms, `Replace` (SentencePiece-style
/// files turn spaces into `▁`) and `Prepend` (Llama 2 / Mistral put a `▁` before each text segment).
struct Normalizer: Sendable {
    private enum Step: Sendable {
        case nfc, nfd, nfkc, nfkd
        case replace(TextReplacement)
        case prepend(String)
    }

    private let steps: [Step]

    init(_ definition: NormalizerDefinition) throws {
        steps = try Self.flatten(definition)
    }

    func normalize(_ text: String) -> String {
        steps.reduce(text) { text, step in
            switch step {
            case .nfc: return text.precomposedStringWithCanonicalMapping
            case .nfd: return text.decomposedStringWithCanonicalMapping
            case .nfkc: return text.precomposedStringWithCompatibilityMapping
            case .nfkd: return text.decomposedStringWithCompatibilityMapping
            case .replace(let replacement): return replacement.apply(text)
            case .prepend(let prefix): return text.isEmpty ? text : prefix + text  // as tokenizers: not before nothing
            }
        }
    }

    private static func flatten(_ definition: NormalizerDefinition) throws -> [Step] {
        switch definition {
        case .nfc: return [.nfc]
        case .nfd: return [.nfd]
        case .nfkc: return [.nfkc]
        case .nfkd: return [.nfkd]
        case .replace(let pattern, let content): return [.replace(try TextReplacement(pattern: pattern, content: content))]
        case .prepend(let prefix): return [.prepend(prefix)]
        case .sequence(let steps): return try steps.flatMap(flatten)
        }
    }
}
