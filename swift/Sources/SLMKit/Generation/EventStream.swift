/// A stream of generation events produced by `produce`, which is handed the function that yields one.
///
/// Cancelling the consuming task (or abandoning the stream) cancels `produce`; a `produce` that ends
/// in cancellation ends the stream without an error, any other error ends it with that error.
func eventStream(
    _ produce: @escaping @Sendable (_ emit: @escaping @Sendable (GenerationEvent) -> Void) async throws -> Void
) -> AsyncThrowingStream<GenerationEvent, Error> {
    AsyncThrowingStream { continuation in
        let task = Task {
            do {
                try await produce { continuation.yield($0) }
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
