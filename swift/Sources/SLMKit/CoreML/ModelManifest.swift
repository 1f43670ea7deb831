import Foundation

/// The JSON manifest the mlx_slm exporter writes next to a Core ML package or Core AI program.
///
/// Decoding is lenient: every field is optional, wrong types read as missing,
/// `eos_token_id` may be a number or a list, and unknown keys stay in ``raw``.
public struct ModelManifest: Sendable, Equatable {
    public var bosTokenID: Int32?
    public var eosTokenIDs: [Int32]
    public var padTokenID: Int32?
    public var chatTemplate: String?
    public var maxContext: Int?
    public var mlxSLMVersion: String?
    /// Per-layer compression information, as exported.
    public var layers: JSONValue?
    /// The whole manifest.
    public var raw: [String: JSONValue]

    public init(data: Data) throws {
        raw = try JSONDecoder().decode([String: JSONValue].self, from: data)
        bosTokenID = raw["bos_token_id"]?.intValue.flatMap(Int32.init(exactly:))
        padTokenID = raw["pad_token_id"]?.intValue.flatMap(Int32.init(exactly:))
        let eos = raw["eos_token_id"]
        let eosValues = eos?.arrayValue ?? eos.map { [$0] } ?? []
        eosTokenIDs = eosValues.compactMap { $0.intValue.flatMap(Int32.init(exactly:)) }
        chatTemplate = raw["chat_template"]?.stringValue
        maxContext = raw["max_context"]?.intValue
        mlxSLMVersion = raw["mlx_slm_version"]?.stringValue
        layers = raw["layers"]
    }

    /// File names looked for next to a model, in order: `<model name>.json`, then `manifest.json`.
    public static func candidateURLs(near modelURL: URL) -> [URL] {
        let directory = modelURL.deletingLastPathComponent()
        return [
            modelURL.deletingPathExtension().appendingPathExtension("json"),
            directory.appendingPathComponent("manifest.json"),
        ]
    }

    /// Loads the first manifest found next to `modelURL`, or `nil` if there is none.
    public static func load(near modelURL: URL) throws -> ModelManifest? {
        let fileManager = FileManager.default
        guard let url = candidateURLs(near: modelURL).first(where: { fileManager.fileExists(atPath: $0.path) }) else {
            return nil
        }
        return try ModelManifest(data: Data(contentsOf: url))
    }
}
