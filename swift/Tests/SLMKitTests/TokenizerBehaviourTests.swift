import Foundation
import XCTest
@testable import SLMKit

/// Tokenizer behaviour beyond golden parity: streaming, config, small handmade vocabularies.
final class TokenizerBehaviourTests: XCTestCase {
    func testStreamingDetokenizerEmitsOnlyCompleteText() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        let ids = tokenizer.encode("héllo 你好 👍🏽 ok 𝄞 ẞ ✓")
        var detokenizer = tokenizer.makeStreamingDetokenizer(skipSpecialTokens: false)
        var pieces = ids.map { detokenizer.append($0) }
        pieces.append(detokenizer.finish())
        XCTAssertEqual(pieces.joined(), tokenizer.decode(ids))
        XCTAssertFalse(pieces.joined().unicodeScalars.contains("\u{FFFD}"))
        XCTAssertTrue(pieces.dropLast().contains(""), "some token should end inside a multi-byte character")
    }

    func testStreamingDetokenizerFlushesAnUnfinishedCharacterAsReplacement() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        let ids = tokenizer.encode("你")
        XCTAssertGreaterThan(ids.count, 1, "expected 你 to need several byte tokens")
        var detokenizer = tokenizer.makeStreamingDetokenizer()
        XCTAssertEqual(detokenizer.append(ids[0]), "")
        XCTAssertEqual(detokenizer.finish(), "\u{FFFD}")
    }

    func testStreamingDetokenizerSkipsSpecialTokensByDefault() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        var detokenizer = tokenizer.makeStreamingDetokenizer()
        let text = tokenizer.encode("<|im_start|>Hi").map { detokenizer.append($0) }.joined()
        XCTAssertEqual(text, "Hi")
    }

    func testUTF8CompletenessHoldsBackOnlyValidUnfinishedSequences() {
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: []), 0)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0x61]), 1)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0x61, 0xE4]), 1)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0xE4, 0xBD]), 0)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0xE4, 0xBD, 0xA0]), 3)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0xF0, 0x9F, 0x98]), 0)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0xE0, 0x80]), 2, "overlong form is not held")
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0xED, 0xA0]), 2, "surrogate is not held")
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0xFF]), 1)
        XCTAssertEqual(UTF8Completeness.completePrefixLength(of: [0x80, 0x80, 0x80]), 3)
    }

    func testConfigProvidesSpecialTokenIDsAndChatTemplate() throws {
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        XCTAssertEqual(tokenizer.bosTokenID, 1)
        XCTAssertEqual(tokenizer.eosTokenID, 2)
        XCTAssertEqual(tokenizer.padTokenID, 2)
        XCTAssertEqual(tokenizer.vocabularySize, 49152)
        XCTAssertTrue(tokenizer.chatTemplate?.contains("<|im_start|>") ?? false)
        XCTAssertTrue(tokenizer.isSpecialToken(2))
        XCTAssertFalse(tokenizer.isSpecialToken(100))
        XCTAssertEqual(tokenizer.tokenID(for: "<|im_end|>"), 2)
        XCTAssertEqual(tokenizer.token(for: 2), "<|im_end|>")
    }

    func testHandmadeBPEAppliesMergesByRank() throws {
        let tokenizer = try TinyTokenizer.make(
            vocabulary: ["a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5],
            merges: [["b", "c"], ["a", "b"], ["a", "bc"]])
        XCTAssertEqual(tokenizer.encode("abc"), [5], "bc merges first, then a+bc")
        XCTAssertEqual(tokenizer.encode("ab"), [3])
        XCTAssertEqual(tokenizer.encode("cab"), [2, 3])
        XCTAssertEqual(tokenizer.decode([2, 3]), "cab")
    }

    func testUnknownScalarsUseUnknownTokenOrVanish() throws {
        let withUnknown = try TinyTokenizer.make(
            vocabulary: ["a": 0, "<unk>": 1], unknownToken: "<unk>", fuseUnknown: true)
        XCTAssertEqual(withUnknown.encode("axya"), [0, 1, 0])
        let withoutUnknown = try TinyTokenizer.make(vocabulary: ["a": 0])
        XCTAssertEqual(withoutUnknown.encode("axya"), [0, 0])
    }

    func testConfigAcceptsTokenObjectsAndNamedTemplates() throws {
        let config = Data("""
        {"bos_token": {"content": "b"}, "eos_token": "a",
         "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
        """.utf8)
        let tokenizerData = try TinyTokenizer.json(vocabulary: ["a": 0, "b": 1])
        let tokenizer = try Tokenizer(tokenizerData: tokenizerData, configData: config)
        XCTAssertEqual(tokenizer.bosTokenID, 1)
        XCTAssertEqual(tokenizer.eosTokenID, 0)
        XCTAssertEqual(tokenizer.chatTemplate, "D")
    }

    func testUnsupportedComponentsAreReported() {
        let wordPiece = Data(#"{"model": {"type": "WordPiece", "vocab": {}}}"#.utf8)
        XCTAssertThrowsError(try Tokenizer(tokenizerData: wordPiece)) { error in
            XCTAssertEqual(error as? TokenizerError, .unsupported("model type WordPiece"))
        }
        let precompiled = Data(#"""
        {"normalizer": {"type": "Precompiled"}, "model": {"type": "BPE", "vocab": {}, "merges": []}}
        """#.utf8)
        XCTAssertThrowsError(try Tokenizer(tokenizerData: precompiled)) { error in
            XCTAssertEqual(error as? TokenizerError, .unsupported("normalizer Precompiled"))
        }
        // Stripping the end of the fused text cannot be streamed token by token.
        let trailingStrip = Data(#"""
        {"decoder": {"type": "Sequence", "decoders": [{"type": "Fuse"},
                     {"type": "Strip", "content": " ", "start": 0, "stop": 1}]},
         "model": {"type": "BPE", "vocab": {}, "merges": []}}
        """#.utf8)
        XCTAssertThrowsError(try Tokenizer(tokenizerData: trailingStrip)) { error in
            XCTAssertEqual(error as? TokenizerError, .unsupported("Strip decoder removing trailing text after Fuse"))
        }
    }

    func testMissingDirectoryIsReported() {
        let directory = URL(fileURLWithPath: "/nonexistent-slmkit-directory")
        XCTAssertThrowsError(try Tokenizer(directory: directory)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingFile("/nonexistent-slmkit-directory/tokenizer.json"))
        }
    }
}
