#if canImport(CoreAI)
import CoreAI

/// Moves a ``CoreAIRequest``'s inputs into NDArrays and the program's logits out of one.
@available(macOS 27.0, iOS 27.0, tvOS 27.0, watchOS 27.0, visionOS 27.0, *)
extension NDArray {
    /// An int32 `[1, N]` array holding `values`, with the layout `descriptor` (the program's input) resolves to.
    static func int32Row(_ values: [Int32], descriptor: NDArrayDescriptor) -> NDArray {
        var array = NDArray(descriptor: descriptor.resolvingDynamicDimensions([1, values.count]))
        let view = array.mutableView(as: Int32.self)
        view.withUnsafeMutablePointer { pointer, _, strides in
            for (column, value) in values.enumerated() {
                pointer[column * strides[1]] = value
            }
        }
        return array
    }

    /// The last row of float16 logits `[1, tokenCount, vocabulary]` as `Float`
    /// (read as bit patterns, converted by ``HalfPrecision``).
    func lastRowOfFloat16Logits(tokenCount: Int) throws -> [Float] {
        guard scalarType == .float16 else {
            throw CoreAILanguageModelError.unsupportedScalarType("logits \(scalarType), expected float16")
        }
        let row = view(as: UInt16.self).withUnsafePointer { pointer, shape, strides in
            Result {
                try CoreAILogits.lastRow(
                    shape: integerArray(shape), strides: integerArray(strides), tokenCount: tokenCount
                ) { pointer[$0] }
            }
        }
        return try row.get()
    }
}
#endif
