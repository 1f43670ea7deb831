import Foundation

/// The parts of a Hugging Face `tokenizer.json` that SLMKit reads.
struct TokenizerDefinition: Decodable {
    let addedTokens: [AddedTokenDefinition]
    let normalizer: NormalizerDefinition?
    let preTokenizer: PreTokenizerDefinition?
    let model: BPEDefinition
    let decoder: DecoderDefinition?

    private enum CodingKeys: String, CodingKey {
        case addedTokens = "added_tokens", normalizer, preTokenizer = "pre_tokenizer", model, decoder
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        addedTokens = try container.decodeIfPresent([AddedTokenDefinition].self, forKey: .addedTokens) ?? []
        normalizer = try container.decodeIfPresent(NormalizerDefinition.self, forKey: .normalizer)
        preTokenizer = try container.decodeIfPresent(PreTokenizerDefinition.self, forKey: .preTokenizer)
        model = try container.decode(BPEDefinition.self, forKey: .model)
        self.decoder = try container.decodeIfPresent(DecoderDefinition.self, forKey: .decoder)
    }
}

/// One entry of `added_tokens`.
struct AddedTokenDefinition: Decodable {
    let id: Int32
    let content: String
    let singleWord: Bool
    let leftStrip: Bool
    let rightStrip: Bool
    let normalized: Bool
    let special: Bool

    private enum CodingKeys: String, CodingKey {
        case id, content, singleWord = "single_word", leftStrip = "lstrip", rightStrip = "rstrip", normalized, special
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(Int32.self, forKey: .id)
        content = try container.decode(String.self, forKey: .content)
        singleWord = try container.decodeIfPresent(Bool.self, forKey: .singleWord) ?? false
        leftStrip = try container.decodeIfPresent(Bool.self, forKey: .leftStrip) ?? false
        rightStrip = try container.decodeIfPresent(Bool.self, forKey: .rightStrip) ?? false
        special = try container.decodeIfPresent(Bool.self, forKey: .special) ?? false
        normalized = try container.decodeIfPresent(Bool.self, forKey: .normalized) ?? !special
    }
}

/// `model` section; only byte-pair encoding is supported (with or without byte fallback).
/// Its `vocab` is read by ``VocabularyReader``, which keeps canonically equivalent tokens apart.
struct BPEDefinition: Decodable {
    let merges: [(String, String)]
    let unknownToken: String?
    let fuseUnknown: Bool
    let ignoreMerges: Bool
    let byteFallback: Bool

    private enum CodingKeys: String, CodingKey {
        case type, merges, unknownToken = "unk_token", fuseUnknown = "fuse_unk", ignoreMerges = "ignore_merges"
        case byteFallback = "byte_fallback", continuingSubwordPrefix = "continuing_subword_prefix"
        case endOfWordSuffix = "end_of_word_suffix"
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decodeIfPresent(String.self, forKey: .type) ?? "BPE"
        guard type == "BPE" else { throw TokenizerError.unsupported("model type \(type)") }
        if try container.decodeIfPresent(String.self, forKey: .continuingSubwordPrefix) != nil
            || container.decodeIfPresent(String.self, forKey: .endOfWordSuffix) != nil {
            throw TokenizerError.unsupported("BPE subword prefix/suffix")
        }
        merges = try Self.decodeMerges(container)
        unknownToken = try container.decodeIfPresent(String.self, forKey: .unknownToken)
        fuseUnknown = try container.decodeIfPresent(Bool.self, forKey: .fuseUnknown) ?? false
        ignoreMerges = try container.decodeIfPresent(Bool.self, forKey: .ignoreMerges) ?? false
        byteFallback = try container.decodeIfPresent(Bool.self, forKey: .byteFallback) ?? false
    }

    /// Merges come either as `[["a", "b"], ...]` or, in older files, as `["a b", ...]`.
    private static func decodeMerges(_ container: KeyedDecodingContainer<CodingKeys>) throws -> [(String, String)] {
        if let pairs = try? container.decodeIfPresent([[String]].self, forKey: .merges) {
            return pairs.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil }
        }
        let lines = try container.decodeIfPresent([String].self, forKey: .merges) ?? []
        return lines.compactMap { line in
            let parts = line.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
            return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
        }
    }
}

