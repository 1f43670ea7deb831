import Foundation
import XCTest
@testable import SLMKit

/// Compares SLMKit's tokenizer with Hugging Face `tokenizers` on golden data.
final class TokenizerParityTests: XCTestCase {
    private struct DecodeCase: Decodable {
        let ids: [Int32]
        let decoded: String
        let decoded_skip_special: String
    }

    /// A tokenizer variant: a JSON merge patch over SmolLM2's `tokenizer.json` and its goldens.
    private struct Variant {
        let name: String
        let patch: Any
        let cases: [EncodeCase]
    }

    func testSmolLM2EncodeAndDecodeMatchGolden() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        let cases = try Fixtures.decode([EncodeCase].self, from: "tokenizer_golden.json")
        XCTAssertGreaterThanOrEqual(cases.count, 300)
        assertParity(tokenizer, cases, label: "SmolLM2")
    }

    func testSmolLM2DecodeMatchesGoldenForArbitraryIDs() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        let cases = try Fixtures.decode([DecodeCase].self, from: "decode_golden.json")
        XCTAssertFalse(cases.isEmpty)
        for item in cases {
            XCTAssertEqual(Array(tokenizer.decode(item.ids).utf8), Array(item.decoded.utf8), "ids \(item.ids)")
            XCTAssertEqual(
                Array(tokenizer.decode(item.ids, skipSpecialTokens: true).utf8),
                Array(item.decoded_skip_special.utf8), "ids \(item.ids) skipping special tokens")
        }
    }

    func testStreamingDecodeOfArbitraryIDsMatchesGolden() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        let cases = try Fixtures.decode([DecodeCase].self, from: "decode_golden.json")
        for item in cases {
            var detokenizer = tokenizer.makeStreamingDetokenizer(skipSpecialTokens: false)
            let streamed = item.ids.map { detokenizer.append($0) }.joined() + detokenizer.finish()
            XCTAssertEqual(Array(streamed.utf8), Array(item.decoded.utf8), "ids \(item.ids)")
        }
    }

    func testPreTokenizerVariantsMatchGolden() throws {
        let variants = try loadVariants()
        XCTAssertEqual(variants.count, 5)
        for variant in variants {
            let tokenizer = try Tokenizer(tokenizerData: JSONMergePatch.patchedSmolLM2Tokenizer(variant.patch))
            assertParity(tokenizer, variant.cases, label: variant.name)
        }
    }

    /// Merges written as legacy `"a b"` strings (which `make_golden.py` checks `tokenizers` reads
    /// the same as pairs) give SmolLM2's golden ids.
    func testLegacyStringMergesMatchGolden() throws {
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tokenizer.json")))
        let model = try XCTUnwrap((base as? [String: Any])?["model"] as? [String: Any])
        let pairs = try XCTUnwrap(model["merges"] as? [[String]])
        let patch = ["model": ["merges": pairs.map { $0.joined(separator: " ") }]]
        let tokenizer = try Tokenizer(tokenizerData: JSONMergePatch.patchedSmolLM2Tokenizer(patch))
        let cases = try Fixtures.decode([EncodeCase].self, from: "tokenizer_golden.json")
        assertParity(tokenizer, cases, label: "SmolLM2 with string merges")
    }

    private func loadVariants() throws -> [Variant] {
        let data = try Data(contentsOf: Fixtures.url("tokenizer_variants_golden.json"))
        let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        return try rows.map { row in
            let cases = try JSONSerialization.data(withJSONObject: try XCTUnwrap(row["cases"]))
            return Variant(
                name: try XCTUnwrap(row["name"] as? String), patch: try XCTUnwrap(row["patch"]),
                cases: try JSONDecoder().decode([EncodeCase].self, from: cases))
        }
    }

    private func assertParity(_ tokenizer: Tokenizer, _ cases: [EncodeCase], label: String,
                              file: StaticString = #filePath, line: UInt = #line) {
        for item in cases {
            let ids = tokenizer.encode(item.text)
            XCTAssertEqual(ids, item.ids, "\(label) encode \(item.text.debugDescription)", file: file, line: line)
            XCTAssertEqual(Array(tokenizer.decode(item.ids).utf8), Array(item.decoded.utf8),
                           "\(label) decode \(item.text.debugDescription)", file: file, line: line)
        }
    }
}
