/// Runs an actor's async operations one at a time, in the order they were called.
///
/// An actor method that suspends (awaiting a Core AI program, say) lets the actor start its other
/// calls before it finishes. A model holding one KV cache must not interleave calls that way: a
/// generation cancelled mid-step and restarted at once would send the new prompt's `reset()` and
/// prefill while the old step still writes the cache. Each operation passed to
/// ``run(isolation:_:)`` waits until those called before it have finished.
///
/// Owned by one actor and only used from its isolation.
final class CallQueue {
    private var isRunning = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    /// Operations waiting for their turn.
    var waitingCount: Int { waiting.count }

    func run<Result>(
        isolation: isolated (any Actor)? = #isolation, _ operation: () async throws -> Result
    ) async rethrows -> Result {
        if isRunning {
            await withCheckedContinuation { waiting.append($0) }
        } else {
            isRunning = true
        }
        // Hand the turn straight to the next waiter, so a newcomer cannot overtake it.
        defer {
            if waiting.isEmpty {
                isRunning = false
            } else {
                waiting.removeFirst().resume()
            }
        }
        return try await operation()
    }
}
