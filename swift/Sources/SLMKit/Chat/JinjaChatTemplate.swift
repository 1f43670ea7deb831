/// A model's own chat template (the manifest's `chat_template`, or the tokenizer's), rendered as
/// transformers' `apply_chat_template` renders it.
public struct JinjaChatTemplate: ChatPromptTemplate {
    public let template: JinjaTemplate
    /// `bos_token`, `eos_token`, … as the template sees them.
    public var specialTokens: [String: String]
    /// Further template variables, such as Qwen3's `enable_thinking: false`.
    public var variables: [String: JSONValue]

    public init(source: String, specialTokens: [String: String] = [:], variables: [String: JSONValue] = [:]) throws {
        template = try JinjaTemplate(source)
        self.specialTokens = specialTokens
        self.variables = variables
    }

    /// The template a model's manifest carries, else its tokenizer's, with the tokenizer's BOS/EOS text.
    /// Returns nil when neither has one.
    public init?(manifest: ModelManifest?, tokenizer: Tokenizer) throws {
        guard let source = manifest?.chatTemplate ?? tokenizer.chatTemplate else { return nil }
        var tokens: [String: String] = [:]
        tokens["bos_token"] = tokenizer.bosToken
        tokens["eos_token"] = tokenizer.eosToken
        try self.init(source: source, specialTokens: tokens)
    }

    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String {
        var context = variables.mapValues(JinjaValue.init)
        for (name, token) in specialTokens { context[name] = .string(token) }
        context["messages"] = .array(messages.map {
            .object(JinjaObject([("role", .string($0.role)), ("content", .string($0.content))]))
        })
        context["add_generation_prompt"] = .bool(addGenerationPrompt)
        return try template.render(values: context)
    }
}
