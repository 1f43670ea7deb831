import XCTest
@testable import SLMKit

/// The KV cache kept across turns, counted with ``SuccessorModel``'s recorded calls.
final class ChatSessionTests: XCTestCase {
    /// Writes each message's content and nothing else, so prompts stay within the letters A…H.
    private struct PlainTemplate: ChatPromptTemplate {
        func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> String {
            messages.map(\.content).joined()
        }
    }

    private func makeSession(_ model: SuccessorModel, systemPrompt: String? = nil) throws -> ChatSession {
        ChatSession(generator: Generator(model: model, tokenizer: try TinyTokenizer.letters()),
                    template: PlainTemplate(), systemPrompt: systemPrompt)
    }

    private func reply(_ session: ChatSession, _ message: String, maxTokens: Int = 256) async throws
        -> (text: String, summary: GenerationSummary?) {
        var text = ""
        var summary: GenerationSummary?
        for try await event in await session.send(message, parameters: GenerationParameters(maxTokens: maxTokens)) {
            switch event {
            case .text(let piece): text += piece
            case .finished(let finished): summary = finished
            case .token: break
            }
        }
        return (text, summary)
    }

    func testLaterTurnsPrefillOnlyTheNewTokens() async throws {
        let model = SuccessorModel(vocabularySize: 9)
        let session = try makeSession(model)
        let first = try await reply(session, "A")
        XCTAssertEqual(first.text, "BCDEFGH")
        XCTAssertEqual(first.summary?.prefilledTokenCount, 1)
        let callsAfterFirst = await model.calls.count

        let second = try await reply(session, "AB", maxTokens: 3)
        XCTAssertEqual(second.text, "CDE")
        XCTAssertEqual(second.summary?.promptTokenCount, 10, "A + BCDEFGH + AB")
        XCTAssertEqual(second.summary?.prefilledTokenCount, 2, "only AB: the cache holds A…H")
        let calls = await model.calls
        XCTAssertEqual(calls[callsAfterFirst], [0, 1], "the second turn's prefill")
        let resetCount = await model.resetCount
        XCTAssertEqual(resetCount, 1, "only the first turn resets the model")

        let third = try await reply(session, "C", maxTokens: 1)
        XCTAssertEqual(third.summary?.prefilledTokenCount, 2, "E, sampled last turn but never fed, then C")
        let messages = await session.messages
        XCTAssertEqual(messages, [.user("A"), .assistant("BCDEFGH"), .user("AB"), .assistant("CDE"),
                                  .user("C"), .assistant("D")])
    }

    func testAReplyCutInsideAStopStringResetsTheModel() async throws {
        let model = SuccessorModel(vocabularySize: 9)
        let session = try makeSession(model)
        var stopped = ""
        for try await event in await session.send("A", parameters: GenerationParameters(stopStrings: ["DE"])) {
            if case .text(let piece) = event { stopped += piece }
        }
        XCTAssertEqual(stopped, "BC")
        let second = try await reply(session, "A", maxTokens: 1)
        XCTAssertEqual(second.summary?.prefilledTokenCount, 4, "the cache holds ABCD, the prompt is ABCA")
        let resetCount = await model.resetCount
        XCTAssertEqual(resetCount, 2)
    }

    func testAReplyStoppedBeforeAStopStringKeepsTheCache() async throws {
        let model = SuccessorModel(vocabularySize: 9)
        let session = try makeSession(model)
        for try await _ in await session.send("A", parameters: GenerationParameters(stopStrings: ["D"])) {}
        let second = try await reply(session, "A", maxTokens: 1)
        XCTAssertEqual(second.summary?.prefilledTokenCount, 1, "D was sampled but never fed: the cache holds ABC")
    }

    func testOldestTurnsLeaveThePromptAtTheContextLimit() async throws {
        let model = SuccessorModel(vocabularySize: 9, maximumContextLength: 12)
        let session = try makeSession(model, systemPrompt: "H")
        _ = try await reply(session, "A", maxTokens: 3)  // prompt HA, reply BCD
        let second = try await reply(session, "E", maxTokens: 3)  // HABCDE + 3 fits in 12
        XCTAssertEqual(second.summary?.prefilledTokenCount, 2, "D, then E")
        let third = try await reply(session, "A", maxTokens: 4)  // HABCDEFGHA + 4 > 12: drop the first turn
        XCTAssertEqual(third.text, "BCDE")
        XCTAssertEqual(third.summary?.promptTokenCount, 6, "H + EFGH + A")
        XCTAssertEqual(third.summary?.prefilledTokenCount, 6, "a new prefix: prefilled again after a reset")
        let resetCount = await model.resetCount
        XCTAssertEqual(resetCount, 2)
        let messages = await session.messages
        XCTAssertEqual(messages.count, 7, "trimmed turns stay in the conversation")
    }

    func testAMessageThatFillsTheContextIsAClearError() async throws {
        let model = SuccessorModel(vocabularySize: 9, maximumContextLength: 4)
        let session = try makeSession(model, systemPrompt: "H")
        do {
            _ = try await reply(session, "ABC")
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error as? ChatSessionError, .messageTooLong(tokenCount: 4, limit: 4))
        }
        let messages = await session.messages
        XCTAssertEqual(messages, [.system("H")], "the message is not added")
        let short = try await reply(session, "A", maxTokens: 8)
        XCTAssertEqual(short.text, "BC", "fits with less room than maxTokens; stops at the limit")
        XCTAssertEqual(short.summary?.stopReason, .contextLimit)
    }

    func testACancelledTurnKeepsThePartialReplyAndResetsNextTime() async throws {
        let model = SuccessorModel(vocabularySize: 8, delay: .milliseconds(2))
        let session = try makeSession(model)
        let consumer = Task {
            for try await _ in await session.send("A", parameters: GenerationParameters(maxTokens: 100_000)) {}
        }
        while await model.calls.count < 5 { try await Task.sleep(for: .milliseconds(1)) }
        consumer.cancel()
        _ = try? await consumer.value
        var messages = await session.messages
        while messages.count < 2 {
            try await Task.sleep(for: .milliseconds(5))
            messages = await session.messages
        }
        XCTAssertEqual(messages[1].role, "assistant")
        XCTAssertFalse(messages[1].content.isEmpty)
        // Whether the cancellation interrupted a model call (cache unknown: reset) or came between calls
        // (cache known: reused), the model must hold exactly the next prompt after its prefill.
        let next = try await reply(session, "A", maxTokens: 1)
        let sequence = await model.sequence
        let prompt = try TinyTokenizer.letters().encode("A" + messages[1].content + "A")
        XCTAssertEqual(next.summary?.promptTokenCount, prompt.count)
        XCTAssertEqual(Array(sequence.prefix(prompt.count)), prompt)
    }
}
