/// When the `Metaspace` pre-tokenizer puts a `▁` in front of a piece of text.
enum PrependScheme: String, Decodable, Sendable {
    /// Before every piece that does not already start with one.
    case always
    /// Only before the piece at the very start of the input (not after an added token).
    case first
    /// Never.
    case never
}

/// The `Metaspace` pre-tokenizer of SentencePiece-style `tokenizer.json` files (Llama 2, Mistral):
/// spaces become `replacement` (`▁`), a `▁` is prepended as `prependScheme` says, and with `split`
/// the text is cut before every `▁`, each piece keeping its leading one. Works on Unicode scalars,
/// as `tokenizers` does, so a space followed by a combining mark is still a space.
struct Metaspace: Sendable {
    let replacement: Unicode.Scalar
    let prependScheme: PrependScheme
    let split: Bool

    /// - Parameter atStart: whether `text` begins the input, which the `first` scheme needs.
    func preTokenize(_ text: String, atStart: Bool) -> [String] {
        guard !text.isEmpty else { return [] }
        var marked = Array(TextReplacement.replace([" "], in: text, with: String(replacement)).unicodeScalars)
        let prepends = prependScheme == .always || (prependScheme == .first && atStart)
        if prepends && marked.first != replacement {
            marked.insert(replacement, at: 0)
        }
        guard split else { return [Self.string(marked[...])] }
        var pieces: [String] = []
        var start = 0
        for index in marked.indices.dropFirst() where marked[index] == replacement {
            pieces.append(Self.string(marked[start..<index]))
            start = index
        }
        if start < marked.count { pieces.append(Self.string(marked[start...])) }
        return pieces
    }

    private static func string(_ scalars: ArraySlice<Unicode.Scalar>) -> String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }
}
