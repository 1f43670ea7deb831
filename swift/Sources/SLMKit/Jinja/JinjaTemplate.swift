/// A Jinja template in the subset Hugging Face chat templates use (SmolLM2, Qwen2.5/3, Llama 3.x,
/// Gemma 3, Mistral v0.3 are tested against transformers' output), evaluated the way transformers
/// does: `trim_blocks` and `lstrip_blocks` on, `raise_exception` and `strftime_now` available.
///
/// Covered: `if`/`elif`/`else`, `for` (unpacking, `if` filter, `else`, `loop.*`), `set` (also
/// `namespace` attributes), comments, whitespace control; expressions with literals, lists, dicts,
/// attribute and item access, slices, `and`/`or`/`not`, comparisons, `in`, arithmetic, `~`, inline
/// `if … else`; the filters and tests in `JinjaFilters.swift` and the string/dict methods and globals
/// in `JinjaFunctions.swift`. Not covered: macros, `call`, blocks and inheritance, `include`.
public struct JinjaTemplate: Sendable {
    private let nodes: [JinjaNode]

    /// Parses `source`; throws ``JinjaError/syntax(_:)`` for text outside the subset.
    public init(_ source: String) throws {
        nodes = try JinjaParser.parse(source)
    }

    /// Renders with `context` as the template's variables (JSON objects keep their keys sorted).
    public func render(_ context: [String: JSONValue]) throws -> String {
        try render(values: context.mapValues(JinjaValue.init))
    }

    func render(values: [String: JinjaValue]) throws -> String {
        try JinjaInterpreter.render(nodes, context: values)
    }
}
