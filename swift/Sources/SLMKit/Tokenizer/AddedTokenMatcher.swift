/// An entry of `added_tokens`, ready for matching.
struct AddedToken: Sendable {
    let id: Int32
    let content: [Unicode.Scalar]
    let singleWord: Bool
    let leftStrip: Bool
    let rightStrip: Bool
}

/// Cuts text on added tokens the way `tokenizers`' AddedVocabulary does:
/// leftmost-longest matches, `single_word` matches only between non-word
/// characters, and `lstrip`/`rstrip` swallow the whitespace around a match.
struct AddedTokenMatcher: Sendable {
    /// Either ordinary text, still to be tokenized, or a matched added token.
    enum Piece: Equatable {
        case text(String)
        case token(Int32)
    }

    /// Candidates indexed by their first scalar, longest first.
    private let tokensByFirstScalar: [Unicode.Scalar: [AddedToken]]

    init(tokens: [AddedToken]) {
        var index: [Unicode.Scalar: [AddedToken]] = [:]
        for token in tokens {
            guard let first = token.content.first else { continue }
            index[first, default: []].append(token)
        }
        tokensByFirstScalar = index.mapValues { $0.sorted { $0.content.count > $1.content.count } }
    }

    func split(_ text: String) -> [Piece] {
        guard !tokensByFirstScalar.isEmpty else { return text.isEmpty ? [] : [.text(text)] }
        let scalars = Array(text.unicodeScalars)
        var pieces: [Piece] = []
        var consumed = 0
        var searchFrom = 0
        while let (token, start) = nextMatch(in: scalars, from: searchFrom) {
            var end = start + token.content.count
            searchFrom = end
            if token.singleWord && !isStandalone(scalars, start: start, end: end) {
                continue
            }
            var lower = start
            if token.leftStrip {
                while lower > consumed && scalars[lower - 1].properties.isWhitespace { lower -= 1 }
            }
            if token.rightStrip {
                while end < scalars.count && scalars[end].properties.isWhitespace { end += 1 }
            }
            lower = max(lower, consumed)
            if lower > consumed {
                pieces.append(.text(Self.string(scalars[consumed..<lower])))
            }
            pieces.append(.token(token.id))
            consumed = max(end, consumed)
        }
        if consumed < scalars.count {
            pieces.append(.text(Self.string(scalars[consumed...])))
        }
        return pieces
    }

    /// The leftmost position at or after `position` where a token starts, with the longest token there.
    private func nextMatch(in scalars: [Unicode.Scalar], from position: Int) -> (AddedToken, Int)? {
        var start = position
        while start < scalars.count {
            for token in tokensByFirstScalar[scalars[start]] ?? [] where Self.matches(token, in: scalars, at: start) {
                return (token, start)
            }
            start += 1
        }
        return nil
    }

    private static func matches(_ token: AddedToken, in scalars: [Unicode.Scalar], at start: Int) -> Bool {
        let end = start + token.content.count
        return end <= scalars.count && scalars[start..<end].elementsEqual(token.content)
    }

    /// True when no word character touches the match on either side.
    private func isStandalone(_ scalars: [Unicode.Scalar], start: Int, end: Int) -> Bool {
        let wordBefore = start > 0 && Self.isWordCharacter(scalars[start - 1])
        let wordAfter = end < scalars.count && Self.isWordCharacter(scalars[end])
        return !wordBefore && !wordAfter
    }

    /// Unicode `\w`: alphabetic, marks, decimal digits, connector punctuation, join controls.
    private static func isWordCharacter(_ scalar: Unicode.Scalar) -> Bool {
        let properties = scalar.properties
        if properties.isAlphabetic || properties.isJoinControl { return true }
        switch properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }

    private static func string(_ scalars: ArraySlice<Unicode.Scalar>) -> String {
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars)
        return String(view)
    }
}
