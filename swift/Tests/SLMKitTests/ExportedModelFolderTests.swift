import Foundation
import XCTest
import SLMKit

/// Finding `Name.mlpackage` + `Name.json` the way the exporter names them.
final class ExportedModelFolderTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(at: directory)
    }

    private func create(_ names: String...) throws {
        for name in names {
            let url = directory.appendingPathComponent(name)
            if name.hasSuffix(".json") {
                try Data("{}".utf8).write(to: url)
            } else {
                try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
            }
        }
    }

    func testFindsTheExportersNames() throws {
        try create("Smol.mlpackage", "Smol.json", "tokenizer.json", "tokenizer_config.json")
        let folder = try ExportedModelFolder(directory: directory)
        XCTAssertEqual(folder.name, "Smol")
        XCTAssertEqual(folder.modelURL.lastPathComponent, "Smol.mlpackage")
        XCTAssertEqual(folder.manifestURL.lastPathComponent, "Smol.json")
    }

    func testPrefersTheCompiledModel() throws {
        try create("Smol.mlpackage", "Smol.mlmodelc", "Smol.json")
        XCTAssertEqual(try ExportedModelFolder(directory: directory).modelURL.lastPathComponent, "Smol.mlmodelc")
    }

    func testCoreAIFormat() throws {
        try create("Smol.mlpackage", "Smol.json", "Tiny.aimodel", "Tiny.json")
        let folder = try ExportedModelFolder(directory: directory, format: .coreAI)
        XCTAssertEqual(folder.modelURL.lastPathComponent, "Tiny.aimodel")
    }

    func testAProgramWithoutManifestIsNotAModel() throws {
        try create("Smol.mlpackage", "tokenizer.json")
        XCTAssertThrowsError(try ExportedModelFolder(directory: directory)) { error in
            XCTAssertEqual(error as? ExportedModelFolder.LookupError, .noModel(directory: directory.path))
        }
    }

    func testTwoModelsAreAmbiguous() throws {
        try create("A.mlpackage", "A.json", "B.mlmodelc", "B.json")
        XCTAssertThrowsError(try ExportedModelFolder(directory: directory)) { error in
            XCTAssertEqual(error as? ExportedModelFolder.LookupError, .ambiguous(names: ["A", "B"]))
        }
    }
}
