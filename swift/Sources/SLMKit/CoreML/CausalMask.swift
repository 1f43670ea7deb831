/// The additive attention mask of the swift-transformers Core ML contract:
/// shape `(1, 1, queryLength, pastLength + queryLength + 1)`: a leading column the program ignores
/// (swift-transformers sends one more column than there are tokens, and the exported program
/// reads the position from the width: `past + queryLength = width - 1`), then `0` where a query
/// may attend and `-inf` elsewhere, as IEEE half-precision bit patterns. (The program also masks
/// causally itself, so swift-transformers' all-zero mask gives the same logits.)
enum CausalMask {
    static let allowedBits: UInt16 = 0x0000
    static let blockedBits: UInt16 = 0xFC00  // -infinity in float16

    /// Columns of the mask: the ignored leading one, then one per key.
    static func width(queryLength: Int, pastLength: Int) -> Int {
        pastLength + queryLength + 1
    }

    /// Row-major mask bits: query `q` (absolute position `pastLength + q`) sees keys `0...pastLength + q`
    /// (columns `1...pastLength + q + 1`).
    static func float16Bits(queryLength: Int, pastLength: Int) -> [UInt16] {
        let width = width(queryLength: queryLength, pastLength: pastLength)
        var bits = [UInt16](repeating: allowedBits, count: queryLength * width)
        for query in 0..<queryLength {
            for column in (pastLength + query + 2)..<width {
                bits[query * width + column] = blockedBits
            }
        }
        return bits
    }
}
