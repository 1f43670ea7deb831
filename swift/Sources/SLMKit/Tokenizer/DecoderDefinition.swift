/// `decoder` section: `ByteLevel` (byte-level BPE files) or the token-string decoders of
/// SentencePiece-style files (`Replace`, `ByteFallback`, `Fuse`, `Strip`, `Metaspace`, `Sequence`).
indirect enum DecoderDefinition: Decodable, Equatable {
    case byteLevel
    case replace(pattern: SplitPattern, content: String)
    case byteFallback
    case fuse
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    case metaspace(replacement: Unicode.Scalar, prependScheme: PrependScheme)
    case sequence([DecoderDefinition])

    private enum CodingKeys: String, CodingKey {
        case type, pattern, content, start, stop, decoders, replacement
        case prependScheme = "prepend_scheme", addPrefixSpace = "add_prefix_space"
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "ByteLevel": self = .byteLevel
        case "ByteFallback": self = .byteFallback
        case "Fuse": self = .fuse
        case "Replace":
            self = .replace(
                pattern: try container.decode(SplitPattern.self, forKey: .pattern),
                content: try container.decode(String.self, forKey: .content))
        case "Strip":
            self = .strip(
                content: try MetaspaceFields.replacement(container.decode(String.self, forKey: .content)),
                start: try container.decode(Int.self, forKey: .start),
                stop: try container.decode(Int.self, forKey: .stop))
        case "Metaspace":
            self = .metaspace(
                replacement: try MetaspaceFields.replacement(container.decode(String.self, forKey: .replacement)),
                prependScheme: try MetaspaceFields.prependScheme(
                    container.decodeIfPresent(PrependScheme.self, forKey: .prependScheme),
                    addPrefixSpace: container.decodeIfPresent(Bool.self, forKey: .addPrefixSpace)))
        case "Sequence":
            self = .sequence(try container.decode([DecoderDefinition].self, forKey: .decoders))
        default:
            throw TokenizerError.unsupported("decoder \(type)")
        }
    }

    /// The steps in order, nested sequences expanded.
    var flattened: [DecoderDefinition] {
        if case .sequence(let steps) = self { return steps.flatMap(\.flattened) }
        return [self]
    }
}

/// Fields shared by the `Metaspace` pre-tokenizer and decoder (and `Strip`'s single character).
enum MetaspaceFields {
    /// A one-scalar string such as `"▁"`.
    static func replacement(_ text: String) throws -> Unicode.Scalar {
        var scalars = text.unicodeScalars.makeIterator()
        guard let scalar = scalars.next(), scalars.next() == nil else {
            throw TokenizerError.unsupported("replacement \(text.debugDescription) longer than one character")
        }
        return scalar
    }

    /// `prepend_scheme`, or in files written before it existed, `add_prefix_space` (`true`: always).
    static func prependScheme(_ scheme: PrependScheme?, addPrefixSpace: Bool?) -> PrependScheme {
        scheme ?? ((addPrefixSpace ?? true) ? .always : .never)
    }
}
