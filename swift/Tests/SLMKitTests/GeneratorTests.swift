import XCTest
@testable import SLMKit

final class GeneratorTests: XCTestCase {
    /// Letters A…H are ids 0…7 and `<eos>` is 8, so from "A" the model spells B…H and then ends.
    private func makeGenerator(_ model: SuccessorModel) throws -> Generator {
        Generator(model: model, tokenizer: try TinyTokenizer.letters())
    }

    private func collect(_ stream: AsyncThrowingStream<GenerationEvent, Error>) async throws
        -> (pieces: [String], summary: GenerationSummary?) {
        var pieces: [String] = []
        var summary: GenerationSummary?
        for try await event in stream {
            switch event {
            case .text(let text): pieces.append(text)
            case .finished(let finished): summary = finished
            case .token: break
            }
        }
        return (pieces, summary)
    }

    func testEOSStopsGenerationAndIsNotEmitted() async throws {
        let model = SuccessorModel(vocabularySize: 9)
        let (pieces, summary) = try await collect(try makeGenerator(model).generate(prompt: "A"))
        XCTAssertEqual(pieces, ["B", "C", "D", "E", "F", "G", "H"])
        XCTAssertEqual(summary?.stopReason, .stopToken)
        XCTAssertEqual(summary?.promptTokenCount, 1)
        XCTAssertEqual(summary?.generatedTokenCount, 8)
        XCTAssertGreaterThan(summary?.tokensPerSecond ?? 0, 0)
        let calls = await model.calls
        let resetCount = await model.resetCount
        XCTAssertEqual(calls.first, [0], "prefill gets the whole prompt")
        XCTAssertEqual(calls.dropFirst().map(\.count), Array(repeating: 1, count: 7), "decode feeds one token per step")
        XCTAssertEqual(resetCount, 1)
    }

    func testPrefillReceivesTheWholePrompt() async throws {
        let model = SuccessorModel(vocabularySize: 9)
        let parameters = GenerationParameters(maxTokens: 2)
        let (pieces, _) = try await collect(try makeGenerator(model).generate(prompt: "ABC", parameters: parameters))
        XCTAssertEqual(pieces.joined(), "DE")
        let calls = await model.calls
        XCTAssertEqual(calls, [[0, 1, 2], [3]])
    }

    func testExtraStopTokenStopsGeneration() async throws {
        let parameters = GenerationParameters(stopTokenIDs: [4])
        let (pieces, summary) = try await collect(
            try makeGenerator(SuccessorModel(vocabularySize: 9)).generate(prompt: "A", parameters: parameters))
        XCTAssertEqual(pieces.joined(), "BCD")
        XCTAssertEqual(summary?.stopReason, .stopToken)
    }

    func testMaxTokensLimitsGenerationWithoutAnExtraModelCall() async throws {
        let model = SuccessorModel(vocabularySize: 9)
        let parameters = GenerationParameters(maxTokens: 3)
        let stream = try makeGenerator(model).generate(prompt: "A", parameters: parameters)
        let (pieces, summary) = try await collect(stream)
        XCTAssertEqual(pieces.joined(), "BCD")
        XCTAssertEqual(summary?.stopReason, .maxTokens)
        XCTAssertEqual(summary?.generatedTokenCount, 3)
        let callCount = await model.calls.count
        XCTAssertEqual(callCount, 3, "prefill plus two decode steps")
    }

    func testStopStringSpanningTokensIsNotEmitted() async throws {
        let parameters = GenerationParameters(stopStrings: ["EF"])
        let (pieces, summary) = try await collect(
            try makeGenerator(SuccessorModel(vocabularySize: 9)).generate(prompt: "A", parameters: parameters))
        XCTAssertEqual(pieces, ["B", "C", "D"])
        XCTAssertEqual(summary?.stopReason, .stopString)
    }

    func testPossibleStopStringPrefixIsHeldBackThenReleased() async throws {
        let parameters = GenerationParameters(stopStrings: ["DX", "GH!"])
        let (pieces, summary) = try await collect(
            try makeGenerator(SuccessorModel(vocabularySize: 9)).generate(prompt: "A", parameters: parameters))
        XCTAssertEqual(pieces, ["B", "C", "DE", "F", "GH"], "D waits for E; G and H wait for the end")
        XCTAssertEqual(summary?.stopReason, .stopToken)
    }

