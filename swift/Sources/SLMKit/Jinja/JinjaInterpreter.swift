/// Renders a parsed template: statements in order, variables in nested scopes (a `for` body gets its
/// own, so `set` inside a loop stays there, as in Jinja; `namespace()` objects carry state out).
struct JinjaInterpreter {
    private var scopes: [[String: JinjaValue]]
    private var output = ""

    init(context: [String: JinjaValue]) {
        scopes = [context]
    }

    static func render(_ nodes: [JinjaNode], context: [String: JinjaValue]) throws -> String {
        var interpreter = JinjaInterpreter(context: context)
        try interpreter.run(nodes)
        return interpreter.output
    }

    private mutating func run(_ nodes: [JinjaNode]) throws {
        for node in nodes {
            switch node {
            case .text(let text):
                output += text
            case .output(let expression):
                output += try evaluate(expression).text
            case .conditional(let branches, let otherwise):
                if let branch = try branches.first(where: { try evaluate($0.0).isTruthy }) {
                    try run(branch.1)
                } else {
                    try run(otherwise)
                }
            case .loop(let targets, let iterable, let filter, let body, let otherwise):
                try runLoop(targets: targets, items: try evaluate(iterable).iterated(), filter: filter,
                            body: body, otherwise: otherwise)
            case .assignment(let name, let attribute, let value):
                let result = try evaluate(value)
                if let attribute {
                    guard case .namespace(let namespace) = lookup(name) else {
                        throw JinjaError.runtime("cannot set \(attribute) on \(name), which is not a namespace")
                    }
                    namespace.attributes[attribute] = result
                } else {
                    scopes[scopes.count - 1][name] = result
                }
            }
        }
    }

    private mutating func runLoop(targets: [String], items: [JinjaValue], filter: JinjaExpression?,
                                  body: [JinjaNode], otherwise: [JinjaNode]) throws {
        var selected: [JinjaValue] = []
        for item in items {
            guard let filter else { selected.append(item); continue }
            scopes.append(try bind(targets, to: item))
            defer { scopes.removeLast() }
            if try evaluate(filter).isTruthy { selected.append(item) }
        }
        guard !selected.isEmpty else { return try run(otherwise) }
        for (position, item) in selected.enumerated() {
            var scope = try bind(targets, to: item)
            let count = selected.count
            scope["loop"] = .object(JinjaObject([
                ("index", .int(position + 1)), ("index0", .int(position)),
                ("revindex", .int(count - position)), ("revindex0", .int(count - position - 1)),
                ("first", .bool(position == 0)), ("last", .bool(position == count - 1)), ("length", .int(count)),
                ("previtem", position > 0 ? selected[position - 1] : .undefined),
                ("nextitem", position + 1 < count ? selected[position + 1] : .undefined),
            ]))
            scopes.append(scope)
            defer { scopes.removeLast() }
            try run(body)
        }
    }

    /// `for a in …` binds the item; `for a, b in …` unpacks it.
    private func bind(_ targets: [String], to item: JinjaValue) throws -> [String: JinjaValue] {
        guard targets.count > 1 else { return [targets[0]: item] }
        guard case .array(let parts) = item, parts.count == targets.count else {
            throw JinjaError.runtime("cannot unpack \(item.repr) into \(targets.count) names")
        }
        return Dictionary(uniqueKeysWithValues: zip(targets, parts).map { ($0, $1) })
    }

    private func lookup(_ name: String) -> JinjaValue {
        for scope in scopes.reversed() {
            if let value = scope[name] { return value }
        }
        return .undefined
    }

    // MARK: Expressions

    func evaluate(_ expression: JinjaExpression) throws -> JinjaValue {
        switch expression {
        case .literal(let value):
            return value
        case .name(let name):
            return lookup(name)
        case .list(let items):
            return .array(try items.map(evaluate))
        case .dictionary(let pairs):
            return .object(JinjaObject(try pairs.map { (try evaluate($0.0).text, try evaluate($0.1)) }))
        case .attribute(let base, let name):
            return try JinjaBuiltins.member(try evaluate(base), .string(name))
        case .item(let base, let key):
            return try JinjaBuiltins.member(try evaluate(base), try evaluate(key))
        case .slice(let base, let start, let stop, let step):
            return try JinjaBuiltins.slice(try evaluate(base), start: start.map(evaluate), stop: stop.map(evaluate),
                                           step: step.map(evaluate))
        case .call(let callee, let arguments):
            return try call(callee, arguments)
        case .filter(let base, let name, let arguments):
            return try JinjaBuiltins.filter(name, try evaluate(base), try evaluate(arguments))
        case .test(let base, let name, let arguments, let negated):
            if name == "defined" || name == "undefined", case .name(let variable) = base,
               lookup(variable) == .undefined, JinjaBuiltins.globals.contains(variable) {
                return .bool((name == "defined") != negated)  // strftime_now, raise_exception, … are defined
            }
            let result = try JinjaBuiltins.test(name, try evaluate(base), try evaluate(arguments).positional)
            return .bool(result != negated)
        case .not(let operand):
            return .bool(!(try evaluate(operand).isTruthy))
        case .negate(let operand):
            switch try evaluate(operand) {
            case .int(let value): return .int(-value)
            case .double(let value): return .double(-value)
            case let value: throw JinjaError.runtime("cannot negate \(value.repr)")
            }
        case .and(let left, let right):
            let first = try evaluate(left)
            return first.isTruthy ? try evaluate(right) : first
        case .or(let left, let right):
            let first = try evaluate(left)
            return first.isTruthy ? first : try evaluate(right)
        case .binary(let op, let left, let right):
            return try JinjaBuiltins.binary(op, try evaluate(left), try evaluate(right))
        case .conditional(let value, let condition, let otherwise):
            if try evaluate(condition).isTruthy { return try evaluate(value) }
            return try otherwise.map(evaluate) ?? .undefined
        }
    }

    struct EvaluatedArguments {
        var positional: [JinjaValue]
        var keywords: [String: JinjaValue]
    }

    private func evaluate(_ arguments: JinjaArguments) throws -> EvaluatedArguments {
        EvaluatedArguments(
            positional: try arguments.positional.map(evaluate),
            keywords: Dictionary(try arguments.keywords.map { ($0.0, try evaluate($0.1)) }, uniquingKeysWith: { $1 }))
    }

    /// Global functions (`raise_exception`, `namespace`, …) and methods of strings and mappings.
    private func call(_ callee: JinjaExpression, _ arguments: JinjaArguments) throws -> JinjaValue {
        let evaluated = try evaluate(arguments)
        switch callee {
        case .name(let name) where lookup(name) == .undefined:
            return try JinjaBuiltins.callGlobal(name, evaluated, keywordOrder: arguments.keywords.map(\.0))
        case .attribute(let base, let method):
            return try JinjaBuiltins.callMethod(method, on: try evaluate(base), evaluated.positional)
        default:
            throw JinjaError.runtime("cannot call this expression")
        }
    }
}
