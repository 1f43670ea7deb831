/// Turns a conversation into prompt text: ``ChatMLTemplate`` for ChatML models, or the Jinja
/// template a model ships with.
public protocol ChatPromptTemplate: Sendable {
    /// The prompt for `messages`; with `addGenerationPrompt` it ends with an opened assistant turn.
    func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) throws -> String
}

extension ChatMLTemplate: ChatPromptTemplate {}
