import Foundation
import XCTest
@testable import SLMKit

/// The platform-independent parts of the Core ML runner: manifest, mask, half floats, logits layout.
final class CoreMLContractTests: XCTestCase {
    func testManifestDecodesLeniently() throws {
        let manifest = try ModelManifest(data: Data("""
        {"bos_token_id": 1, "eos_token_id": [2, 0], "pad_token_id": "oops", "chat_template": "{{x}}",
         "max_context": 2048, "mlx_slm_version": "0.1.0", "layers": [{"name": "model.layers.0", "bits": 4}],
         "future_field": true}
        """.utf8))
        XCTAssertEqual(manifest.bosTokenID, 1)
        XCTAssertEqual(manifest.eosTokenIDs, [2, 0])
        XCTAssertNil(manifest.padTokenID, "wrong types read as missing")
        XCTAssertEqual(manifest.chatTemplate, "{{x}}")
        XCTAssertEqual(manifest.maxContext, 2048)
        XCTAssertEqual(manifest.mlxSLMVersion, "0.1.0")
        XCTAssertEqual(manifest.layers?.arrayValue?.first?["bits"]?.intValue, 4)
        XCTAssertEqual(manifest.raw["future_field"], .bool(true))

        let minimal = try ModelManifest(data: Data(#"{"eos_token_id": 2}"#.utf8))
        XCTAssertEqual(minimal.eosTokenIDs, [2])
        XCTAssertNil(minimal.bosTokenID)
        XCTAssertNil(minimal.maxContext)
    }

    func testManifestIsFoundNextToTheModel() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slmkit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let model = directory.appendingPathComponent("SmolLM2.mlpackage")
        XCTAssertNil(try ModelManifest.load(near: model))
        try Data(#"{"max_context": 512}"#.utf8).write(to: directory.appendingPathComponent("manifest.json"))
        XCTAssertEqual(try ModelManifest.load(near: model)?.maxContext, 512)
        try Data(#"{"max_context": 1024}"#.utf8).write(to: directory.appendingPathComponent("SmolLM2.json"))
        XCTAssertEqual(try ModelManifest.load(near: model)?.maxContext, 1024, "<name>.json takes precedence")
    }

    func testCausalMaskForPrefillAndDecode() {
        let o = CausalMask.allowedBits
        let x = CausalMask.blockedBits
        // the leading column is the one swift-transformers adds (the program ignores it)
        XCTAssertEqual(CausalMask.width(queryLength: 3, pastLength: 0), 4)
        XCTAssertEqual(CausalMask.float16Bits(queryLength: 3, pastLength: 0), [o, o, x, x,
                                                                                o, o, o, x,
                                                                                o, o, o, o])
        XCTAssertEqual(CausalMask.float16Bits(queryLength: 1, pastLength: 3), [o, o, o, o, o])
        XCTAssertEqual(CausalMask.float16Bits(queryLength: 2, pastLength: 1), [o, o, o, x,
                                                                                o, o, o, o])
        XCTAssertEqual(HalfPrecision.float(fromBits: x), -.infinity)
    }

    func testHalfPrecisionKnownValues() {
        XCTAssertEqual(HalfPrecision.float(fromBits: 0x3C00), 1)
        XCTAssertEqual(HalfPrecision.float(fromBits: 0xC000), -2)
        XCTAssertEqual(HalfPrecision.float(fromBits: 0x7BFF), 65504)
        XCTAssertEqual(HalfPrecision.float(fromBits: 0x0001), 0x1p-24)
        XCTAssertEqual(HalfPrecision.float(fromBits: 0x8000).sign, .minus)
        XCTAssertEqual(HalfPrecision.float(fromBits: 0x7C00), .infinity)
        XCTAssertTrue(HalfPrecision.float(fromBits: 0x7E00).isNaN)
    }

    #if !(os(macOS) && arch(x86_64))
    func testHalfPrecisionMatchesFloat16ForEveryBitPattern() {
        for bits in UInt16.min...UInt16.max {
            let expected = Float(Float16(bitPattern: bits))
            let actual = HalfPrecision.float(fromBits: bits)
            if expected.isNaN {
                XCTAssertTrue(actual.isNaN, "bits \(bits)")
            } else if actual.bitPattern != expected.bitPattern {
                XCTFail("bits \(bits): \(actual) != \(expected)")
            }
        }
    }
    #endif

    func testLogitsLayoutReadsTheLastPosition() throws {
        let storage: [Float] = Array(0..<12).map(Float.init)
        func read(_ shape: [Int], _ strides: [Int]) throws -> [Float] {
            try LogitsLayout.lastPosition(shape: shape, strides: strides, elementCount: storage.count) { storage[$0] }
        }
        XCTAssertEqual(try read([1, 3, 4], [12, 4, 1]), [8, 9, 10, 11])
        XCTAssertEqual(try read([1, 2, 3], [12, 6, 2]), [6, 8, 10], "strided vocabulary axis")
        XCTAssertEqual(try read([2, 6], [6, 1]), [6, 7, 8, 9, 10, 11], "rank 2")
    }

    func testLogitsLayoutRejectsBadShapes() {
        func read(_ shape: [Int], _ strides: [Int], elementCount: Int) throws -> [Float] {
            try LogitsLayout.lastPosition(shape: shape, strides: strides, elementCount: elementCount) { _ in 0 }
        }
        XCTAssertThrowsError(try read([2, 3, 4], [12, 4, 1], elementCount: 24), "batch of 2")
        XCTAssertThrowsError(try read([], [], elementCount: 0), "no axes")
        XCTAssertThrowsError(try read([1, 3, 4], [12, 4, 1], elementCount: 8), "storage too small")
    }
}
