/// How an exported Core ML program takes its tokens, read from the manifest (`input_shapes`,
/// `query_lengths`): the two shapes `mlx-slm export coreml --shapes` writes.
public enum CoreMLInputShapes: Sendable, Equatable {
    /// `inputIds` `[1, 1...max_context]` with `causalMask` (swift-transformers' contract): any length in one call.
    case ranged
    /// `inputIds` `[1, T]` for `T` in `queryLengths` (sorted, `1` among them) with `position` `[1]`.
    case enumerated(queryLengths: [Int])

    /// The manifest's shapes; a manifest without them (older exports) is ranged. Enumerated lengths
    /// without `1` cannot feed every prompt, so they read as `nil`.
    init?(manifest: ModelManifest) {
        switch manifest.raw["input_shapes"]?.stringValue {
        case nil, "ranged":
            self = .ranged
        case "enumerated":
            let lengths = (manifest.raw["query_lengths"]?.arrayValue ?? []).compactMap(\.intValue).sorted()
            guard lengths.contains(1), lengths.allSatisfy({ $0 >= 1 }) else { return nil }
            self = .enumerated(queryLengths: lengths)
        default:
            return nil
        }
    }

    /// The calls that append `count` tokens: one for ranged shapes; for enumerated ones, the longest
    /// query length that fits, again and again (as the exporter's tests feed the package).
    func chunkLengths(count: Int) -> [Int] {
        guard case .enumerated(let lengths) = self else { return count > 0 ? [count] : [] }
        var chunks: [Int] = []
        var remaining = count
        while remaining > 0, let length = lengths.last(where: { $0 <= remaining }) {
            chunks.append(length)
            remaining -= length
        }
        return chunks
    }

    /// The compute units these shapes suit when the manifest names none: the Neural Engine compiles only
    /// fixed or enumerated shapes.
    var suitedComputeUnits: ComputeUnitChoice {
        self == .ranged ? .cpuAndGPU : .cpuAndNeuralEngine
    }
}
