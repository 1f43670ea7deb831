/// Turns a stream of token ids into text pieces, holding back what the next token may still change:
/// the bytes of an unfinished UTF-8 sequence (byte-level tokenizers) or a run of `<0xXX>` byte
/// tokens (byte-fallback tokenizers, until a token that is not a byte arrives).
///
/// Concatenating every piece (plus ``finish()``) gives exactly
/// ``Tokenizer/decode(_:skipSpecialTokens:)`` of all ids.
public struct StreamingDetokenizer: Sendable {
    private let tokenBytes: TokenBytes
    private let pieceDecoder: PieceDecoder?
    private let skipSpecialTokens: Bool
    private var pending: [UInt8] = []
    private var pendingTokens: [String] = []
    private var startsSequence = true

    init(tokenBytes: TokenBytes, pieceDecoder: PieceDecoder?, skipSpecialTokens: Bool) {
        self.tokenBytes = tokenBytes
        self.pieceDecoder = pieceDecoder
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Adds one token and returns the text it completes (possibly empty).
    public mutating func append(_ id: Int32) -> String {
        if let pieceDecoder {
            guard let token = tokenBytes.visibleToken(for: id, skipSpecialTokens: skipSpecialTokens) else { return "" }
            pendingTokens.append(token)
            return pieceDecoder.holdsBack(token) ? "" : flushTokens(pieceDecoder)
        }
        pending.append(contentsOf: tokenBytes.bytes(for: id, skipSpecialTokens: skipSpecialTokens))
        let ready = UTF8Completeness.completePrefixLength(of: pending)
        guard ready > 0 else { return "" }
        let text = String(decoding: pending[..<ready], as: UTF8.self)
        pending.removeFirst(ready)
        return text
    }

    /// Returns whatever is still held back, with U+FFFD for an unfinished sequence.
    public mutating func finish() -> String {
        if let pieceDecoder { return flushTokens(pieceDecoder) }
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    private mutating func flushTokens(_ decoder: PieceDecoder) -> String {
        guard !pendingTokens.isEmpty else { return "" }
        defer {
            pendingTokens.removeAll()
            startsSequence = false
        }
        return decoder.decode(pendingTokens, startsSequence: startsSequence)
    }
}

/// Finds where a byte buffer stops being safely decodable.
enum UTF8Completeness {
    /// The length of the longest prefix that does not end inside a still-valid,
    /// unfinished multi-byte sequence. Invalid bytes are never held back.
    static func completePrefixLength(of bytes: [UInt8]) -> Int {
        let trailingContinuations = bytes.reversed().prefix(3).prefix(while: isContinuation).count
        let leadIndex = bytes.count - 1 - trailingContinuations
        guard trailingContinuations < 3, leadIndex >= 0 else { return bytes.count }
        let lead = bytes[leadIndex]
        guard let needed = sequenceLength(lead), trailingContinuations + 1 < needed else { return bytes.count }
        if trailingContinuations > 0 && !isValidSecondByte(bytes[leadIndex + 1], after: lead) {
            return bytes.count
        }
        return leadIndex
    }

    private static func isContinuation(_ byte: UInt8) -> Bool {
        byte & 0xC0 == 0x80
    }

    private static func sequenceLength(_ lead: UInt8) -> Int? {
        switch lead {
        case 0xC2...0xDF: return 2
        case 0xE0...0xEF: return 3
        case 0xF0...0xF4: return 4
        default: return nil
        }
    }

    /// The tighter ranges that exclude overlong forms, surrogates and values above U+10FFFF.
    private static func isValidSecondByte(_ byte: UInt8, after lead: UInt8) -> Bool {
        switch lead {
        case 0xE0: return (0xA0...0xBF).contains(byte)
        case 0xED: return (0x80...0x9F).contains(byte)
        case 0xF0: return (0x90...0xBF).contains(byte)
        case 0xF4: return (0x80...0x8F).contains(byte)
        default: return isContinuation(byte)
        }
    }
}
