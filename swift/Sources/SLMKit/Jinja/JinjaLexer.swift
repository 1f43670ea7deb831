import Foundation

/// Splits template text into literal text, `{{ expression }}` and `{% statement %}` pieces
/// (comments dropped), applying whitespace control the way transformers configures Jinja:
/// `{{-`/`-}}` strip all whitespace on that side, `trim_blocks` drops the newline after a block or
/// comment tag, and `lstrip_blocks` drops spaces and tabs between a line start and a block tag.
enum JinjaLexer {
    enum Piece: Equatable {
        case text(String)
        case output(String)
        case statement(String)
    }

    static func pieces(_ source: String) throws -> [Piece] {
        let characters = Array(source)
        var pieces: [Piece] = []
        var position = 0
        while position < characters.count {
            guard let tagStart = nextTag(characters, from: position) else {
                pieces.append(.text(String(characters[position...])))
                break
            }
            let opener = characters[tagStart + 1]
            let isBlock = opener != "{"
            var text = Array(characters[position..<tagStart])
            var bodyStart = tagStart + 2
            let sign = bodyStart < characters.count ? characters[bodyStart] : " "
            if sign == "-" || sign == "+" { bodyStart += 1 }
            if sign == "-" {
                while let last = text.last, last.isWhitespace { text.removeLast() }
            } else if sign != "+" && isBlock {
                stripLineIndent(&text, lineStarting: position == 0 || characters[position - 1].isNewline)
            }
            if !text.isEmpty { pieces.append(.text(String(text))) }

            let closer: Character = opener == "{" ? "}" : opener == "%" ? "%" : "#"
            let tagEnd = try end(of: characters, from: bodyStart, closer: closer, isComment: opener == "#")
            var bodyEnd = tagEnd
            let stripsRight = bodyEnd > bodyStart && characters[bodyEnd - 1] == "-"
            if stripsRight { bodyEnd -= 1 }
            let body = String(characters[bodyStart..<bodyEnd]).trimmingCharacters(in: .whitespacesAndNewlines)
            switch opener {
            case "{": pieces.append(.output(body))
            case "%": pieces.append(.statement(body))
            default: break
            }
            position = tagEnd + 2
            if stripsRight {
                while position < characters.count, characters[position].isWhitespace { position += 1 }
            } else if isBlock, position < characters.count, characters[position] == "\n" {
                position += 1
            }
        }
        return pieces
    }

    private static func nextTag(_ characters: [Character], from start: Int) -> Int? {
        var index = start
        while index + 1 < characters.count {
            if characters[index] == "{", "{%#".contains(characters[index + 1]) { return index }
            index += 1
        }
        return nil
    }

    /// `lstrip_blocks`: spaces and tabs after the last newline (or from a line start) go.
    private static func stripLineIndent(_ text: inout [Character], lineStarting: Bool) {
        let lineStart = text.lastIndex(where: \.isNewline).map { $0 + 1 }
        guard lineStart != nil || lineStarting else { return }
        let start = lineStart ?? 0
        if text[start...].allSatisfy({ $0 == " " || $0 == "\t" }) { text.removeSubrange(start...) }
    }

    /// Index of the closing `}}`, `%}` or `#}`, skipping string literals inside expressions.
    private static func end(of characters: [Character], from start: Int, closer: Character, isComment: Bool) throws -> Int {
        var index = start
        var quote: Character?
        while index + 1 < characters.count {
            let character = characters[index]
            if let open = quote {
                if character == "\\" { index += 1 } else if character == open { quote = nil }
            } else if !isComment && (character == "'" || character == "\"") {
                quote = character
            } else if character == closer && characters[index + 1] == "}" {
                return index
            }
            index += 1
        }
        throw JinjaError.syntax("unclosed tag at character \(start)")
    }
}
