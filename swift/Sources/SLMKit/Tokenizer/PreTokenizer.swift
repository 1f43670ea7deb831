import Foundation

/// Runs a `pre_tokenizer` pipeline, cutting normalized text into the words BPE encodes.
struct PreTokenizer: Sendable {
    /// GPT-2's word pattern, used by `ByteLevel` when `use_regex` is true.
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    private enum Step: Sendable {
        case byteLevel(addPrefixSpace: Bool, splitter: PatternSplitter?)
        case digits(individual: Bool)
        case split(PatternSplitter)
        case metaspace(Metaspace)
    }

    private let steps: [Step]

    init(_ definition: PreTokenizerDefinition?) throws {
        steps = try definition.map(Self.steps(for:)) ?? []
    }

    /// The words of `text`, each already mapped to byte-level form if the pipeline has a `ByteLevel` step.
    /// - Parameter atStart: whether `text` begins the input (no added token before it), which a
    ///   `Metaspace` step with `prepend_scheme: first` needs; pieces cut off later do not begin it.
    func split(_ text: String, atStart: Bool) -> [String] {
        var pieces = [(text: text, atStart: atStart)]
        for step in steps {
            pieces = pieces.flatMap { piece in
                Self.apply(step, to: piece.text, atStart: piece.atStart).enumerated().map { index, word in
                    (text: word, atStart: piece.atStart && index == 0)
                }
            }
        }
        return pieces.map(\.text)
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
        case .metaspace(let metaspace):
            return [.metaspace(metaspace)]
        case .sequence(let definitions):
            return try definitions.flatMap(steps(for:))
        }
    }

    private static func apply(_ step: Step, to piece: String, atStart: Bool) -> [String] {
        switch step {
        case .metaspace(let metaspace):
            return metaspace.preTokenize(piece, atStart: atStart)
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
