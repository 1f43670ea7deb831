import Foundation
import SLMKit

/// Locates the golden files written by `swift/scripts/make_golden.py` (committed with the tests).
enum Fixtures {
    struct Missing: Error, CustomStringConvertible {
        let path: String
        var description: String {
            "Golden fixture \(path) is missing. The fixtures are committed; regenerate them with "
                + "`python swift/scripts/make_golden.py` (run from the repository root with the project's venv)."
        }
    }

    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    /// The URL of a fixture, or a `Missing` error explaining how to create it.
    static func url(_ relativePath: String) throws -> URL {
        let url = directory.appendingPathComponent(relativePath)
        guard FileManager.default.fileExists(atPath: url.path) else { throw Missing(path: url.path) }
        return url
    }

    static func decode<Value: Decodable>(_ type: Value.Type, from relativePath: String) throws -> Value {
        try JSONDecoder().decode(type, from: Data(contentsOf: url(relativePath)))
    }

    /// The real SmolLM2 tokenizer, loaded once for all tests.
    static func smolLM2Tokenizer() throws -> Tokenizer {
        try smolLM2.get()
    }

    private static let smolLM2 = Result {
        _ = try url("tokenizer.json")
        return try Tokenizer(directory: directory)
    }
}

/// One `{"text", "ids", "decoded"}` entry of the encode goldens.
struct EncodeCase: Decodable {
    let text: String
    let ids: [Int32]
    let decoded: String
}
