/// Maps token ids back to their text and to the bytes they stand for.
struct TokenBytes: Sendable {
    private let tokensByID: [Int32: String]
    private let specialIDs: Set<Int32>
    private let isByteLevel: Bool

    /// - Parameters:
    ///   - tokensByID: every token's text, added tokens taking precedence over the model vocabulary.
    ///   - specialIDs: ids dropped when decoding with `skipSpecialTokens`.
    ///   - isByteLevel: whether the `ByteLevel` decoder maps token text back to bytes.
    init(tokensByID: [Int32: String], specialIDs: Set<Int32>, isByteLevel: Bool) {
        self.tokensByID = tokensByID
        self.specialIDs = specialIDs
        self.isByteLevel = isByteLevel
    }

    /// The bytes of one token; empty for unknown or skipped ids.
    ///
    /// As in `tokenizers`, a token holding any scalar outside the byte-level
    /// alphabet (typically an added token) contributes its own UTF-8 bytes.
    func bytes(for id: Int32, skipSpecialTokens: Bool) -> [UInt8] {
        guard let token = visibleToken(for: id, skipSpecialTokens: skipSpecialTokens) else { return [] }
        if isByteLevel, let bytes = ByteLevelAlphabet.decode(token) {
            return bytes
        }
        return Array(token.utf8)
    }

    /// The text of one token as `tokenizers` hands it to a decoder: `nil` for unknown or skipped ids.
    func visibleToken(for id: Int32, skipSpecialTokens: Bool) -> String? {
        guard let token = tokensByID[id], !(skipSpecialTokens && specialIDs.contains(id)) else { return nil }
        return token
    }

    func token(for id: Int32) -> String? {
        tokensByID[id]
    }

    func isSpecial(_ id: Int32) -> Bool {
        specialIDs.contains(id)
    }
}
