import Foundation
import SLMKit

/// Builds small `tokenizer.json` documents for tests (no pre-tokenizer, no byte-level decoder).
enum TinyTokenizer {
    static func json(
        vocabulary: [String: Int], merges: [[String]] = [], unknownToken: String? = nil, fuseUnknown: Bool = false,
        addedTokens: [[String: Any]] = []
    ) throws -> Data {
        var model: [String: Any] = ["type": "BPE", "vocab": vocabulary, "merges": merges, "fuse_unk": fuseUnknown]
        model["unk_token"] = unknownToken
        let document: [String: Any] = ["added_tokens": addedTokens, "model": model]
        return try JSONSerialization.data(withJSONObject: document)
    }

    static func make(
        vocabulary: [String: Int], merges: [[String]] = [], unknownToken: String? = nil, fuseUnknown: Bool = false
    ) throws -> Tokenizer {
        try Tokenizer(tokenizerData: json(
            vocabulary: vocabulary, merges: merges, unknownToken: unknownToken, fuseUnknown: fuseUnknown))
    }

    /// Letters `A`…`H` (ids 0…7) plus the special `<eos>` (id 8), which the config names as EOS.
    static func letters() throws -> Tokenizer {
        let letters = ["A", "B", "C", "D", "E", "F", "G", "H"]
        let vocabulary = Dictionary(uniqueKeysWithValues: letters.enumerated().map { ($1, $0) })
        let data = try json(
            vocabulary: vocabulary, addedTokens: [["id": 8, "content": "<eos>", "special": true]])
        return try Tokenizer(tokenizerData: data, configData: Data(#"{"eos_token": "<eos>"}"#.utf8))
    }
}
