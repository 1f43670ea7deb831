import Foundation

/// The built-in behaviour of values: operators, member access and slicing (this file), filters and
/// tests (`JinjaFilters.swift`), global functions and methods (`JinjaFunctions.swift`).
enum JinjaBuiltins {
    /// `base.name` or `base[key]`: a mapping's entry, a list's or string's item (negative counts from
    /// the end), a namespace attribute; missing entries are undefined, and so is anything read from
    /// undefined or none … which Jinja reports as an error.
    static func member(_ base: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
        switch (base, key) {
        case (.object(let object), .string(let name)):
            return object[name] ?? .undefined
        case (.namespace(let namespace), .string(let name)):
            return namespace.attributes[name] ?? .undefined
        case (.array(let items), .int(let position)):
            let resolved = position < 0 ? items.count + position : position
            return items.indices.contains(resolved) ? items[resolved] : .undefined
        case (.string(let text), .int(let position)):
            let characters = Array(text)
            let resolved = position < 0 ? characters.count + position : position
            return characters.indices.contains(resolved) ? .string(String(characters[resolved])) : .undefined
        case (.undefined, _), (.none, _):
            throw JinjaError.runtime("\(base == .none ? "None" : "undefined") has no attribute \(key.text)")
        default:
            return .undefined
        }
    }

    /// Python slicing of lists and strings (`[1:]`, `[::-1]`).
    static func slice(_ base: JinjaValue, start: JinjaValue?, stop: JinjaValue?, step: JinjaValue?) throws -> JinjaValue {
        func integer(_ value: JinjaValue?) throws -> Int? {
            switch value {
            case nil, .none?, .undefined?: return nil
            case .int(let number)?: return number
            default: throw JinjaError.runtime("slice indices must be integers")
            }
        }
        let stride = try integer(step) ?? 1
        guard stride != 0 else { throw JinjaError.runtime("slice step cannot be zero") }
        func positions(_ count: Int) throws -> [Int] {
            func clamp(_ value: Int?, _ fallback: Int) -> Int {
                guard let value else { return fallback }
                let resolved = value < 0 ? value + count : value
                return stride > 0 ? min(max(resolved, 0), count) : min(max(resolved, -1), count - 1)
            }
            let first = clamp(try integer(start), stride > 0 ? 0 : count - 1)
            let last = clamp(try integer(stop), stride > 0 ? count : -1)
            return Array(Swift.stride(from: first, to: last, by: stride))
        }
        switch base {
        case .array(let items): return .array(try positions(items.count).map { items[$0] })
        case .string(let text):
            let characters = Array(text)
            return .string(String(try positions(characters.count).map { characters[$0] }))
        default: throw JinjaError.runtime("cannot slice \(base.repr)")
        }
    }

    /// Binary operators with Python's rules: `+` adds numbers or joins two strings or two lists,
    /// `~` joins anything as text, `in` looks in strings, lists and mapping keys.
    static func binary(_ op: String, _ left: JinjaValue, _ right: JinjaValue) throws -> JinjaValue {
        switch op {
        case "==": return .bool(left == right)
        case "!=": return .bool(left != right)
        case "~": return .string(left.text + right.text)
        case "in": return .bool(try contains(right, left))
        default: break
        }
        switch (op, left, right) {
        case ("+", .string(let a), .string(let b)): return .string(a + b)
        case ("+", .array(let a), .array(let b)): return .array(a + b)
        case ("*", .string(let a), .int(let b)): return .string(String(repeating: a, count: max(b, 0)))
        case ("<", .string(let a), .string(let b)): return .bool(a < b)
        case (">", .string(let a), .string(let b)): return .bool(a > b)
        case ("<=", .string(let a), .string(let b)): return .bool(a <= b)
        case (">=", .string(let a), .string(let b)): return .bool(a >= b)
        default: break
        }
        guard let a = left.number, let b = right.number else {
            throw JinjaError.runtime("unsupported operand types for \(op): \(left.repr) and \(right.repr)")
        }
        let integers: (Int, Int)? = if case .int(let x) = left, case .int(let y) = right { (x, y) } else { nil }
        switch op {
        case "<": return .bool(a < b)
        case ">": return .bool(a > b)
        case "<=": return .bool(a <= b)
        case ">=": return .bool(a >= b)
        case "/":
            guard b != 0 else { throw JinjaError.runtime("division by zero") }
            return .double(a / b)
        default: break
        }
        if let (x, y) = integers {
            switch op {
            case "+": return .int(x + y)
            case "-": return .int(x - y)
            case "*": return .int(x * y)
            case "**": return .int(Int(pow(Double(x), Double(y))))
            case "//", "%":
                guard y != 0 else { throw JinjaError.runtime("division by zero") }
                let quotient = Int((Double(x) / Double(y)).rounded(.down))
                return .int(op == "//" ? quotient : x - quotient * y)
            default: break
            }
        }
        switch op {
        case "+": return .double(a + b)
        case "-": return .double(a - b)
        case "*": return .double(a * b)
        case "**": return .double(pow(a, b))
        case "//": return .double((a / b).rounded(.down))
        case "%": return .double(a - (a / b).rounded(.down) * b)
        default: throw JinjaError.runtime("unknown operator \(op)")
        }
    }

    static func contains(_ container: JinjaValue, _ item: JinjaValue) throws -> Bool {
        switch (container, item) {
        case (.string(let text), .string(let part)): return text.contains(part) || part.isEmpty
        case (.array(let items), _): return items.contains(item)
        case (.object(let object), .string(let key)): return object[key] != nil
        case (.object, _): return false
        case (.undefined, _): throw JinjaError.runtime("'in' on an undefined value")
        default: throw JinjaError.runtime("cannot look for \(item.repr) in \(container.repr)")
        }
    }
}
