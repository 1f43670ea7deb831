import Dispatch

/// Runs blocking work (a synchronous Core ML prediction) on a serial dispatch queue of its own and
/// suspends the caller until it finishes.
///
/// Called inside an actor, a synchronous prediction holds one of Swift concurrency's few pool threads,
/// and the actor, for the whole forward pass. Through this queue the actor only awaits: its thread
/// goes back to the pool and other work runs meanwhile. Work items run one at a time, in the order given.
final class PredictionQueue: Sendable {
    private let queue: DispatchQueue
    private let key = DispatchSpecificKey<Void>()

    init(label: String) {
        queue = DispatchQueue(label: label, qos: .userInitiated)
        queue.setSpecific(key: key, value: ())
    }

    /// Whether the calling code runs on this queue.
    var isCurrent: Bool { DispatchQueue.getSpecific(key: key) != nil }

    func run<Result: Sendable>(_ work: @escaping @Sendable () throws -> Result) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { continuation.resume(with: Swift.Result { try work() }) }
        }
    }
}

/// Carries a value that is not `Sendable` (an `MLModel`, its `MLState`, feature providers) to the
/// ``PredictionQueue`` and back: the actor that owns it does not touch it while the work runs.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}
