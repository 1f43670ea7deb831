import Foundation

/// Reads `model.vocab` of a `tokenizer.json` straight from its bytes. Foundation's JSON decoders
/// put object keys in a Swift dictionary, which merges canonically equivalent keys (see
/// ``ExactString``), so they would lose tokens of SentencePiece vocabularies.
struct VocabularyReader {
    private let bytes: [UInt8]
    private var index = 0

    /// The vocabulary, or an empty one when the file has none.
    static func vocabulary(in data: Data) throws -> [ExactString: Int32] {
        var reader = VocabularyReader(bytes: Array(data))
        var vocabulary: [ExactString: Int32] = [:]
        try reader.object { reader, key in
            guard key == "model" else { return try reader.skipValue() }
            try reader.object { reader, key in
                guard key == "vocab" else { return try reader.skipValue() }
                try reader.object { reader, token in
                    guard let id = Int32(try reader.number()) else { throw Self.malformed }
                    vocabulary[ExactString(token)] = id
                }
            }
        }
        return vocabulary
    }

    private init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    private static let malformed = TokenizerError.unsupported("malformed JSON in tokenizer.json")

    /// Calls `member` for each key of the object at the cursor; `member` must consume the value.
    private mutating func object(_ member: (inout VocabularyReader, String) throws -> Void) throws {
        try expect(UInt8(ascii: "{"))
        if peek() == UInt8(ascii: "}") { index += 1; return }
        while true {
            let key = try string()
            try expect(UInt8(ascii: ":"))
            try member(&self, key)
            switch try next() {
            case UInt8(ascii: ","): continue
            case UInt8(ascii: "}"): return
            default: throw Self.malformed
            }
        }
    }

    private mutating func skipValue() throws {
        switch peek() {
        case UInt8(ascii: "{"):
            try object { reader, _ in try reader.skipValue() }
        case UInt8(ascii: "["):
            index += 1
            if peek() == UInt8(ascii: "]") { index += 1; return }
            repeat { try skipValue() } while try next() == UInt8(ascii: ",")
            guard bytes[index - 1] == UInt8(ascii: "]") else { throw Self.malformed }
        case UInt8(ascii: "\""):
            _ = try string()
        default:  // number, true, false, null
            while index < bytes.count, !"{}[],: \t\r\n".utf8.contains(bytes[index]) { index += 1 }
        }
    }

    private mutating func number() throws -> String {
        skipWhitespace()
        let start = index
        while index < bytes.count, "+-.0123456789eE".utf8.contains(bytes[index]) { index += 1 }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    /// A string literal with its escapes, scalars kept exactly (surrogate pairs joined).
    private mutating func string() throws -> String {
        try expect(UInt8(ascii: "\""))
        var utf8: [UInt8] = []
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: utf8, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw Self.malformed }
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "n"): utf8.append(0x0A)
                case UInt8(ascii: "t"): utf8.append(0x09)
                case UInt8(ascii: "r"): utf8.append(0x0D)
                case UInt8(ascii: "b"): utf8.append(0x08)
                case UInt8(ascii: "f"): utf8.append(0x0C)
                case UInt8(ascii: "u"): utf8.append(contentsOf: String(try escapedScalar()).utf8)
                default: utf8.append(escape)  // \" \\ \/
                }
            default:
                utf8.append(byte)
            }
        }
        throw Self.malformed
    }

    /// The scalar of a `\uXXXX` escape (the `\u` already read), joining a surrogate pair.
    private mutating func escapedScalar() throws -> Unicode.Scalar {
        let high = try hexQuad()
        if (0xD800..<0xDC00).contains(high), bytes[index...].starts(with: "\\u".utf8) {
            index += 2
            let low = try hexQuad()
            let value = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
            return Unicode.Scalar(value) ?? "\u{FFFD}"
        }
        return Unicode.Scalar(high) ?? "\u{FFFD}"
    }

    private mutating func hexQuad() throws -> UInt32 {
        guard index + 4 <= bytes.count,
              let value = UInt32(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16) else {
            throw Self.malformed
        }
        index += 4
        return value
    }

    private mutating func expect(_ byte: UInt8) throws {
        guard try next() == byte else { throw Self.malformed }
    }

    /// The next byte that is not whitespace, consumed.
    private mutating func next() throws -> UInt8 {
        skipWhitespace()
        guard index < bytes.count else { throw Self.malformed }
        index += 1
        return bytes[index - 1]
    }

    private mutating func peek() -> UInt8? {
        skipWhitespace()
        return index < bytes.count ? bytes[index] : nil
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, " \t\r\n".utf8.contains(bytes[index]) { index += 1 }
    }
}
