/// Reads the prediction for the next token from a Core AI program's `logits` output: float16
/// `[1, T, vocabulary]` (the only logits type Apple's coreai-models runner reads), last row, as `Float`.
enum CoreAILogits {
    /// - Parameters:
    ///   - shape: the output's shape; must be `[1, tokenCount, vocabulary]`.
    ///   - strides: its element strides.
    ///   - tokenCount: T, the number of tokens sent.
    ///   - float16Bits: the IEEE half-precision bit pattern at a storage offset.
    static func lastRow(
        shape: [Int], strides: [Int], tokenCount: Int, float16Bits: (Int) -> UInt16
    ) throws -> [Float] {
        guard shape.count == 3, strides.count == 3, shape[0] == 1, shape[1] == tokenCount, shape[2] > 0,
              strides.allSatisfy({ $0 >= 0 }) else {
            throw CoreAILanguageModelError.unexpectedLogitsShape(shape)
        }
        // Elements reachable through these strides: the offset of the last one, plus one.
        let elementCount = zip(shape, strides).reduce(1) { $0 + ($1.0 - 1) * $1.1 }
        return try LogitsLayout.lastPosition(shape: shape, strides: strides, elementCount: elementCount) {
            HalfPrecision.float(fromBits: float16Bits($0))
        }
    }
}
