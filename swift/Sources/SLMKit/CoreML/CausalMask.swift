/// The additive attention mask of the swift-transformers Core ML contract:
/// shape `(1, 1, queryLength, pastLength + queryLength)`, `0` where a query may
/// attend and `-inf` elsewhere, as IEEE half-precision bit patterns.
enum CausalMask {
    static let allowedBits: UInt16 = 0x0000
    static let blockedBits: UInt16 = 0xFC00  // -infinity in float16

    /// Row-major mask bits: query `q` (absolute position `pastLength + q`) sees keys `0...pastLength + q`.
    static func float16Bits(queryLength: Int, pastLength: Int) -> [UInt16] {
        let keyLength = pastLength + queryLength
        var bits = [UInt16](repeating: allowedBits, count: queryLength * keyLength)
        for query in 0..<queryLength {
            for key in (pastLength + query + 1)..<keyLength {
                bits[query * keyLength + key] = blockedBits
            }
        }
        return bits
    }
}
