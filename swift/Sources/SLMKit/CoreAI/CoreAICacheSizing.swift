/// How many rows (positions) the `keyCache` / `valueCache` states of a Core AI program get.
///
/// The caller chooses the states' sequence length S. As in Apple's coreai-models runner, the
/// caches start small and double when a call needs more rows, up to `max_context`: a short chat
/// then never pays for the whole context's memory.
struct CoreAICacheSizing: Equatable, Sendable {
    /// Rows allocated before the first call, unless `max_context` is smaller.
    static let defaultInitialCapacity = 256

    /// `max_context`: the most tokens the program's RoPE table covers.
    let maximumContextLength: Int
    /// Rows of the caches before any growth.
    let initialCapacity: Int

    init(maximumContextLength: Int, initialCapacity: Int = defaultInitialCapacity) throws {
        guard maximumContextLength > 0 else { throw CoreAILanguageModelError.missingMaximumContext }
        self.maximumContextLength = maximumContextLength
        self.initialCapacity = max(1, min(initialCapacity, maximumContextLength))
    }

    /// Reads `max_context` from the exporter's manifest, which a Core AI export always writes.
    init(manifest: ModelManifest?) throws {
        guard let maximum = manifest?.maxContext else { throw CoreAILanguageModelError.missingMaximumContext }
        try self.init(maximumContextLength: maximum)
    }

    /// The rows to allocate so the caches hold `rows` positions when `current` rows exist:
    /// `current` if it is enough, otherwise `current` doubled until it is, at most `max_context`.
    /// - Precondition: `rows <= maximumContextLength` (``CoreAIRequest`` checks it first).
    func capacity(holding rows: Int, current: Int) -> Int {
        precondition(rows <= maximumContextLength, "\(rows) rows exceed max_context \(maximumContextLength)")
        guard rows > current else { return current }
        var capacity = max(current, 1)
        while capacity < rows {
            capacity = min(capacity * 2, maximumContextLength)
        }
        return capacity
    }
}
