#if canImport(CoreAI)
import CoreAI

/// The `keyCache` / `valueCache` states of a Core AI language-model program, allocated with
/// ``capacity`` rows and reallocated with more when a call needs them.
///
/// Rows past the ones a sequence has written are never read (the program reads rows `0 ..< P + T`
/// after writing `P ..< P + T`), so neither allocation nor ``CoreAILanguageModel/reset()`` clears them.
@available(macOS 27.0, iOS 27.0, tvOS 27.0, watchOS 27.0, visionOS 27.0, *)
struct CoreAIKVCache {
    /// The states, handed to the program as mutable views so it writes them in place.
    var keys: NDArray
    var values: NDArray
    /// Rows S both states have.
    private(set) var capacity: Int

    private let keyDescriptor: NDArrayDescriptor
    private let valueDescriptor: NDArrayDescriptor
    private let keyShape: CoreAICacheShape
    private let valueShape: CoreAICacheShape

    init(keyDescriptor: NDArrayDescriptor, valueDescriptor: NDArrayDescriptor, names: (String, String), capacity: Int) throws {
        keyShape = try CoreAICacheShape(name: names.0, declared: keyDescriptor.shape)
        valueShape = try CoreAICacheShape(name: names.1, declared: valueDescriptor.shape)
        self.keyDescriptor = keyDescriptor
        self.valueDescriptor = valueDescriptor
        self.capacity = capacity
        keys = NDArray(descriptor: keyDescriptor.resolvingDynamicDimensions(keyShape.resolved(rows: capacity)))
        values = NDArray(descriptor: valueDescriptor.resolvingDynamicDimensions(valueShape.resolved(rows: capacity)))
    }

    /// Reallocates both states with `newCapacity` rows, copying rows `0 ..< rows`.
    mutating func grow(to newCapacity: Int, keepingRows rows: Int) throws {
        guard newCapacity > capacity else { return }
        keys = try Self.grown(keys, descriptor: keyDescriptor, shape: keyShape, rows: newCapacity, keeping: rows)
        values = try Self.grown(values, descriptor: valueDescriptor, shape: valueShape, rows: newCapacity, keeping: rows)
        capacity = newCapacity
    }

    private static func grown(
        _ old: NDArray, descriptor: NDArrayDescriptor, shape: CoreAICacheShape, rows: Int, keeping kept: Int
    ) throws -> NDArray {
        var new = NDArray(descriptor: descriptor.resolvingDynamicDimensions(shape.resolved(rows: rows)))
        // The rows are copied as bit patterns of the element's width: no conversion, any float type.
        switch old.scalarType {
        case .float16, .bfloat16: copyRows(UInt16.self, kept, shape: shape, from: old, to: &new)
        case .float32: copyRows(UInt32.self, kept, shape: shape, from: old, to: &new)
        default: throw CoreAILanguageModelError.unsupportedScalarType("cache \(old.scalarType)")
        }
        return new
    }

    private static func copyRows<Element: BitwiseCopyable>(
        _: Element.Type, _ rows: Int, shape: CoreAICacheShape, from source: NDArray, to destination: inout NDArray
    ) {
        source.view(as: Element.self).withUnsafePointer { from, _, sourceStrides in
            let target = destination.mutableView(as: Element.self)
            target.withUnsafeMutablePointer { to, _, destinationStrides in
                shape.forEachElement(
                    inFirstRows: rows, sourceStrides: integerArray(sourceStrides),
                    destinationStrides: integerArray(destinationStrides)
                ) { to[$1] = from[$0] }
            }
        }
    }
}

/// A span of sizes or strides (as NDArray views report them) as an array.
@available(macOS 27.0, iOS 27.0, tvOS 27.0, watchOS 27.0, visionOS 27.0, *)
func integerArray(_ span: Span<Int>) -> [Int] {
    var result: [Int] = []
    for index in 0..<span.count {
        result.append(span[index])
    }
    return result
}
#endif
