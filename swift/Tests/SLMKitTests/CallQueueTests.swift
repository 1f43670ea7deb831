import XCTest
@testable import SLMKit

/// ``CallQueue`` keeps an actor's suspending operations from interleaving, as
/// ``CoreAILanguageModel`` relies on for its KV cache.
final class CallQueueTests: XCTestCase {
    func testOperationsRunOneAtATimeInCallOrder() async {
        let recorder = Recorder()
        async let first: Void = recorder.record("a", holding: true)
        await waitUntil { await recorder.events == ["start a"] }
        async let second: Void = recorder.record("b", holding: false)
        await waitUntil { await recorder.waitingCount == 1 }
        async let third: Void = recorder.record("c", holding: false)
        await waitUntil { await recorder.waitingCount == 2 }

        let eventsWhileHeld = await recorder.events
        XCTAssertEqual(eventsWhileHeld, ["start a"], "b and c wait while a is suspended")
        await recorder.releaseHeld()
        _ = await (first, second, third)
        let events = await recorder.events
        XCTAssertEqual(events, ["start a", "end a", "start b", "end b", "start c", "end c"])
        let waiting = await recorder.waitingCount
        XCTAssertEqual(waiting, 0)
    }

    func testAThrowingOperationHandsTheTurnOn() async throws {
        let recorder = Recorder()
        do {
            try await recorder.fail()
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error as? Recorder.Failure, .planned)
        }
        await recorder.record("after", holding: false)
        let events = await recorder.events
        XCTAssertEqual(events, ["start after", "end after"])
    }

    /// Yields until `condition` holds, failing (instead of hanging) after 5 seconds.
    private func waitUntil(_ condition: () async -> Bool, line: UInt = #line) async {
        let deadline = ContinuousClock.now + .seconds(5)
        while !(await condition()) {
            guard ContinuousClock.now < deadline else { return XCTFail("condition never held", line: line) }
            await Task.yield()
        }
    }
}

private actor Recorder {
    enum Failure: Error { case planned }

    private let queue = CallQueue()
    private(set) var events: [String] = []
    private var held: CheckedContinuation<Void, Never>?

    var waitingCount: Int { queue.waitingCount }

    /// Records the start and end of an operation that, if `holding`, suspends until ``releaseHeld()``.
    func record(_ name: String, holding: Bool) async {
        await queue.run {
            events.append("start \(name)")
            if holding {
                await withCheckedContinuation { held = $0 }
            }
            events.append("end \(name)")
        }
    }

    func releaseHeld() {
        held?.resume()
        held = nil
    }

    func fail() async throws {
        try await queue.run { throw Failure.planned }
    }
}
