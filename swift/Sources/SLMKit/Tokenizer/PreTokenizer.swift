import Foundation

/// Runs a `pre_tokenizer` pipeline, cutting normalized text into the words BPE encodes.
struct PreTokenizer: Sendable {
    /// GPT-2's word pattern, used by `ByteLevel` when `use_regex` is true.
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    private enum Step: Sendable {
        case byteLevel(addPrefixSpace: Bool, splitter: PatternSplitter?)
        case digits(individual: Bool)
        case split(PatternSplitter)
    }

    private let steps: [Step]

    init(_ definition: PreTokenizerDefinition?) throws {
        steps = try definition.map(Self.steps(for:)) ?? []
    }

    /// The words of `text`, each already mapped to byte-level form if the pipeline has a `ByteLevel` step.
    func split(_ text: String) -> [String] {
        steps.reduce([text]) { pieces, step in
            pieces.flatMap { Self.apply(step, to: $0) }
        }
    }

    private static func steps(for definition: PreTokenizerDefinition) throws -> [Step] {
        switch definition {
        case .byteLevel(let addPrefixSpace, let useRegex):
            let splitter = useRegex
                ? try PatternSplitter(pattern: .regex(gpt2Pattern), behavior: .isolated, invert: false)
                : nil
            return [.byteLevel(addPrefixSpace: addPrefixSpace, splitter: splitter)]
        case .digits(let individual):
            return [.digits(individual: individual)]
        case .split(let pattern, let behavior, let invert):
            return [.split(try PatternSplitter(pattern: pattern, behavior: behavior, invert: invert))]
        case .sequence(let definitions):
            return try definitions.flatMap(steps(for:))
        }
    }

    private static func apply(_ step: Step, to piece: String) -> [String] {
        switch step {
        case .split(let splitter):
            return splitter.split(piece)
        case .digits(let individual):
            return splitDigits(piece, individually: individual)
        case .byteLevel(let addPrefixSpace, let splitter):
            var text = piece
            if addPrefixSpace && text.unicodeScalars.first != " " {
                text = " " + text
            }
            let words = splitter?.split(text) ?? [text]
            return words.map(ByteLevelAlphabet.encode)
        }
    }

    /// Separates numeric scalars (categories Nd, Nl, No) from the rest:
    /// one piece per numeric scalar, or one per run of them.
    private static func splitDigits(_ text: String, individually: Bool) -> [String] {
        var pieces: [String] = []
        var current = String.UnicodeScalarView()
        var currentIsNumeric = false
        func flush() {
            if !current.isEmpty { pieces.append(String(current)) }
            current = String.UnicodeScalarView()
        }
        for scalar in text.unicodeScalars {
            let isNumeric = isNumeric(scalar)
            if isNumeric != currentIsNumeric || (isNumeric && individually) {
                flush()
            }
            current.append(scalar)
            currentIsNumeric = isNumeric
        }
        flush()
        return pieces
    }

    private static func isNumeric(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
}
