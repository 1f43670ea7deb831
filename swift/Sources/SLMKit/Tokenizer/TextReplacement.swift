import Foundation

/// The `Replace` step of `tokenizer.json` normalizers and decoders: every match of a literal
/// string or a regular expression becomes `content` (SentencePiece-style files use it to turn
/// spaces into `▁` and back).
struct TextReplacement: Sendable {
    private enum Matcher: Sendable {
        case literal([Unicode.Scalar])
        case regex(NSRegularExpression)
    }

    private let matcher: Matcher
    private let content: String

    init(pattern: SplitPattern, content: String) throws {
        switch pattern {
        case .string(let literal):
            matcher = .literal(Array(literal.unicodeScalars))
        case .regex(let expression):
            do {
                matcher = .regex(try NSRegularExpression(pattern: expression))
            } catch {
                throw TokenizerError.invalidPattern(expression)
            }
        }
        self.content = content
    }

    func apply(_ text: String) -> String {
        switch matcher {
        case .literal(let literal):
            return Self.replace(literal, in: text, with: content)
        case .regex(let regex):
            let range = NSRange(location: 0, length: text.utf16.count)
            return regex.stringByReplacingMatches(
                in: text, range: range, withTemplate: NSRegularExpression.escapedTemplate(for: content))
        }
    }

    /// Literal replacement scalar by scalar, leftmost first and without overlaps, as in `tokenizers`
    /// (Foundation's string search would treat a space followed by a combining mark as no space).
    static func replace(_ literal: [Unicode.Scalar], in text: String, with content: String) -> String {
        guard let first = literal.first else { return text }
        let scalars = Array(text.unicodeScalars)
        var result = String.UnicodeScalarView()
        var index = 0
        while index < scalars.count {
            let end = index + literal.count
            if scalars[index] == first && end <= scalars.count && scalars[index..<end].elementsEqual(literal) {
                result.append(contentsOf: content.unicodeScalars)
                index = end
            } else {
                result.append(scalars[index])
                index += 1
            }
        }
        return String(result)
    }
}