/// `normalizer` section: Unicode normalization forms, `Replace`, `Prepend` and sequences of them.
indirect enum NormalizerDefinition: Decodable {
    case nfc, nfd, nfkc, nfkd
    case replace(pattern: SplitPattern, content: String)
    case prepend(String)
    case sequence([NormalizerDefinition])

    private enum CodingKeys: String, CodingKey { case type, normalizers, pattern, content, prepend }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "NFC": self = .nfc
        case "NFD": self = .nfd
        case "NFKC": self = .nfkc
        case "NFKD": self = .nfkd
        case "Replace":
            self = .replace(
                pattern: try container.decode(SplitPattern.self, forKey: .pattern),
                content: try container.decode(String.self, forKey: .content))
        case "Prepend": self = .prepend(try container.decode(String.self, forKey: .prepend))
        case "Sequence": self = .sequence(try container.decode([NormalizerDefinition].self, forKey: .normalizers))
        default: throw TokenizerError.unsupported("normalizer \(type)")
        }
    }
}

/// How a `Split` pre-tokenizer treats the text its pattern matches.
enum SplitBehavior: String, Decodable {
    case removed = "Removed"
    case isolated = "Isolated"
    case mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext"
    case contiguous = "Contiguous"
}

/// The pattern of a `Split` pre-tokenizer or a `Replace` step: a literal string or a regular expression.
enum SplitPattern: Decodable, Equatable, Sendable {
    case string(String)
    case regex(String)

    private enum CodingKeys: String, CodingKey {
        case string = "String", regex = "Regex"
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let regex = try container.decodeIfPresent(String.self, forKey: .regex) {
            self = .regex(regex)
        } else {
            self = .string(try container.decode(String.self, forKey: .string))
        }
    }
}

/// `pre_tokenizer` section.
indirect enum PreTokenizerDefinition: Decodable {
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case digits(individualDigits: Bool)
    case split(pattern: SplitPattern, behavior: SplitBehavior, invert: Bool)
    case metaspace(Metaspace)
    case sequence([PreTokenizerDefinition])

    private enum CodingKeys: String, CodingKey {
        case type, addPrefixSpace = "add_prefix_space", useRegex = "use_regex"
        case individualDigits = "individual_digits", pattern, behavior, invert, pretokenizers
        case replacement, prependScheme = "prepend_scheme", split
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "ByteLevel":
            self = .byteLevel(
                addPrefixSpace: try container.decodeIfPresent(Bool.self, forKey: .addPrefixSpace) ?? true,
                useRegex: try container.decodeIfPresent(Bool.self, forKey: .useRegex) ?? true)
        case "Digits":
            let individualDigits = try container.decodeIfPresent(Bool.self, forKey: .individualDigits) ?? false
            self = .digits(individualDigits: individualDigits)
        case "Split":
            self = .split(
                pattern: try container.decode(SplitPattern.self, forKey: .pattern),
                behavior: try container.decode(SplitBehavior.self, forKey: .behavior),
                invert: try container.decodeIfPresent(Bool.self, forKey: .invert) ?? false)
        case "Metaspace":
            self = .metaspace(Metaspace(
                replacement: try MetaspaceFields.replacement(container.decode(String.self, forKey: .replacement)),
                prependScheme: try MetaspaceFields.prependScheme(
                    container.decodeIfPresent(PrependScheme.self, forKey: .prependScheme),
                    addPrefixSpace: container.decodeIfPresent(Bool.self, forKey: .addPrefixSpace)),
                split: try container.decodeIfPresent(Bool.self, forKey: .split) ?? true))
        case "Sequence":
            self = .sequence(try container.decode([PreTokenizerDefinition].self, forKey: .pretokenizers))
        default:
            throw TokenizerError.unsupported("pre_tokenizer \(type)")
        }
    }
}