    func testContextLimitEndsGeneration() async throws {
        let model = SuccessorModel(vocabularySize: 9, maximumContextLength: 4)
        let (pieces, summary) = try await collect(try makeGenerator(model).generate(prompt: "AB"))
        XCTAssertEqual(pieces.joined(), "CD")
        XCTAssertEqual(summary?.stopReason, .contextLimit)
    }

    func testPromptLongerThanContextThrows() async throws {
        let model = SuccessorModel(vocabularySize: 9, maximumContextLength: 2)
        do {
            _ = try await collect(try makeGenerator(model).generate(prompt: "ABC"))
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error as? GenerationError, .promptTooLong(tokenCount: 3, limit: 2))
        }
    }

    func testEmptyPromptThrows() async throws {
        do {
            _ = try await collect(try makeGenerator(SuccessorModel(vocabularySize: 9)).generate(promptTokens: []))
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error as? GenerationError, .emptyPrompt)
        }
    }

    func testModelErrorEndsTheStreamWithThatError() async throws {
        let model = SuccessorModel(vocabularySize: 9, failOnCall: 2)
        var pieces: [String] = []
        do {
            for try await event in try makeGenerator(model).generate(prompt: "A") {
                if case .text(let text) = event { pieces.append(text) }
            }
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error as? SuccessorModel.Failure, .planned)
        }
        XCTAssertEqual(pieces, ["B", "C"])
    }

    func testSeededSamplingIsReproducible() async throws {
        let tokenizer = try TinyTokenizer.letters()
        let parameters = GenerationParameters(
            maxTokens: 20, sampling: SamplingParameters(temperature: 5, seed: 99), stopTokenIDs: [])
        var outputs: [String] = []
        for _ in 0..<2 {
            let generator = Generator(model: SuccessorModel(vocabularySize: 8), tokenizer: tokenizer)
            outputs.append(try await collect(generator.generate(prompt: "A", parameters: parameters)).pieces.joined())
        }
        XCTAssertEqual(outputs[0], outputs[1])
        XCTAssertNotEqual(outputs[0], "BCDEFGHABCDEFGHABCDE", "temperature 5 should leave the successor path")
    }

    func testCancellingTheConsumerStopsGenerationCleanly() async throws {
        let model = SuccessorModel(vocabularySize: 8, delay: .milliseconds(2))
        let generator = try makeGenerator(model)
        let parameters = GenerationParameters(maxTokens: 100_000)
        let consumer = Task { () -> Int in
            var received = 0
            do {
                for try await event in generator.generate(prompt: "A", parameters: parameters) {
                    if case .text = event { received += 1 }
                }
            } catch {
                XCTAssertTrue(error is CancellationError, "unexpected error \(error)")
            }
            return received
        }
        while await model.calls.count < 5 {
            try await Task.sleep(for: .milliseconds(1))
        }
        consumer.cancel()
        let received = await consumer.value
        XCTAssertLessThan(received, 100_000)
        try await Task.sleep(for: .milliseconds(50))
        let callsAfterCancel = await model.calls.count
        try await Task.sleep(for: .milliseconds(100))
        let callsLater = await model.calls.count
        XCTAssertEqual(callsAfterCancel, callsLater, "the generation loop keeps running after cancellation")
    }

    func testBreakingOutOfTheStreamStopsGeneration() async throws {
        let model = SuccessorModel(vocabularySize: 8, delay: .milliseconds(1))
        let generator = try makeGenerator(model)
        var pieces: [String] = []
        for try await event in generator.generate(prompt: "A", parameters: GenerationParameters(maxTokens: 100_000)) {
            if case .text(let text) = event { pieces.append(text) }
            if pieces.count == 3 { break }
        }
        XCTAssertEqual(pieces, ["B", "C", "D"])
        try await Task.sleep(for: .milliseconds(50))
        let callsAfterBreak = await model.calls.count
        try await Task.sleep(for: .milliseconds(100))
        let callsLater = await model.calls.count
        XCTAssertEqual(callsAfterBreak, callsLater)
        XCTAssertLessThan(callsLater, 100)
    }
}
