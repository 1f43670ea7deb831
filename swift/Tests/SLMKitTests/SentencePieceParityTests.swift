import Foundation
import XCTest
@testable import SLMKit

/// Compares SLMKit with Hugging Face `tokenizers` on SentencePiece-style tokenizers (`▁` for spaces,
/// byte fallback): a cut-down real Gemma 3 tokenizer and a trained Mistral v0.3-style one with its
/// Metaspace variants, all written by `make_golden.py` (see `sentencepiece_golden.py` there).
final class SentencePieceParityTests: XCTestCase {
    private struct DecodeCase: Decodable {
        let ids: [Int32]
        let decoded: String
        let decoded_skip_special: String
    }

    /// One tokenizer, `Fixtures/sentencepiece/<name>.json`, and its goldens.
    private struct Golden {
        let name: String
        let tokenizer: Tokenizer
        let cases: [EncodeCase]
        let decodeCases: [DecodeCase]
    }

    func testEveryTokenizerIsCovered() throws {
        XCTAssertEqual(try loadGoldens().map(\.name),
                       ["gemma3", "mistral", "mistral_metaspace_first", "mistral_metaspace_always_split"])
    }

    func testEncodeAndDecodeMatchGolden() throws {
        for golden in try loadGoldens() {
            XCTAssertGreaterThanOrEqual(golden.cases.count, 300, golden.name)
            for item in golden.cases {
                XCTAssertEqual(golden.tokenizer.encode(item.text), item.ids,
                               "\(golden.name) encode \(item.text.debugDescription)")
                XCTAssertEqual(Array(golden.tokenizer.decode(item.ids).utf8), Array(item.decoded.utf8),
                               "\(golden.name) decode \(item.text.debugDescription)")
            }
        }
    }

    /// Random ids with runs of byte tokens, many of them invalid UTF-8, and added tokens.
    func testDecodeOfArbitraryIDsMatchesGolden() throws {
        for golden in try loadGoldens() {
            XCTAssertFalse(golden.decodeCases.isEmpty)
            for item in golden.decodeCases {
                XCTAssertEqual(Array(golden.tokenizer.decode(item.ids).utf8), Array(item.decoded.utf8),
                               "\(golden.name) ids \(item.ids)")
                XCTAssertEqual(Array(golden.tokenizer.decode(item.ids, skipSpecialTokens: true).utf8),
                               Array(item.decoded_skip_special.utf8), "\(golden.name) ids \(item.ids) skipping special")
            }
        }
    }

    /// Token-by-token decoding concatenates to the reference's decode of the whole sequence.
    func testStreamingDecodeMatchesGolden() throws {
        for golden in try loadGoldens() {
            let sequences = golden.decodeCases.map { ($0.ids, $0.decoded) } + golden.cases.map { ($0.ids, $0.decoded) }
            for (ids, decoded) in sequences {
                var detokenizer = golden.tokenizer.makeStreamingDetokenizer(skipSpecialTokens: false)
                let streamed = ids.map { detokenizer.append($0) }.joined() + detokenizer.finish()
                XCTAssertEqual(Array(streamed.utf8), Array(decoded.utf8), "\(golden.name) ids \(ids)")
            }
        }
    }

    private func loadGoldens() throws -> [Golden] {
        let data = try Data(contentsOf: Fixtures.url("sentencepiece_golden.json"))
        let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        return try rows.map { row in
            let name = try XCTUnwrap(row["name"] as? String)
            return Golden(
                name: name,
                tokenizer: try Tokenizer(tokenizerData: Data(contentsOf: Fixtures.url("sentencepiece/\(name).json"))),
                cases: try decodeRows([EncodeCase].self, row["cases"]),
                decodeCases: try decodeRows([DecodeCase].self, row["decode_cases"]))
        }
    }

    private func decodeRows<Value: Decodable>(_ type: Value.Type, _ rows: Any?) throws -> Value {
        try JSONDecoder().decode(type, from: JSONSerialization.data(withJSONObject: try XCTUnwrap(rows)))
    }
}
