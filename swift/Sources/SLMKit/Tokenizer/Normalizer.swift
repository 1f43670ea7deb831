import Foundation

/// Applies the Unicode normalization described by a `tokenizer.json` normalizer.
struct Normalizer: Sendable {
    private enum Form: Sendable { case nfc, nfd, nfkc, nfkd }

    private let forms: [Form]

    init(_ definition: NormalizerDefinition) {
        forms = Self.flatten(definition)
    }

    func normalize(_ text: String) -> String {
        forms.reduce(text) { text, form in
            switch form {
            case .nfc: return text.precomposedStringWithCanonicalMapping
            case .nfd: return text.decomposedStringWithCanonicalMapping
            case .nfkc: return text.precomposedStringWithCompatibilityMapping
            case .nfkd: return text.decomposedStringWithCompatibilityMapping
            }
        }
    }

    private static func flatten(_ definition: NormalizerDefinition) -> [Form] {
        switch definition {
        case .nfc: return [.nfc]
        case .nfd: return [.nfd]
        case .nfkc: return [.nfkc]
        case .nfkd: return [.nfkd]
        case .sequence(let steps): return steps.flatMap(flatten)
        }
    }
}
