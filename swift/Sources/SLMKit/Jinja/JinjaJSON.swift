/// The `tojson` filter as transformers defines it: `json.dumps(value, ensure_ascii=False, indent=indent)`
/// (`", "` and `": "` separators, or `","` plus newlines with an indent), keys in insertion order.
enum JinjaJSON {
    static func encode(_ value: JinjaValue, indent: Int?, depth: Int = 0) throws -> String {
        switch value {
        case .none, .undefined: return "null"
        case .bool(let flag): return flag ? "true" : "false"
        case .int(let number): return String(number)
        case .double(let number): return JinjaValue.pythonFloat(number)
        case .string(let text): return quote(text)
        case .array(let items):
            return container("[", "]", try items.map { try encode($0, indent: indent, depth: depth + 1) },
                                 indent: indent, depth: depth)
        case .object(let object):
            let fields = try object.pairs.map { quote($0.0) + ": " + (try encode($0.1, indent: indent, depth: depth + 1)) }
            return container("{", "}", fields, indent: indent, depth: depth)
        case .namespace: throw JinjaError.runtime("a namespace is not JSON")
        }
    }

    private static func container(_ open: String, _ close: String, _ items: [String], indent: Int?, depth: Int) -> String {
        guard !items.isEmpty else { return open + close }
        guard let indent else { return open + items.joined(separator: ", ") + close }
        let inner = "\n" + String(repeating: " ", count: indent * (depth + 1))
        let outer = "\n" + String(repeating: " ", count: indent * depth)
        return open + inner + items.joined(separator: "," + inner) + outer + close
    }

    private static func quote(_ text: String) -> String {
        var result = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            case "\u{08}": result += "\\b"
            case "\u{0C}": result += "\\f"
            case let control where control.value < 0x20:
                result += "\\u" + String(repeating: "0", count: 4 - String(control.value, radix: 16).count)
                    + String(control.value, radix: 16)
            default: result.unicodeScalars.append(scalar)
            }
        }
        return result + "\""
    }
}
