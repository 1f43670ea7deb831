/// The declared shape of a `keyCache` / `valueCache` state, `[layers, 1, kv_heads, S, head_dim]`
/// for mlx_slm exports, where the sequence length S is the one dynamic (negative) dimension.
///
/// Growing a cache means allocating it with more rows and copying the rows already written;
/// this type knows which axis that is and where each element sits in strided storage.
struct CoreAICacheShape: Equatable, Sendable {
    /// The shape as the program declares it; `declared[sequenceAxis] < 0`.
    let declared: [Int]
    /// The axis of the rows (positions).
    let sequenceAxis: Int

    /// - Throws: ``CoreAILanguageModelError/unexpectedStateShape(_:_:)`` unless exactly one
    ///   dimension is dynamic and the others are positive.
    init(name: String, declared: [Int]) throws {
        let dynamicAxes = declared.indices.filter { declared[$0] < 0 }
        guard dynamicAxes.count == 1, declared.allSatisfy({ $0 != 0 }) else {
            throw CoreAILanguageModelError.unexpectedStateShape(name, declared)
        }
        self.declared = declared
        sequenceAxis = dynamicAxes[0]
    }

    /// The concrete shape with `rows` positions.
    func resolved(rows: Int) -> [Int] {
        var shape = declared
        shape[sequenceAxis] = rows
        return shape
    }

    /// Calls `visit(sourceOffset, destinationOffset)` for every element in rows `0 ..< rows` of two
    /// arrays of this shape (each with at least `rows` rows), given their element strides.
    func forEachElement(
        inFirstRows rows: Int, sourceStrides: [Int], destinationStrides: [Int], _ visit: (Int, Int) -> Void
    ) {
        precondition(sourceStrides.count == declared.count && destinationStrides.count == declared.count)
        let extent = resolved(rows: rows)
        guard extent.allSatisfy({ $0 > 0 }) else { return }
        var index = [Int](repeating: 0, count: extent.count)
        while true {
            var source = 0
            var destination = 0
            for axis in extent.indices {
                source += index[axis] * sourceStrides[axis]
                destination += index[axis] * destinationStrides[axis]
            }
            visit(source, destination)
            // Advance the last axis fastest; stop once the first axis wraps.
            var axis = extent.count - 1
            while axis >= 0 {
                index[axis] += 1
                if index[axis] < extent[axis] { break }
                index[axis] = 0
                axis -= 1
            }
            if axis < 0 { return }
        }
    }
}
