/// Builds the node tree from lexer pieces, and expressions from tokens, with Jinja's precedence:
/// conditional < or < and < not < comparisons and `in` < `+ -` < `~` < `* / // %` < `**` < unary
/// minus < postfix (`.attr`, `[index]`, `(call)`, `| filter`, `is test`).
struct JinjaParser {
    private var tokens: [JinjaToken] = []
    private var index = 0

    // MARK: Statements

    static func parse(_ source: String) throws -> [JinjaNode] {
        var pieces = try JinjaLexer.pieces(source)[...]
        let (nodes, terminator) = try parseBlock(&pieces, until: [])
        if let terminator { throw JinjaError.syntax("unexpected {% \(terminator) %}") }
        return nodes
    }

    /// Nodes up to one of `terminators` (returned with its statement's remaining tokens), or the end.
    private static func parseBlock(_ pieces: inout ArraySlice<JinjaLexer.Piece>, until terminators: Set<String>)
        throws -> ([JinjaNode], (String, JinjaParser)?) {
        var nodes: [JinjaNode] = []
        while let piece = pieces.popFirst() {
            switch piece {
            case .text(let text):
                nodes.append(.text(text))
            case .output(let source):
                var parser = try JinjaParser(source)
                nodes.append(.output(try parser.parseWhole()))
            case .statement(let source):
                var parser = try JinjaParser(source)
                guard case .name(let keyword) = parser.next() else { throw JinjaError.syntax("empty statement") }
                if terminators.contains(keyword) { return (nodes, (keyword, parser)) }
                nodes.append(try parseStatement(keyword, &parser, &pieces))
            }
        }
        guard terminators.isEmpty else { throw JinjaError.syntax("missing {% \(terminators.sorted()[0]) %}") }
        return (nodes, nil)
    }

    private static func parseStatement(_ keyword: String, _ parser: inout JinjaParser,
                                       _ pieces: inout ArraySlice<JinjaLexer.Piece>) throws -> JinjaNode {
        switch keyword {
        case "if":
            var branches: [(JinjaExpression, [JinjaNode])] = []
            var condition = try parser.parseWhole()
            while true {
                let (body, end) = try parseBlock(&pieces, until: ["elif", "else", "endif"])
                branches.append((condition, body))
                guard let end else { throw JinjaError.syntax("missing endif") }
                var rest = end.1
                switch end.0 {
                case "elif":
                    condition = try rest.parseWhole()
                case "else":
                    let (otherwise, _) = try parseBlock(&pieces, until: ["endif"])
                    return .conditional(branches: branches, otherwise: otherwise)
                default:
                    return .conditional(branches: branches, otherwise: [])
                }
            }
        case "for":
            var targets = [try parser.expectName()]
            while parser.accept(.symbol(",")) { targets.append(try parser.expectName()) }
            guard parser.accept(.name("in")) else { throw JinjaError.syntax("for without in") }
            let iterable = try parser.parseOr()
            let filter = parser.accept(.name("if")) ? try parser.parseExpression() : nil
            try parser.expectEnd()
            let (body, end) = try parseBlock(&pieces, until: ["else", "endfor"])
            var otherwise: [JinjaNode] = []
            if end?.0 == "else" { otherwise = try parseBlock(&pieces, until: ["endfor"]).0 }
            return .loop(targets: targets, iterable: iterable, filter: filter, body: body, otherwise: otherwise)
        case "set":
            let name = try parser.expectName()
            let attribute = parser.accept(.symbol(".")) ? try parser.expectName() : nil
            guard parser.accept(.symbol("=")) else { throw JinjaError.syntax("block set is not supported") }
            return .assignment(name: name, attribute: attribute, value: try parser.parseWhole())
        default:
            throw JinjaError.syntax("unsupported statement {% \(keyword) %}")
        }
    }

    // MARK: Expressions

    init(_ source: String) throws {
        tokens = try JinjaToken.tokenize(source)
    }

    mutating func parseWhole() throws -> JinjaExpression {
        let expression = try parseExpression()
        try expectEnd()
        return expression
    }

    mutating func parseExpression() throws -> JinjaExpression {
        let value = try parseOr()
        guard accept(.name("if")) else { return value }
        let condition = try parseOr()
        let otherwise = accept(.name("else")) ? try parseExpression() : nil
        return .conditional(value, condition: condition, otherwise: otherwise)
    }

    mutating func parseOr() throws -> JinjaExpression {
        var left = try parseAnd()
        while accept(.name("or")) { left = .or(left, try parseAnd()) }
        return left
    }

    private mutating func parseAnd() throws -> JinjaExpression {
        var left = try parseNot()
        while accept(.name("and")) { left = .and(left, try parseNot()) }
        return left
    }

    private mutating func parseNot() throws -> JinjaExpression {
        accept(.name("not")) ? .not(try parseNot()) : try parseComparison()
    }

    private mutating func parseComparison() throws -> JinjaExpression {
        var left = try parseSum()
        while true {
            if case .symbol(let op) = peek(), ["==", "!=", "<", ">", "<=", ">="].contains(op) {
                index += 1
                left = .binary(op, left, try parseSum())
            } else if accept(.name("in")) {
                left = .binary("in", left, try parseSum())
            } else if peek() == .name("not"), peek(1) == .name("in") {
                index += 2
                left = .not(.binary("in", left, try parseSum()))
            } else {
                return left
            }
        }
    }

    private mutating func parseSum() throws -> JinjaExpression {
        try parseLeftAssociative(["+", "-"]) { try $0.parseConcatenation() }
    }

