/// Streams text from a ``CausalLanguageModel``: prefill, then sample and decode
/// token by token until a stop condition.
///
/// Cancelling the consuming task (or abandoning the stream) stops the loop
/// before the next model call; the stream then simply ends.
/// One model must not run two generations at once, since it holds a single cache.
public struct Generator: Sendable {
    public let model: any CausalLanguageModel
    public let tokenizer: Tokenizer

    public init(model: any CausalLanguageModel, tokenizer: Tokenizer) {
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Encodes `prompt` (special tokens in it are recognised) and generates from it.
    public func generate(prompt: String, parameters: GenerationParameters = GenerationParameters())
        -> AsyncThrowingStream<GenerationEvent, Error> {
        generate(promptTokens: tokenizer.encode(prompt), parameters: parameters)
    }

    /// Generates from already tokenized input.
    public func generate(promptTokens: [Int32], parameters: GenerationParameters = GenerationParameters())
        -> AsyncThrowingStream<GenerationEvent, Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let summary = try await run(promptTokens: promptTokens, parameters: parameters) { text in
                        continuation.yield(.text(text))
                    }
                    if summary.stopReason != .cancelled {
                        continuation.yield(.finished(summary))
                    }
                    continuation.finish()
                } catch is CancellationError {
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    private func run(
        promptTokens: [Int32], parameters: GenerationParameters, emit: (String) -> Void
    ) async throws -> GenerationSummary {
        guard !promptTokens.isEmpty else { throw GenerationError.emptyPrompt }
        let contextLimit = model.maximumContextLength
        if let contextLimit, promptTokens.count > contextLimit {
            throw GenerationError.promptTooLong(tokenCount: promptTokens.count, limit: contextLimit)
        }
        let clock = ContinuousClock()
        let start = clock.now
        await model.reset()
        var logits = try await model.logits(for: promptTokens)
        let prefillEnd = clock.now

        var sampler = Sampler(parameters: parameters.sampling)
        var detokenizer = tokenizer.makeStreamingDetokenizer(skipSpecialTokens: parameters.skipSpecialTokens)
        var scanner = StopStringScanner(stopStrings: parameters.stopStrings)
        let stopTokenIDs = parameters.stopTokenIDs.union(tokenizer.eosTokenID.map { [$0] } ?? [])
        var history = promptTokens
        var generatedCount = 0
        var stopReason = StopReason.maxTokens

        decoding: while generatedCount < parameters.maxTokens {
            if Task.isCancelled {
                stopReason = .cancelled
                break
            }
            guard !logits.isEmpty else { throw GenerationError.emptyLogits }
            let token = sampler.sample(logits: logits, previousTokens: history)
            generatedCount += 1
            if stopTokenIDs.contains(token) {
                stopReason = .stopToken
                break
            }
            history.append(token)
            switch scanner.append(detokenizer.append(token)) {
            case .proceed(let text):
                if !text.isEmpty { emit(text) }
            case .stop(let text):
                if !text.isEmpty { emit(text) }
                stopReason = .stopString
                break decoding
            }
            if generatedCount == parameters.maxTokens { break }
            if let contextLimit, history.count >= contextLimit {
                stopReason = .contextLimit
                break
            }
            logits = try await model.logits(for: [token])
        }

        if stopReason != .stopString && stopReason != .cancelled {
            switch scanner.append(detokenizer.finish()) {
            case .proceed(let text):
                let tail = text + scanner.flush()
                if !tail.isEmpty { emit(tail) }
            case .stop(let text):
                if !text.isEmpty { emit(text) }
                stopReason = .stopString
            }
        }
        return GenerationSummary(
            promptTokenCount: promptTokens.count, generatedTokenCount: generatedCount,
            prefillDuration: prefillEnd - start, decodeDuration: clock.now - prefillEnd, stopReason: stopReason)
    }
}
