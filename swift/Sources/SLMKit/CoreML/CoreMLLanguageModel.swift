#if canImport(CoreML)
import CoreML
import Foundation

/// Errors from ``CoreMLLanguageModel``.
public enum CoreMLLanguageModelError: Error, Equatable {
    /// The model lacks an input, state or output of the swift-transformers contract.
    case missingFeature(String)
    case emptyInput
    case contextOverflow(requested: Int, limit: Int)
    case unsupportedLogitsType
}

/// Runs a stateful Core ML export with the swift-transformers contract:
/// inputs `inputIds` (int32, `(1, N)`, ranged N) and `causalMask`
/// (float16, `(1, 1, N, past + N + 1)`: see ``CausalMask``), states `keyCache` / `valueCache`,
/// output `logits`.
///
/// The KV cache lives in an `MLState` that persists across ``logits(for:)``
/// calls until ``reset()``. Stateful prediction needs iOS 18 / macOS 15.
@available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, visionOS 2.0, *)
public actor CoreMLLanguageModel: CausalLanguageModel {
    private enum Feature {
        static let inputIDs = "inputIds"
        static let causalMask = "causalMask"
        static let keyCache = "keyCache"
        static let valueCache = "valueCache"
        static let logits = "logits"
    }

    /// The manifest found next to the model, if any.
    public nonisolated let manifest: ModelManifest?
    /// `max_context` from the manifest.
    public nonisolated let maximumContextLength: Int?

    private let model: MLModel
    private var state: MLState
    private var processedTokenCount = 0

    /// Wraps a loaded model after checking it follows the contract.
    public init(model: MLModel, manifest: ModelManifest? = nil) throws {
        let description = model.modelDescription
        for name in [Feature.inputIDs, Feature.causalMask] where description.inputDescriptionsByName[name] == nil {
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
        maximumContextLength = manifest?.maxContext
        state = model.makeState()
    }

    /// Loads an `.mlpackage` (compiling it first) or an `.mlmodelc`, and the manifest next to it.
    /// - Parameter manifestURL: an explicit manifest; by default `<name>.json` or `manifest.json` beside the model.
    public static func load(
        contentsOf url: URL, manifestURL: URL? = nil, computeUnits: MLComputeUnits = .cpuAndNeuralEngine
    ) async throws -> CoreMLLanguageModel {
        let compiledURL = url.pathExtension == "mlmodelc" ? url : try await MLModel.compileModel(at: url)
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let model = try await MLModel.load(contentsOf: compiledURL, configuration: configuration)
        let manifest = try manifestURL.map { try ModelManifest(data: Data(contentsOf: $0)) }
            ?? ModelManifest.load(near: url)
        return try CoreMLLanguageModel(model: model, manifest: manifest)
    }

    public func reset() {
        state = model.makeState()
        processedTokenCount = 0
    }

    public func logits(for tokens: [Int32]) throws -> [Float] {
        guard !tokens.isEmpty else { throw CoreMLLanguageModelError.emptyInput }
        let totalLength = processedTokenCount + tokens.count
        if let limit = maximumContextLength, totalLength > limit {
            throw CoreMLLanguageModelError.contextOverflow(requested: totalLength, limit: limit)
        }
        let inputs = try MLDictionaryFeatureProvider(dictionary: [
            Feature.inputIDs: MLFeatureValue(multiArray: try Self.inputIDs(tokens)),
            Feature.causalMask: MLFeatureValue(
                multiArray: try Self.causalMask(queryLength: tokens.count, pastLength: processedTokenCount)),
        ])
        let outputs = try model.prediction(from: inputs, using: state)
        guard let logits = outputs.featureValue(for: Feature.logits)?.multiArrayValue else {
            throw CoreMLLanguageModelError.missingFeature(Feature.logits)
        }
        processedTokenCount = totalLength
        return try Self.lastPositionLogits(of: logits)
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
