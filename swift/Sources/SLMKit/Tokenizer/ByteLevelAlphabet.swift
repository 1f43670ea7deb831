/// GPT-2's reversible mapping between bytes and printable Unicode scalars.
///
/// Printable Latin-1 bytes map to themselves; the remaining 68 bytes map, in
/// order, to U+0100 and onwards, so every byte string becomes visible text.
enum ByteLevelAlphabet {
    /// `scalars[byte]` is the scalar standing for `byte`.
    static let scalars: [Unicode.Scalar] = {
        var result = [Unicode.Scalar](repeating: " ", count: 256)
        var nextUnprintable: UInt32 = 256
        for byte in 0..<256 {
            if isPrintable(byte) {
                result[byte] = Unicode.Scalar(UInt8(byte))
            } else {
                result[byte] = Unicode.Scalar(nextUnprintable) ?? " "
                nextUnprintable += 1
            }
        }
        return result
    }()

    /// The inverse of ``scalars``.
    static let bytes: [Unicode.Scalar: UInt8] = {
        var result: [Unicode.Scalar: UInt8] = [:]
        for (byte, scalar) in scalars.enumerated() {
            result[scalar] = UInt8(byte)
        }
        return result
    }()

    /// Maps text to its byte-level form: one scalar per UTF-8 byte.
    static func encode(_ text: String) -> String {
        var view = String.UnicodeScalarView()
        for byte in text.utf8 {
            view.append(scalars[Int(byte)])
        }
        return String(view)
    }

    /// Maps a byte-level token back to bytes, or `nil` if it holds a scalar outside the alphabet.
    static func decode(_ token: String) -> [UInt8]? {
        var result: [UInt8] = []
        for scalar in token.unicodeScalars {
            guard let byte = bytes[scalar] else { return nil }
            result.append(byte)
        }
        return result
    }

    private static func isPrintable(_ byte: Int) -> Bool {
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
    }
}
