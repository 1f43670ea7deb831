/// Streams text from a ``CausalLanguageModel``: prefill, then sample and decode
/// token by token until a stop condition; each sampled token is also reported with its log-probability.
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
        eventStream { emit in
            _ = try await run(promptTokens: promptTokens, cachedTokens: [], parameters: parameters, emit: emit)
        }
    }

    /// Generates after `promptTokens`, emitting every event but the ``GenerationEvent/finished(_:)``
    /// of a cancelled run, and returns what the model's cache then holds.
    ///
    /// - Parameter cachedTokens: tokens the model's cache already holds; when they are a proper prefix
    ///   of `promptTokens` only the rest is prefilled, otherwise the model is reset and all of it is.
    func run(
        promptTokens: [Int32], cachedTokens: [Int32], parameters: GenerationParameters,
        emit: (GenerationEvent) -> Void
    ) async throws -> [Int32] {
        guard !promptTokens.isEmpty else { throw GenerationError.emptyPrompt }
        let contextLimit = model.maximumContextLength
        if let contextLimit, promptTokens.count > contextLimit {
            throw GenerationError.promptTooLong(tokenCount: promptTokens.count, limit: contextLimit)
        }
        let reused = cachedTokens.count < promptTokens.count && promptTokens.starts(with: cachedTokens)
            ? cachedTokens.count : 0
        let clock = ContinuousClock()
        let start = clock.now
        if reused == 0 { await model.reset() }
        var logits = try await model.logits(for: Array(promptTokens[reused...]))
        var cache = promptTokens
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
            let logprob = LogitProcessing.logSoftmax(logits, at: Int(token))
            generatedCount += 1
            if stopTokenIDs.contains(token) {
                emit(.token(GeneratedToken(id: token, text: "", logprob: logprob)))
                stopReason = .stopToken
                break
            }
            history.append(token)
            let piece = detokenizer.append(token)
            emit(.token(GeneratedToken(id: token, text: piece, logprob: logprob)))
            switch scanner.append(piece) {
            case .proceed(let text):
                if !text.isEmpty { emit(.text(text)) }
            case .stop(let text):
                if !text.isEmpty { emit(.text(text)) }
                stopReason = .stopString
                break decoding
            }
            if generatedCount == parameters.maxTokens { break }
            if let contextLimit, history.count >= contextLimit {
                stopReason = .contextLimit
                break
            }
            logits = try await model.logits(for: [token])
            cache.append(token)
        }

        if stopReason != .stopString && stopReason != .cancelled {
            switch scanner.append(detokenizer.finish()) {
            case .proceed(let text):
                let tail = text + scanner.flush()
                if !tail.isEmpty { emit(.text(tail)) }
            case .stop(let text):
                if !text.isEmpty { emit(.text(text)) }
                stopReason = .stopString
            }
        }
        if stopReason != .cancelled {
            emit(.finished(GenerationSummary(
                promptTokenCount: promptTokens.count, prefilledTokenCount: promptTokens.count - reused,
                generatedTokenCount: generatedCount, prefillDuration: prefillEnd - start,
                decodeDuration: clock.now - prefillEnd, stopReason: stopReason)))
        }
        return cache
    }
}
