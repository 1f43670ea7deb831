import Foundation

/// A mapping that keeps insertion order, as Python dicts do (it shows in `items` and `tojson`).
struct JinjaObject: Equatable, Sendable {
    private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    init(_ pairs: [(String, JinjaValue)] = []) {
        for (key, value) in pairs { self[key] = value }
    }

    subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if storage[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            storage[key] = newValue
        }
    }

    var pairs: [(String, JinjaValue)] { keys.map { ($0, storage[$0]!) } }

    static func == (lhs: JinjaObject, rhs: JinjaObject) -> Bool { lhs.storage == rhs.storage }
}

/// `namespace(...)`: the one mutable object templates share across loop scopes.
final class JinjaNamespace: @unchecked Sendable {
    var attributes: JinjaObject
    init(_ attributes: JinjaObject) { self.attributes = attributes }
}

/// A runtime value with Python's semantics where chat templates rely on them
/// (truthiness, equality, `str()` output).
enum JinjaValue: Equatable, Sendable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case object(JinjaObject)
    case namespace(JinjaNamespace)

    static func == (lhs: JinjaValue, rhs: JinjaValue) -> Bool {
        switch (lhs, rhs) {
        case (.undefined, .undefined), (.none, .none): true
        case (.bool(let a), .bool(let b)): a == b
        case (.string(let a), .string(let b)): a == b
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)): a == b
        case (.namespace(let a), .namespace(let b)): a === b
        default:
            if let a = lhs.number, let b = rhs.number { a == b } else { false }
        }
    }

    /// The value as a number (Python treats `True` as 1).
    var number: Double? {
        switch self {
        case .int(let value): Double(value)
        case .double(let value): value
        case .bool(let value): value ? 1 : 0
        default: nil
        }
    }

    var isTruthy: Bool {
        switch self {
        case .undefined, .none: false
        case .bool(let value): value
        case .int(let value): value != 0
        case .double(let value): value != 0
        case .string(let value): !value.isEmpty
        case .array(let value): !value.isEmpty
        case .object(let value): !value.keys.isEmpty
        case .namespace: true
        }
    }

    /// What `{{ value }}` prints: Python's `str()`.
    var text: String {
        switch self {
        case .undefined: ""
        case .string(let value): value
        default: repr
        }
    }

    /// Python's `repr()`, used inside printed lists and dicts.
    var repr: String {
        switch self {
        case .undefined: ""
        case .none: "None"
        case .bool(let value): value ? "True" : "False"
        case .int(let value): String(value)
        case .double(let value): Self.pythonFloat(value)
        case .string(let value): "'" + value.replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "'", with: "\\'").replacingOccurrences(of: "\n", with: "\\n") + "'"
        case .array(let items): "[" + items.map(\.repr).joined(separator: ", ") + "]"
        case .object(let object): "{" + object.pairs.map { "'\($0.0)': \($0.1.repr)" }.joined(separator: ", ") + "}"
        case .namespace: "<Namespace>"
        }
    }

    /// Python's float formatting for the values templates meet (`22.0`, `0.5`, `1e-06`).
    static func pythonFloat(_ value: Double) -> String {
        if value.isNaN { return "nan" }
        if value.isInfinite { return value < 0 ? "-inf" : "inf" }
        if value == value.rounded(), abs(value) < 1e16 { return String(format: "%.1f", value) }
        return "\(value)"
    }

    /// Elements when iterated: list items, a mapping's keys, a string's characters; undefined is empty.
    func iterated() throws -> [JinjaValue] {
        switch self {
        case .undefined, .none: return []
        case .array(let items): return items
        case .object(let object): return object.keys.map(JinjaValue.string)
        case .string(let value): return value.map { .string(String($0)) }
        default: throw JinjaError.runtime("\(repr) is not iterable")
        }
    }

    /// A JSON value as the template sees it.
    init(_ json: JSONValue) {
        switch json {
        case .null: self = .none
        case .bool(let value): self = .bool(value)
        case .number(let value): self = value == value.rounded() && abs(value) < 9e15 ? .int(Int(value)) : .double(value)
        case .string(let value): self = .string(value)
        case .array(let items): self = .array(items.map(JinjaValue.init))
        case .object(let object): self = .object(JinjaObject(object.keys.sorted().map { ($0, JinjaValue(object[$0]!)) }))
        }
    }
}
