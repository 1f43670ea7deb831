/// A parsed Jinja expression.
indirect enum JinjaExpression: Sendable {
    case literal(JinjaValue)
    case name(String)
    case list([JinjaExpression])
    case dictionary([(JinjaExpression, JinjaExpression)])
    case attribute(JinjaExpression, String)
    case item(JinjaExpression, JinjaExpression)
    case slice(JinjaExpression, start: JinjaExpression?, stop: JinjaExpression?, step: JinjaExpression?)
    case call(JinjaExpression, JinjaArguments)
    case filter(JinjaExpression, name: String, JinjaArguments)
    case test(JinjaExpression, name: String, JinjaArguments, negated: Bool)
    case not(JinjaExpression)
    case negate(JinjaExpression)
    case binary(String, JinjaExpression, JinjaExpression)
    case and(JinjaExpression, JinjaExpression)
    case or(JinjaExpression, JinjaExpression)
    case conditional(JinjaExpression, condition: JinjaExpression, otherwise: JinjaExpression?)
}

/// Positional and keyword arguments of a call, filter or test.
struct JinjaArguments: Sendable {
    var positional: [JinjaExpression] = []
    var keywords: [(String, JinjaExpression)] = []
}

/// A parsed template node.
indirect enum JinjaNode: Sendable {
    case text(String)
    case output(JinjaExpression)
    case conditional(branches: [(JinjaExpression, [JinjaNode])], otherwise: [JinjaNode])
    case loop(targets: [String], iterable: JinjaExpression, filter: JinjaExpression?, body: [JinjaNode],
              otherwise: [JinjaNode])
    /// `set name = value` or `set namespace.attribute = value`.
    case assignment(name: String, attribute: String?, value: JinjaExpression)
}
