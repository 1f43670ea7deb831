import Foundation

extension JinjaBuiltins {
    /// `value | name(arguments)`: the filters chat templates use.
    static func filter(_ name: String, _ value: JinjaValue, _ arguments: JinjaInterpreter.EvaluatedArguments)
        throws -> JinjaValue {
        let positional = arguments.positional
        switch name {
        case "trim":
            return .string(try pythonStrip(stringArgument(value, name), characters: positional.first, leading: true,
                                           trailing: true))
        case "length", "count":
            switch value {
            case .string(let text): return .int(text.count)
            case .array(let items): return .int(items.count)
            case .object(let object): return .int(object.keys.count)
            case .undefined: return .int(0)
            default: throw JinjaError.runtime("\(value.repr) has no length")
            }
        case "list": return .array(try value.iterated())
        case "first": return try value.iterated().first ?? .undefined
        case "last": return try value.iterated().last ?? .undefined
        case "lower": return .string(try stringArgument(value, name).lowercased())
        case "upper": return .string(try stringArgument(value, name).uppercased())
        case "capitalize":
            let text = try stringArgument(value, name)
            return .string(text.prefix(1).uppercased() + text.dropFirst().lowercased())
        case "string": return .string(value.text)
        case "safe": return value
        case "default", "d":
            let fallback = positional.first ?? .string("")
            let boolean = positional.count > 1 ? positional[1].isTruthy : (arguments.keywords["boolean"]?.isTruthy ?? false)
            return value == .undefined || (boolean && !value.isTruthy) ? fallback : value
        case "join":
            let separator = positional.first?.text ?? ""
            return .string(try value.iterated().map(\.text).joined(separator: separator))
        case "replace":
            guard positional.count >= 2 else { throw JinjaError.runtime("replace needs two arguments") }
            return .string(try stringArgument(value, name)
                .replacingOccurrences(of: positional[0].text, with: positional[1].text))
        case "items":
            guard case .object(let object) = value else {
                if value == .undefined { return .array([]) }
                throw JinjaError.runtime("items of \(value.repr)")
            }
            return .array(object.pairs.map { .array([.string($0.0), $0.1]) })
        case "tojson":
            let indent = (arguments.keywords["indent"] ?? positional.first).flatMap { if case .int(let n) = $0 { n } else { nil } }
            return .string(try JinjaJSON.encode(value, indent: indent))
        case "selectattr", "rejectattr":
            guard let attribute = positional.first?.text else { throw JinjaError.runtime("\(name) needs an attribute") }
            return .array(try value.iterated().filter { item in
                let field = try member(item, .string(attribute))
                let passes = positional.count > 1
                    ? try test(positional[1].text, field, Array(positional.dropFirst(2))) : field.isTruthy
                return passes == (name == "selectattr")
            })
        case "select", "reject":
            return .array(try value.iterated().filter { item in
                let passes = try positional.first.map { try test($0.text, item, Array(positional.dropFirst())) }
                    ?? item.isTruthy
                return passes == (name == "select")
            })
        case "map":
            if let attribute = arguments.keywords["attribute"]?.text {
                return .array(try value.iterated().map { try member($0, .string(attribute)) })
            }
            guard let filterName = positional.first?.text else { throw JinjaError.runtime("map needs a filter") }
            let rest = JinjaInterpreter.EvaluatedArguments(positional: Array(positional.dropFirst()), keywords: [:])
            return .array(try value.iterated().map { try filter(filterName, $0, rest) })
        default:
            throw JinjaError.runtime("unsupported filter \(name)")
        }
    }

    /// `value is name(arguments)`.
    static func test(_ name: String, _ value: JinjaValue, _ arguments: [JinjaValue]) throws -> Bool {
        switch name {
        case "defined": return value != .undefined
        case "undefined": return value == .undefined
        case "none": return value == .none
        case "boolean": if case .bool = value { return true } else { return false }
        case "true": return value == .bool(true)
        case "false": return value == .bool(false)
        case "string": if case .string = value { return true } else { return false }
        case "number": if case .bool = value { return false } else { return value.number != nil }
        case "integer": if case .int = value { return true } else { return false }
        case "float": if case .double = value { return true } else { return false }
        case "mapping": if case .object = value { return true } else { return false }
        case "sequence", "iterable":
            switch value {
            case .string, .array, .object: return true
            default: return false
            }
        case "equalto", "eq", "==", "sameas": return value == (arguments.first ?? .undefined)
        case "ne", "!=": return value != (arguments.first ?? .undefined)
        case "in": return try contains(arguments.first ?? .undefined, value)
        case "odd", "even":
            guard case .int(let number) = value else { throw JinjaError.runtime("\(name) of \(value.repr)") }
            return (number % 2 != 0) == (name == "odd")
        case "lower": return value.text == value.text.lowercased()
        case "upper": return value.text == value.text.uppercased()
        default: throw JinjaError.runtime("unsupported test \(name)")
        }
    }

    static func stringArgument(_ value: JinjaValue, _ operation: String) throws -> String {
        guard case .string(let text) = value else { throw JinjaError.runtime("\(operation) of \(value.repr)") }
        return text
    }

    /// Python's `str.strip` / `lstrip` / `rstrip`: whitespace, or any of `characters`.
    static func pythonStrip(_ text: String, characters: JinjaValue?, leading: Bool, trailing: Bool) throws -> String {
        let set: (Character) -> Bool
        switch characters {
        case nil, .none?: set = { $0.isWhitespace }
        case .string(let chosen)?: set = { chosen.contains($0) }
        case let other?: throw JinjaError.runtime("strip characters \(other.repr)")
        }
        var slice = Substring(text)
        if leading { slice = slice.drop(while: set) }
        if trailing { while let last = slice.last, set(last) { slice = slice.dropLast() } }
        return String(slice)
    }
}
