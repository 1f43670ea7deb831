/// One call of a Core AI language-model program with the contract of Apple's coreai-models LLM
/// runner, as mlx_slm exports it: what to send, and what the call does to the KV cache.
///
/// The program takes `input_ids` int32 `[1, T]` (the new tokens) and `position_ids` int32
/// `[1, P + T]` (the positions of every token so far, `0 ..< P + T`); it infers
/// `P = len(position_ids) - len(input_ids)`, reads cache rows `0 ..< P` and writes rows
/// `P ..< P + T` of `keyCache` / `valueCache` in place, so the states need at least `P + T` rows.
struct CoreAIRequest: Equatable, Sendable {
    /// `input_ids`: the new tokens, `[1, T]`.
    let inputIDs: [Int32]
    /// `position_ids`: `0 ..< P + T`, `[1, P + T]`.
    let positionIDs: [Int32]
    /// Rows S the cache states must have for this call.
    let cacheCapacity: Int
    /// Whether the caches must be reallocated to ``cacheCapacity`` rows (keeping rows `0 ..< P`) first.
    let growsCache: Bool

    /// P: tokens already in the cache.
    var pastLength: Int { positionIDs.count - inputIDs.count }
    /// P + T: tokens in the cache after the call.
    var totalLength: Int { positionIDs.count }
    /// Cache rows the program writes: `P ..< P + T`.
    var writtenRows: Range<Int> { pastLength..<totalLength }

    /// Plans the call that appends `tokens` to the `pastLength` tokens already in caches of
    /// `cacheCapacity` rows.
    /// - Throws: ``CoreAILanguageModelError/emptyInput`` without tokens,
    ///   ``CoreAILanguageModelError/contextOverflow(requested:limit:)`` past `max_context`.
    init(appending tokens: [Int32], pastLength: Int, cacheCapacity current: Int, sizing: CoreAICacheSizing) throws {
        guard !tokens.isEmpty else { throw CoreAILanguageModelError.emptyInput }
        let total = pastLength + tokens.count
        guard total <= sizing.maximumContextLength else {
            throw CoreAILanguageModelError.contextOverflow(requested: total, limit: sizing.maximumContextLength)
        }
        inputIDs = tokens
        positionIDs = (0..<total).map { Int32($0) }
        cacheCapacity = sizing.capacity(holding: total, current: current)
        growsCache = cacheCapacity > current
    }
}