    private mutating func parseConcatenation() throws -> JinjaExpression {
        try parseLeftAssociative(["~"]) { try $0.parseProduct() }
    }

    private mutating func parseProduct() throws -> JinjaExpression {
        try parseLeftAssociative(["*", "/", "//", "%"]) { try $0.parsePower() }
    }

    private mutating func parsePower() throws -> JinjaExpression {
        try parseLeftAssociative(["**"]) { try $0.parseUnary() }
    }

    private mutating func parseLeftAssociative(
        _ operators: Set<String>, _ operand: (inout JinjaParser) throws -> JinjaExpression
    ) throws -> JinjaExpression {
        var left = try operand(&self)
        while case .symbol(let op) = peek(), operators.contains(op) {
            index += 1
            left = .binary(op, left, try operand(&self))
        }
        return left
    }

    private mutating func parseUnary() throws -> JinjaExpression {
        if accept(.symbol("-")) { return .negate(try parseUnary()) }
        if accept(.symbol("+")) { return try parseUnary() }
        return try parsePostfix(try parsePrimary())
    }

    private mutating func parsePostfix(_ base: JinjaExpression) throws -> JinjaExpression {
        var value = base
        while true {
            if accept(.symbol(".")) {
                value = .attribute(value, try expectName())
            } else if accept(.symbol("[")) {
                value = try parseSubscript(value)
            } else if accept(.symbol("(")) {
                value = .call(value, try parseArguments())
            } else if accept(.symbol("|")) {
                let name = try expectName()
                value = .filter(value, name: name, accept(.symbol("(")) ? try parseArguments() : JinjaArguments())
            } else if accept(.name("is")) {
                let negated = accept(.name("not"))
                let name = try expectName()
                value = .test(value, name: name, accept(.symbol("(")) ? try parseArguments() : JinjaArguments(),
                              negated: negated)
            } else {
                return value
            }
        }
    }

    private mutating func parseSubscript(_ base: JinjaExpression) throws -> JinjaExpression {
        var parts: [JinjaExpression?] = [nil]
        while true {
            if accept(.symbol("]")) { break }
            if accept(.symbol(":")) {
                parts.append(nil)
            } else {
                parts[parts.count - 1] = try parseExpression()
            }
        }
        if parts.count == 1, let key = parts[0] { return .item(base, key) }
        guard parts.count <= 3 else { throw JinjaError.syntax("bad slice") }
        return .slice(base, start: parts[0], stop: parts.count > 1 ? parts[1] : nil, step: parts.count > 2 ? parts[2] : nil)
    }

    /// Arguments after an opening parenthesis, through the closing one.
    private mutating func parseArguments() throws -> JinjaArguments {
        var arguments = JinjaArguments()
        while !accept(.symbol(")")) {
            if case .name(let keyword) = peek(), peek(1) == .symbol("=") {
                index += 2
                arguments.keywords.append((keyword, try parseExpression()))
            } else {
                arguments.positional.append(try parseExpression())
            }
            if !accept(.symbol(",")) {
                guard accept(.symbol(")")) else { throw JinjaError.syntax("expected , or )") }
                break
            }
        }
        return arguments
    }

    private mutating func parsePrimary() throws -> JinjaExpression {
        switch next() {
        case .string(var value):
            while case .string(let more) = peek() { value += more; index += 1 }  // adjacent literals join
            return .literal(.string(value))
        case .int(let value): return .literal(.int(value))
        case .double(let value): return .literal(.double(value))
        case .name(let name):
            switch name {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(name)
            }
        case .symbol("("):
            let first = try parseExpression()
            guard accept(.symbol(",")) else {
                guard accept(.symbol(")")) else { throw JinjaError.syntax("expected )") }
                return first
            }
            var items = [first]
            while !accept(.symbol(")")) {
                items.append(try parseExpression())
                _ = accept(.symbol(","))
            }
            return .list(items)
        case .symbol("["):
            var items: [JinjaExpression] = []
            while !accept(.symbol("]")) {
                items.append(try parseExpression())
                if !accept(.symbol(",")) { guard accept(.symbol("]")) else { throw JinjaError.syntax("expected ]") }; break }
            }
            return .list(items)
        case .symbol("{"):
            var pairs: [(JinjaExpression, JinjaExpression)] = []
            while !accept(.symbol("}")) {
                let key = try parseExpression()
                guard accept(.symbol(":")) else { throw JinjaError.syntax("expected :") }
                pairs.append((key, try parseExpression()))
                if !accept(.symbol(",")) { guard accept(.symbol("}")) else { throw JinjaError.syntax("expected }") }; break }
            }
            return .dictionary(pairs)
        case let token:
            throw JinjaError.syntax("unexpected \(token.map { "\($0)" } ?? "end of expression")")
        }
    }

    // MARK: Tokens

    private func peek(_ offset: Int = 0) -> JinjaToken? {
        index + offset < tokens.count ? tokens[index + offset] : nil
    }

    private mutating func next() -> JinjaToken? {
        defer { index += 1 }
        return peek()
    }

    private mutating func accept(_ token: JinjaToken) -> Bool {
        guard peek() == token else { return false }
        index += 1
        return true
    }

    private mutating func expectName() throws -> String {
        guard case .name(let name) = next() else { throw JinjaError.syntax("expected a name") }
        return name
    }

    private func expectEnd() throws {
        if let token = peek() { throw JinjaError.syntax("unexpected \(token)") }
    }
}
