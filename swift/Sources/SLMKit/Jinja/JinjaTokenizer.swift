/// The tokens of one Jinja expression or statement.
enum JinjaToken: Equatable {
    case name(String)
    case string(String)
    case int(Int)
    case double(Double)
    /// Punctuation and operators: `( ) [ ] { } , : . | ~ + - * / // % ** == != < > <= >= =`.
    case symbol(String)

    static func tokenize(_ source: String) throws -> [JinjaToken] {
        let characters = Array(source)
        var tokens: [JinjaToken] = []
        var index = 0
        while index < characters.count {
            let character = characters[index]
            if character.isWhitespace {
                index += 1
            } else if character.isLetter || character == "_" {
                let start = index
                while index < characters.count, characters[index].isLetter || characters[index].isNumber
                    || characters[index] == "_" { index += 1 }
                tokens.append(.name(String(characters[start..<index])))
            } else if character.isASCII && character.isNumber {
                let start = index
                while index < characters.count, characters[index].isASCII, characters[index].isNumber { index += 1 }
                if index + 1 < characters.count, characters[index] == ".", characters[index + 1].isNumber {
                    index += 1
                    while index < characters.count, characters[index].isASCII, characters[index].isNumber { index += 1 }
                    tokens.append(.double(Double(String(characters[start..<index]))!))
                } else {
                    tokens.append(.int(Int(String(characters[start..<index]))!))
                }
            } else if character == "'" || character == "\"" {
                let (value, next) = try stringLiteral(characters, from: index)
                tokens.append(.string(value))
                index = next
            } else {
                let two = index + 1 < characters.count ? String(characters[index...index + 1]) : ""
                if ["//", "**", "==", "!=", "<=", ">="].contains(two) {
                    tokens.append(.symbol(two))
                    index += 2
                } else if "()[]{},:.|~+-*/%<>=".contains(character) {
                    tokens.append(.symbol(String(character)))
                    index += 1
                } else {
                    throw JinjaError.syntax("unexpected character \(character) in \(source)")
                }
            }
        }
        return tokens
    }

    /// A quoted literal with Python's escapes; returns the value and the index after the closing quote.
    private static func stringLiteral(_ characters: [Character], from start: Int) throws -> (String, Int) {
        let quote = characters[start]
        var value = ""
        var index = start + 1
        while index < characters.count {
            let character = characters[index]
            if character == quote { return (value, index + 1) }
            if character == "\\", index + 1 < characters.count {
                index += 1
                switch characters[index] {
                case "n": value.append("\n")
                case "t": value.append("\t")
                case "r": value.append("\r")
                case "u" where index + 4 < characters.count:
                    let hex = String(characters[(index + 1)...(index + 4)])
                    if let code = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(code) {
                        value.unicodeScalars.append(scalar)
                        index += 4
                    } else {
                        value.append("\\u")
                    }
                case "\\", "'", "\"": value.append(characters[index])
                default: value.append("\\"); value.append(characters[index])
                }
            } else {
                value.append(character)
            }
            index += 1
        }
        throw JinjaError.syntax("unterminated string")
    }
}
