#if canImport(CoreML)
import CoreML
import Foundation

/// Errors from ``CoreMLLanguageModel``.
public enum CoreMLLanguageModelError: Error, Equatable {
    /// The model lacks an input, state or output of the contract its manifest names.
    case missingFeature(String)
    case emptyInput
    case contextOverflow(requested: Int, limit: Int)
    case unsupportedLogitsType
    /// The manifest's `input_shapes` / `query_lengths` are not ones this runner knows how to feed.
    case unsupportedInputShapes
}

/// Runs a stateful Core ML export. Ranged shapes (the default export) follow the swift-transformers
/// contract: inputs `inputIds` (int32, `(1, N)`, ranged N) and `causalMask` (float16,
/// `(1, 1, N, past + N + 1)`: see ``CausalMask``). Enumerated shapes (`--shapes enumerated`, for the
/// Neural Engine) take `inputIds` `(1, T)` for the manifest's `query_lengths` and `position` `(1)`, each
/// prompt fed in chunks of those lengths (``CoreMLInputShapes``). Both: states `keyCache` / `valueCache`,
/// output `logits` (`(1, N, vocabulary)`, or `(1, 1, vocabulary)` with `--logits last`).
///
/// The KV cache lives in an `MLState` that persists across ``logits(for:)`` calls until ``reset()``.
/// Predictions run on a dispatch queue of their own (``PredictionQueue``), so the actor awaits instead of
/// holding a concurrency thread; calls run one at a time, in the order made (``CallQueue``). Stateful
/// prediction needs iOS 18 / macOS 15.
@available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, visionOS 2.0, *)
public actor CoreMLLanguageModel: CausalLanguageModel {
    private enum Feature {
        static let inputIDs = "inputIds"
        static let causalMask = "causalMask"
        static let position = "position"
        static let keyCache = "keyCache"
        static let valueCache = "valueCache"
        static let logits = "logits"
    }

    /// The manifest found next to the model, if any.
    public nonisolated let manifest: ModelManifest?
    /// `max_context` from the manifest.
    public nonisolated let maximumContextLength: Int?
    /// How the program takes tokens (the manifest's; ranged without one).
    public nonisolated let inputShapes: CoreMLInputShapes

    private let model: MLModel
    private var state: MLState
    private var processedTokenCount = 0
    private let calls = CallQueue()
    private let predictions = PredictionQueue(label: "SLMKit.CoreMLLanguageModel.predictions")

    /// Wraps a loaded model after checking it follows the contract its manifest names.
    public init(model: MLModel, manifest: ModelManifest? = nil) throws {
        var shapes = CoreMLInputShapes.ranged
        if let manifest {
            guard let declared = CoreMLInputShapes(manifest: manifest) else {
                throw CoreMLLanguageModelError.unsupportedInputShapes
            }
            shapes = declared
        }
        let description = model.modelDescription
        let context = shapes == .ranged ? Feature.causalMask : Feature.position
        for name in [Feature.inputIDs, context] where description.inputDescriptionsByName[name] == nil {
            throw CoreMLLanguageModelError.missingFeature(name)
        }
        for name in [Feature.keyCache, Feature.valueCache] where description.stateDescriptionsByName[name] == nil {
            throw CoreMLLanguageModelError.missingFeature(name)
        }
        if description.outputDescriptionsByName[Feature.logits] == nil {
            throw CoreMLLanguageModelError.missingFeature(Feature.logits)
        }
        self.model = model
        self.manifest = manifest
        inputShapes = shapes
        maximumContextLength = manifest?.maxContext
        state = model.makeState()
    }

    /// Loads an `.mlpackage` (compiled once, then kept in `compiledModels`) or an `.mlmodelc`, and the
    /// manifest next to it.
    /// - Parameters:
    ///   - manifestURL: an explicit manifest; by default `<name>.json` or `manifest.json` beside the model.
    ///   - computeUnits: by default the manifest's `compute_units` (those its shapes suit:
    ///     ``ComputeUnitChoice/preferred(by:)``).
    ///   - compiledModels: where compiled packages are kept (default: Application Support).
    public static func load(
        contentsOf url: URL, manifestURL: URL? = nil, computeUnits: MLComputeUnits? = nil,
        compiledModels: CompiledModelCache? = nil
    ) async throws -> CoreMLLanguageModel {
        let manifest = try manifestURL.map { try ModelManifest(data: Data(contentsOf: $0)) }
            ?? ModelManifest.load(near: url)
        let compiledURL = url.pathExtension == "mlmodelc" ? url
            : try await (compiledModels ?? CompiledModelCache.applicationSupport()).compiledModel(forPackageAt: url) {
                try await MLModel.compileModel(at: $0)
            }
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits ?? ComputeUnitChoice.preferred(by: manifest).mlComputeUnits
        let model = try await MLModel.load(contentsOf: compiledURL, configuration: configuration)
        return try CoreMLLanguageModel(model: model, manifest: manifest)
    }

    /// Starts a new sequence (after any call still running).
    public func reset() async {
        await calls.run {
            state = model.makeState()
            processedTokenCount = 0
        }
    }

    public func logits(for tokens: [Int32]) async throws -> [Float] {
        try await calls.run {
            guard !tokens.isEmpty else { throw CoreMLLanguageModelError.emptyInput }
            let totalLength = processedTokenCount + tokens.count
            if let limit = maximumContextLength, totalLength > limit {
                throw CoreMLLanguageModelError.contextOverflow(requested: totalLength, limit: limit)
            }
            var start = 0
            var logits: MLMultiArray?
            for length in inputShapes.chunkLengths(count: tokens.count) {
                logits = try await predict(Array(tokens[start..<(start + length)]), pastLength: processedTokenCount)
                start += length
                processedTokenCount += length  // the cache rows written so far
            }
            guard let logits else { throw CoreMLLanguageModelError.emptyInput }
            return try Self.lastPositionLogits(of: logits)
        }
    }

    /// One forward pass over `tokens` at position `pastLength`, run on the prediction queue.
    private func predict(_ tokens: [Int32], pastLength: Int) async throws -> MLMultiArray {
        let context: (String, MLMultiArray) = inputShapes == .ranged
            ? (Feature.causalMask, try Self.causalMask(queryLength: tokens.count, pastLength: pastLength))
            : (Feature.position, try Self.position(pastLength))
        let inputs = try MLDictionaryFeatureProvider(dictionary: [
            Feature.inputIDs: MLFeatureValue(multiArray: try Self.inputIDs(tokens)),
            context.0: MLFeatureValue(multiArray: context.1),
        ])
        let job = UncheckedSendable(value: (model, state, inputs))
        let outputs = try await predictions.run {
            let (model, state, inputs) = job.value
            return UncheckedSendable(value: try model.prediction(from: inputs, using: state))
        }
        guard let logits = outputs.value.featureValue(for: Feature.logits)?.multiArrayValue else {
            throw CoreMLLanguageModelError.missingFeature(Feature.logits)
        }
        return logits
    }

    private static func position(_ pastLength: Int) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: [1], dataType: .int32)
        array.withUnsafeMutableBufferPointer(ofType: Int32.self) { buffer, _ in buffer[0] = Int32(pastLength) }
        return array
    }

    private static func inputIDs(_ tokens: [Int32]) throws -> MLMultiArray {
        let array = try MLMultiArray(shape: [1, NSNumber(value: tokens.count)], dataType: .int32)
        array.withUnsafeMutableBufferPointer(ofType: Int32.self) { buffer, strides in
            for (position, token) in tokens.enumerated() {
                buffer[position * strides[1]] = token
            }
        }
        return array
    }

    private static func causalMask(queryLength: Int, pastLength: Int) throws -> MLMultiArray {
        let width = CausalMask.width(queryLength: queryLength, pastLength: pastLength)
        let array = try MLMultiArray(
            shape: [1, 1, NSNumber(value: queryLength), NSNumber(value: width)], dataType: .float16)
        let bits = CausalMask.float16Bits(queryLength: queryLength, pastLength: pastLength)
        array.withUnsafeMutableBytes { raw, strides in
            let halves = raw.bindMemory(to: UInt16.self)
            for query in 0..<queryLength {
                for column in 0..<width {
                    halves[query * strides[2] + column * strides[3]] = bits[query * width + column]
                }
            }
        }
        return array
    }

    private static func lastPositionLogits(of logits: MLMultiArray) throws -> [Float] {
        let shape = logits.shape.map(\.intValue)
        let strides = logits.strides.map(\.intValue)
        let dataType = logits.dataType
        return try logits.withUnsafeBytes { raw in
            func read<Element>(_: Element.Type, _ convert: (Element) -> Float) throws -> [Float] {
                let size = MemoryLayout<Element>.stride
                return try LogitsLayout.lastPosition(shape: shape, strides: strides, elementCount: raw.count / size) {
                    convert(raw.load(fromByteOffset: $0 * size, as: Element.self))
                }
            }
            switch dataType {
            case .float16: return try read(UInt16.self, HalfPrecision.float(fromBits:))
            case .float32: return try read(Float.self) { $0 }
            case .double: return try read(Double.self) { Float($0) }
            default: throw CoreMLLanguageModelError.unsupportedLogitsType
            }
        }
    }
}
#endif
