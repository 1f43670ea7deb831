/// A conversation with one model that keeps the model's KV cache from turn to turn.
///
/// Each turn renders the whole conversation with the template, but only the tokens the cache does
/// not already hold are prefilled: the new user message and the template's turn markers. When the
/// rendered tokens no longer start with what the cache holds (a reply cut at a stop string, or a
/// sampled token sequence that encodes differently) or a turn was cancelled or failed, the model is
/// reset and the prompt prefilled again.
///
/// At the context limit the oldest turns (a user message and the replies after it) leave the prompt,
/// not ``messages``, until the prompt plus `maxTokens` fits; the system message stays. If the system
/// message and the new message alone fill the context, the turn fails with
/// ``ChatSessionError/messageTooLong(tokenCount:limit:)`` and the message is not added.
///
/// The session owns the model's cache: do not run other generations on the same model meanwhile.
public actor ChatSession {
    public let generator: Generator
    public let template: any ChatPromptTemplate
    /// The whole conversation, including turns trimmed from the prompt.
    public private(set) var messages: [ChatMessage]

    /// Index in ``messages`` of the oldest non-system message still in the prompt.
    private var firstPromptMessage: Int
    /// What the model's cache holds, or nil when unknown (after a cancelled or failed turn).
    private var cachedTokens: [Int32]? = []
    private var isGenerating = false

    /// - Parameter systemPrompt: a first system message, if the conversation should have one.
    public init(generator: Generator, template: any ChatPromptTemplate, systemPrompt: String? = nil) {
        self.generator = generator
        self.template = template
        messages = systemPrompt.map { [.system($0)] } ?? []
        firstPromptMessage = messages.count
    }

    /// Adds a user message and streams the reply, which joins ``messages`` when the stream ends
    /// (partial if cancelled).
    public func send(_ text: String, parameters: GenerationParameters = GenerationParameters())
        -> AsyncThrowingStream<GenerationEvent, Error> {
        eventStream { emit in try await self.respond(to: text, parameters: parameters, emit: emit) }
    }

    /// Forgets the conversation (keeping a first system message) and the cache.
    public func clear() {
        messages = messages.first?.role == "system" ? [messages[0]] : []
        firstPromptMessage = messages.count
        cachedTokens = nil
    }

    private func respond(
        to text: String, parameters: GenerationParameters, emit: @escaping (GenerationEvent) -> Void
    ) async throws {
        guard !isGenerating else { throw ChatSessionError.busy }
        isGenerating = true
        defer { isGenerating = false }
        let candidate = messages + [.user(text)]
        let promptTokens = try fittingPrompt(for: candidate, replyTokens: parameters.maxTokens)
        messages = candidate
        let previousCache = cachedTokens ?? []
        cachedTokens = nil
        var reply = ""
        defer { messages.append(.assistant(reply)) }
        cachedTokens = try await generator.run(
            promptTokens: promptTokens, cachedTokens: previousCache, parameters: parameters
        ) { event in
            if case .text(let piece) = event { reply += piece }
            emit(event)
        }
    }

    /// The prompt tokens of `candidate` from ``firstPromptMessage`` on, after moving it past the
    /// oldest turns until the prompt plus `replyTokens` fits the context (keeping the new message).
    private func fittingPrompt(for candidate: [ChatMessage], replyTokens: Int) throws -> [Int32] {
        let newest = candidate.count - 1
        var first = firstPromptMessage
        while true {
            let tokens = try promptTokens(candidate, from: first)
            guard let limit = generator.model.maximumContextLength, tokens.count + replyTokens > limit else {
                firstPromptMessage = first
                return tokens
            }
            guard first < newest else {
                if tokens.count >= limit { throw ChatSessionError.messageTooLong(tokenCount: tokens.count, limit: limit) }
                firstPromptMessage = first
                return tokens
            }
            first += 1
            while first < newest && candidate[first].role != "user" { first += 1 }
        }
    }

    private func promptTokens(_ candidate: [ChatMessage], from first: Int) throws -> [Int32] {
        let system = candidate.first?.role == "system" ? [candidate[0]] : []
        let kept = system + candidate[max(first, system.count)...]
        return generator.tokenizer.encode(try template.render(Array(kept), addGenerationPrompt: true))
    }
}
