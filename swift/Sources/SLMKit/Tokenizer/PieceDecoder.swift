/// A `tokenizer.json` decoder pipeline that works on token strings, as SentencePiece-style files
/// (Gemma, Llama 2, Mistral) use: `Replace`, `ByteFallback`, `Fuse`, `Strip`, `Metaspace` and
/// `Sequence`, each with the semantics of the Rust `tokenizers` crate. (Byte-level files decode
/// through ``TokenBytes`` instead.)
///
/// ``decode(_:startsSequence:)`` can run on consecutive chunks of a token stream, giving the same
/// text as one call on all of them, as long as no chunk ends inside a run of byte tokens;
/// ``holdsBack(_:)`` tells the streaming detokenizer which tokens extend such a run.
struct PieceDecoder: Sendable {
    private enum Step: Sendable {
        case replace(TextReplacement)
        case byteFallback
        case fuse
        /// Removes up to `start` leading and `stop` trailing `content`; after a `Fuse` only at the text's start.
        case strip(content: Unicode.Scalar, start: Int, stop: Int, wholeText: Bool)
        /// `▁` becomes a space, or disappears in the first token unless the scheme is `never`.
        case metaspace(replacement: Unicode.Scalar, dropsInFirstToken: Bool)
    }

    private let steps: [Step]

    init(_ definition: DecoderDefinition) throws {
        var steps: [Step] = []
        var fused = false
        for step in definition.flattened {
            switch step {
            case .byteLevel, .sequence:
                throw TokenizerError.unsupported("ByteLevel decoder combined with other decoders")
            case .replace(let pattern, let content):
                steps.append(.replace(try TextReplacement(pattern: pattern, content: content)))
            case .byteFallback:
                steps.append(.byteFallback)
            case .fuse:
                steps.append(.fuse)
                fused = true
            case .strip(let content, let start, let stop):
                if fused && stop > 0 {
                    throw TokenizerError.unsupported("Strip decoder removing trailing text after Fuse")
                }
                steps.append(.strip(content: content, start: start, stop: stop, wholeText: fused))
            case .metaspace(let replacement, let prependScheme):
                steps.append(.metaspace(replacement: replacement, dropsInFirstToken: prependScheme != .never))
            }
        }
        self.steps = steps
    }

    /// Whether `token` is a `<0xXX>` byte that `ByteFallback` joins with its neighbours.
    func holdsBack(_ token: String) -> Bool {
        steps.contains { if case .byteFallback = $0 { return true } else { return false } }
            && ByteToken.value(of: token) != nil
    }

    /// The text of `tokens`; `startsSequence` says whether the first one is the first token decoded.
    func decode(_ tokens: [String], startsSequence: Bool) -> String {
        var pieces = tokens
        for step in steps {
            switch step {
            case .replace(let replacement):
                pieces = pieces.map(replacement.apply)
            case .byteFallback:
                pieces = ByteToken.fallback(pieces)
            case .fuse:
                pieces = [pieces.joined()]
            case .strip(let content, let start, let stop, let wholeText):
                if wholeText {
                    if startsSequence, let first = pieces.first {
                        pieces[0] = Self.strip(first, content: content, start: start, stop: 0)
                    }
                } else {
                    pieces = pieces.map { Self.strip($0, content: content, start: start, stop: stop) }
                }
            case .metaspace(let replacement, let dropsInFirstToken):
                pieces = pieces.enumerated().map { index, piece in
                    let drops = dropsInFirstToken && startsSequence && index == 0
                    return TextReplacement.replace([replacement], in: piece, with: drops ? "" : " ")
                }
            }
        }
        return pieces.joined()
    }

    private static func strip(_ text: String, content: Unicode.Scalar, start: Int, stop: Int) -> String {
        var scalars = Array(text.unicodeScalars)
        let leading = scalars.prefix(start).prefix { $0 == content }.count
        scalars.removeFirst(leading)
        let trailing = scalars.reversed().prefix(stop).prefix { $0 == content }.count
        scalars.removeLast(trailing)
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }
}

/// The `<0xXX>` tokens of byte-fallback vocabularies.
enum ByteToken {
    /// The token standing for `byte`, as `tokenizers` spells it.
    static func name(of byte: UInt8) -> String {
        let hex = String(byte, radix: 16, uppercase: true)
        return "<0x" + (hex.count == 1 ? "0" + hex : hex) + ">"
    }

    /// The byte a `<0xXX>` token stands for (either case of hex digit), else `nil`.
    static func value(of token: String) -> UInt8? {
        let utf8 = Array(token.utf8)
        guard utf8.count == 6, token.hasPrefix("<0x"), utf8[5] == UInt8(ascii: ">") else { return nil }
        let digits = String(decoding: utf8[3..<5], as: UTF8.self)
        guard digits.allSatisfy(\.isHexDigit) else { return nil }
        return UInt8(digits, radix: 16)
    }

    /// `ByteFallback`: each run of byte tokens becomes its UTF-8 text, or one U+FFFD per byte when
    /// the run is not valid UTF-8; other tokens pass through.
    static func fallback(_ tokens: [String]) -> [String] {
        var result: [String] = []
        var run: [UInt8] = []
        func flush() {
            guard !run.isEmpty else { return }
            let text = String(decoding: run, as: UTF8.self)
            if Array(text.utf8) == run {
                result.append(text)
            } else {
                result.append(contentsOf: repeatElement("\u{FFFD}", count: run.count))
            }
            run.removeAll()
        }
        for token in tokens {
            if let byte = value(of: token) {
                run.append(byte)
            } else {
                flush()
                result.append(token)
            }
        }
        flush()
        return result
    }
}
