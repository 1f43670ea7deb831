/// Reads the logits of the last sequence position from a strided array of
/// shape `(1, …, 1, sequence, vocabulary)`, as Core ML and Core AI models return them.
enum LogitsLayout {
    enum Failure: Error, Equatable {
        case unexpectedShape([Int])
        case outOfBounds
    }

    /// - Parameters:
    ///   - shape: the array's shape; the last axis is the vocabulary.
    ///   - strides: element strides per axis.
    ///   - elementCount: number of readable elements behind the storage.
    ///   - element: reads the element at a storage offset.
    static func lastPosition(
        shape: [Int], strides: [Int], elementCount: Int, element: (Int) -> Float
    ) throws -> [Float] {
        guard let vocabulary = shape.last, vocabulary > 0, strides.count == shape.count,
              shape.dropLast(2).allSatisfy({ $0 == 1 }) else {
            throw Failure.unexpectedShape(shape)
        }
        var offset = 0
        if shape.count >= 2 {
            let sequence = shape[shape.count - 2]
            guard sequence > 0 else { throw Failure.unexpectedShape(shape) }
            offset = (sequence - 1) * strides[shape.count - 2]
        }
        let vocabularyStride = strides[shape.count - 1]
        let lastOffset = offset + (vocabulary - 1) * vocabularyStride
        guard offset >= 0, lastOffset >= 0, lastOffset < elementCount else { throw Failure.outOfBounds }
        return (0..<vocabulary).map { element(offset + $0 * vocabularyStride) }
    }
}
