import Foundation

/// Finds the model in a folder written by the mlx_slm exporter, which names every file after the
/// model: `Name.mlpackage` (or an Xcode-compiled `Name.mlmodelc`) or `Name.aimodel`, beside its
/// manifest `Name.json` and the tokenizer files. Apps bundle the folder and need not know the name.
public struct ExportedModelFolder: Sendable, Equatable {
    /// Which runtime's program to look for.
    public enum Format: Sendable {
        /// Core ML: `.mlmodelc`, preferred to `.mlpackage` of the same name since it needs no compiling.
        case coreML
        /// Core AI: `.aimodel`.
        case coreAI

        var extensions: [String] {
            switch self {
            case .coreML: ["mlmodelc", "mlpackage"]
            case .coreAI: ["aimodel"]
            }
        }
    }

    public enum LookupError: Error, Equatable {
        /// No program with a `Name.json` manifest beside it.
        case noModel(directory: String)
        /// Several programs with manifests; pass the one you mean to the model's `load`.
        case ambiguous(names: [String])
    }

    /// The folder (also where ``Tokenizer/init(directory:)`` finds the tokenizer).
    public let directory: URL
    /// The model's name: the file names' common stem.
    public let name: String
    /// The program to load.
    public let modelURL: URL
    /// `Name.json`.
    public let manifestURL: URL

    /// Looks in `directory` for exactly one program of `format` that has its `Name.json` beside it.
    public init(directory: URL, format: Format = .coreML) throws {
        let entries = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        let names = Set(entries.map { ($0 as NSString).deletingPathExtension })
            .filter { name in
                entries.contains("\(name).json")
                    && format.extensions.contains { entries.contains("\(name).\($0)") }
            }
            .sorted()
        guard let name = names.first else { throw LookupError.noModel(directory: directory.path) }
        guard names.count == 1 else { throw LookupError.ambiguous(names: names) }
        let fileExtension = format.extensions.first { entries.contains("\(name).\($0)") }!
        self.directory = directory
        self.name = name
        modelURL = directory.appendingPathComponent("\(name).\(fileExtension)")
        manifestURL = directory.appendingPathComponent("\(name).json")
    }
}
