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

    private struct Variant: Decodable {
        let name: String
        let tokenizer: String
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
        let variants = try Fixtures.decode([Variant].self, from: "tokenizer_variants_golden.json")
        XCTAssertEqual(variants.count, 5)
        for variant in variants {
            let tokenizer = try Tokenizer(tokenizerData: Data(contentsOf: Fixtures.url(variant.tokenizer)))
            assertParity(tokenizer, variant.cases, label: variant.name)
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
