/// Renders conversations in the ChatML format used by SmolLM2 and Qwen2:
/// `<|im_start|>role\ncontent<|im_end|>\n` per message.
///
/// A fixed ChatML renderer for models without a template; ``JinjaChatTemplate`` renders the
/// template a model ships with.
public struct ChatMLTemplate: Sendable {
    /// System prompt inserted when a conversation does not start with one.
    public var defaultSystemPrompt: String?

    public init(defaultSystemPrompt: String? = nil) {
        self.defaultSystemPrompt = defaultSystemPrompt
    }

    /// SmolLM2-Instruct's template, including its built-in system prompt.
    public static let smolLM2 = ChatMLTemplate(
        defaultSystemPrompt: "You are a helpful AI assistant named SmolLM, trained by Hugging Face")

    /// The prompt text; with `addGenerationPrompt` it ends with an opened assistant turn.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) -> String {
        var turns = messages
        if let defaultSystemPrompt, let first = turns.first, first.role != "system" {
            turns.insert(.system(defaultSystemPrompt), at: 0)
        }
        var prompt = turns.map { "<|im_start|>\($0.role)\n\($0.content)<|im_end|>\n" }.joined()
        if addGenerationPrompt {
            prompt += "<|im_start|>assistant\n"
        }
        return prompt
    }
}
