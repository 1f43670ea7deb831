import Foundation

extension JinjaBuiltins {
    /// Functions templates may call without defining them (transformers provides the first two).
    static let globals: Set<String> = ["raise_exception", "strftime_now", "namespace", "range", "dict"]

    static func callGlobal(_ name: String, _ arguments: JinjaInterpreter.EvaluatedArguments,
                           keywordOrder: [String]) throws -> JinjaValue {
        let positional = arguments.positional
        let keywords = JinjaObject(keywordOrder.map { ($0, arguments.keywords[$0]!) })
        switch name {
        case "raise_exception":
            throw JinjaError.raised(positional.first?.text ?? "")
        case "namespace":
            return .namespace(JinjaNamespace(keywords))
        case "dict":
            return .object(keywords)
        case "range":
            let bounds = try positional.map { value -> Int in
                guard case .int(let number) = value else { throw JinjaError.runtime("range of \(value.repr)") }
                return number
            }
            let (start, stop, step) = bounds.count == 1 ? (0, bounds[0], 1)
                : (bounds[0], bounds[1], bounds.count > 2 ? bounds[2] : 1)
            guard step != 0 else { throw JinjaError.runtime("range step cannot be zero") }
            return .array(stride(from: start, to: stop, by: step).map(JinjaValue.int))
        case "strftime_now":
            return .string(strftime(positional.first?.text ?? "", Date()))
        default:
            throw JinjaError.runtime("\(name) is undefined")
        }
    }

    /// Python `str` and `dict` methods templates call (`content.split('</think>')`, `message.get('x')`).
    static func callMethod(_ method: String, on base: JinjaValue, _ arguments: [JinjaValue]) throws -> JinjaValue {
        if case .object(let object) = base {
            switch method {
            case "items": return try filter("items", base, .init(positional: [], keywords: [:]))
            case "keys": return .array(object.keys.map(JinjaValue.string))
            case "values": return .array(object.pairs.map(\.1))
            case "get": return object[arguments.first?.text ?? ""] ?? (arguments.count > 1 ? arguments[1] : .none)
            default: break
            }
        }
        guard case .string(let text) = base else { throw JinjaError.runtime("\(base.repr) has no method \(method)") }
        switch method {
        case "strip", "lstrip", "rstrip":
            return .string(try pythonStrip(text, characters: arguments.first, leading: method != "rstrip",
                                           trailing: method != "lstrip"))
        case "split":
            if let separator = arguments.first, separator != .none {
                return .array(text.components(separatedBy: separator.text).map(JinjaValue.string))
            }
            return .array(text.split(whereSeparator: \.isWhitespace).map { .string(String($0)) })
        case "startswith": return .bool(text.hasPrefix(arguments.first?.text ?? ""))
        case "endswith": return .bool(text.hasSuffix(arguments.first?.text ?? ""))
        case "upper": return .string(text.uppercased())
        case "lower": return .string(text.lowercased())
        case "replace":
            guard arguments.count >= 2 else { throw JinjaError.runtime("replace needs two arguments") }
            return .string(text.replacingOccurrences(of: arguments[0].text, with: arguments[1].text))
        default: throw JinjaError.runtime("unsupported string method \(method)")
        }
    }

    /// C `strftime` for `strftime_now`, in the POSIX locale.
    private static func strftime(_ format: String, _ date: Date) -> String {
        var time = time_t(date.timeIntervalSince1970)
        var parts = tm()
        localtime_r(&time, &parts)
        var buffer = [Int8](repeating: 0, count: 256)
        let length = Foundation.strftime(&buffer, buffer.count, format, &parts)
        return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
