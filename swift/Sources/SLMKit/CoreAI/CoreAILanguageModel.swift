#if canImport(CoreAI)
import CoreAI
import Foundation

/// Runs a Core AI program exported by mlx_slm (`Name.aimodel`, with `Name.json` beside it) through
/// the contract of Apple's coreai-models LLM runner: inputs `input_ids` int32 `[1, T]` and
/// `position_ids` int32 `[1, P + T]`, states `keyCache` / `valueCache`
/// `[layers, 1, kv_heads, S, head_dim]` written in place, output `logits` float16 `[1, T, vocabulary]`.
///
/// What to send each call is planned by ``CoreAIRequest`` (tested on every platform); this type
/// only moves it in and out of Core AI. The caches persist across ``logits(for:)`` calls until
/// ``reset()``, start at 256 rows and double up to the manifest's `max_context` when a call needs
/// more. Calls run one at a time, in the order made. Core AI needs iOS 27 / macOS 27.
@available(macOS 27.0, iOS 27.0, tvOS 27.0, watchOS 27.0, visionOS 27.0, *)
public actor CoreAILanguageModel: CausalLanguageModel {
    private enum Feature {
        static let function = "main"
        static let inputIDs = "input_ids"
        static let positionIDs = "position_ids"
        static let keyCache = "keyCache"
        static let valueCache = "valueCache"
        static let logits = "logits"
    }

    /// The manifest the model was loaded with.
    public nonisolated let manifest: ModelManifest
    /// `max_context` from the manifest.
    public nonisolated let maximumContextLength: Int?

    /// Kept alive for as long as its function is used.
    private let model: AIModel
    private let function: InferenceFunction
    private let inputIDsDescriptor: NDArrayDescriptor
    private let positionIDsDescriptor: NDArrayDescriptor
    private let sizing: CoreAICacheSizing
    /// `nil` only while a call has moved it out (see ``logits(for:)``).
    private var idleCache: CoreAIKVCache?
    private var processedTokenCount = 0
    private let calls = CallQueue()

    /// Wraps a loaded model after checking it follows the contract.
    /// - Parameter manifest: must carry `max_context`, which sizes the caches and bounds the context.
    public init(model: AIModel, manifest: ModelManifest) throws {
        sizing = try CoreAICacheSizing(manifest: manifest)
        guard let descriptor = model.functionDescriptor(for: Feature.function),
              let function = try model.loadFunction(named: Feature.function) else {
            throw CoreAILanguageModelError.missingFeature(Feature.function)
        }
        guard case .ndArray(let inputIDs) = descriptor.inputDescriptor(of: Feature.inputIDs) else {
            throw CoreAILanguageModelError.missingFeature(Feature.inputIDs)
        }
        guard case .ndArray(let positionIDs) = descriptor.inputDescriptor(of: Feature.positionIDs) else {
            throw CoreAILanguageModelError.missingFeature(Feature.positionIDs)
        }
        guard case .ndArray(let keys) = descriptor.stateDescriptor(of: Feature.keyCache) else {
            throw CoreAILanguageModelError.missingFeature(Feature.keyCache)
        }
        guard case .ndArray(let values) = descriptor.stateDescriptor(of: Feature.valueCache) else {
            throw CoreAILanguageModelError.missingFeature(Feature.valueCache)
        }
        guard case .ndArray(let logits) = descriptor.outputDescriptor(of: Feature.logits) else {
            throw CoreAILanguageModelError.missingFeature(Feature.logits)
        }
        guard logits.scalarType == .float16 else {
            throw CoreAILanguageModelError.unsupportedScalarType("logits \(logits.scalarType), expected float16")
        }
        idleCache = try CoreAIKVCache(
            keyDescriptor: keys, valueDescriptor: values, names: (Feature.keyCache, Feature.valueCache),
            capacity: sizing.initialCapacity)
        self.model = model
        self.function = function
        self.manifest = manifest
        inputIDsDescriptor = inputIDs
        positionIDsDescriptor = positionIDs
        maximumContextLength = sizing.maximumContextLength
    }

    /// Dynamic shapes on the GPU: T and P change every call (Apple's runner specializes
    /// dynamic-shape programs the same way).
    public static var defaultSpecializationOptions: SpecializationOptions {
        var options = SpecializationOptions(preferredComputeUnitKind: .gpu)
        options.expectFrequentReshapes = true
        return options
    }

    /// Loads (and specializes for this device) a `.aimodel`, and the manifest next to it.
    /// - Parameter manifestURL: an explicit manifest; by default `<name>.json` or `manifest.json` beside the model.
    public static func load(
        contentsOf url: URL, manifestURL: URL? = nil,
        options: SpecializationOptions = CoreAILanguageModel.defaultSpecializationOptions
    ) async throws -> CoreAILanguageModel {
        let manifest = try manifestURL.map { try ModelManifest(data: Data(contentsOf: $0)) }
            ?? ModelManifest.load(near: url)
        guard let manifest else { throw CoreAILanguageModelError.missingMaximumContext }
        let model = try await AIModel(contentsOf: url, options: options)
        return try CoreAILanguageModel(model: model, manifest: manifest)
    }

    /// Starts a new sequence (after any call still running). The cache rows stay allocated.
    public func reset() async {
        await calls.run { processedTokenCount = 0 }
    }

    public func logits(for tokens: [Int32]) async throws -> [Float] {
        try await calls.run {
            // Moved out for the call: an actor property cannot stay borrowed across the await, and a
            // second reference would make the in-place write copy the (copy-on-write) arrays.
            guard var cache = idleCache else { preconditionFailure("calls overlap despite the CallQueue") }
            idleCache = nil
            defer { idleCache = cache }
            let request = try CoreAIRequest(
                appending: tokens, pastLength: processedTokenCount, cacheCapacity: cache.capacity, sizing: sizing)
            if request.growsCache {
                try cache.grow(to: request.cacheCapacity, keepingRows: request.pastLength)
            }
            let logits = try await run(request, keys: &cache.keys, values: &cache.values)
            processedTokenCount = request.totalLength
            return logits
        }
    }

    /// One forward pass: the program writes rows `P ..< P + T` of the caches and returns the logits.
    /// (The states come as two parameters: each stays borrowed by `states` until the call returns.)
    private func run(_ request: CoreAIRequest, keys: inout NDArray, values: inout NDArray) async throws -> [Float] {
        let inputs = [
            Feature.inputIDs: NDArray.int32Row(request.inputIDs, descriptor: inputIDsDescriptor),
            Feature.positionIDs: NDArray.int32Row(request.positionIDs, descriptor: positionIDsDescriptor),
        ]
        var states = InferenceFunction.MutableViews()
        states.insert(&keys, for: Feature.keyCache)
        states.insert(&values, for: Feature.valueCache)
        var outputs = try await function.run(
            inputs: inputs, states: consume states, outputViews: InferenceFunction.MutableViews())
        guard let logits = outputs.remove(Feature.logits)?.ndArray else {
            throw CoreAILanguageModelError.missingFeature(Feature.logits)
        }
        return try logits.lastRowOfFloat16Logits(tokenCount: request.inputIDs.count)
    }
}
#endif
