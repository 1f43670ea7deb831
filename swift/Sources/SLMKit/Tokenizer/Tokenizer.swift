import Foundation

/// A BPE tokenizer loaded from a Hugging Face `tokenizer.json`, matching the Rust `tokenizers` crate:
/// byte-level (GPT-2, Llama-3, Qwen2, SmolLM) or SentencePiece-style with `▁` for spaces and byte
/// fallback (Gemma, Llama 2, Mistral).
public final class Tokenizer: Sendable {
    /// Id of the beginning-of-sequence token named in `tokenizer_config.json`.
    public let bosTokenID: Int32?
    /// Id of the end-of-sequence token named in `tokenizer_config.json`.
    public let eosTokenID: Int32?
    /// The beginning-of-sequence token's text from `tokenizer_config.json` (a chat template's `bos_token`).
    public let bosToken: String?
    /// The end-of-sequence token's text from `tokenizer_config.json` (a chat template's `eos_token`).
    public let eosToken: String?
    /// Id of the padding token named in `tokenizer_config.json`.
    public let padTokenID: Int32?
    /// The Jinja chat template shipped with the tokenizer, if any (``JinjaChatTemplate`` renders it).
    public let chatTemplate: String?
    /// Number of distinct ids (vocabulary plus added tokens).
    public let vocabularySize: Int

    private let addedVocabulary: AddedVocabulary
    private let normalizer: Normalizer?
    private let preTokenizer: PreTokenizer
    private let model: BytePairEncoder
    private let tokenBytes: TokenBytes
    /// The decoder of SentencePiece-style files; `nil` when ids decode through their bytes.
    private let pieceDecoder: PieceDecoder?

    /// Loads `tokenizer.json`, plus `tokenizer_config.json` and `chat_template.jinja` when present.
    public convenience init(directory: URL) throws {
        let tokenizerURL = directory.appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: tokenizerURL.path) else {
            throw TokenizerError.missingFile(tokenizerURL.path)
        }
        let configURL = directory.appendingPathComponent("tokenizer_config.json")
        let templateURL = directory.appendingPathComponent("chat_template.jinja")
        try self.init(
            tokenizerData: Data(contentsOf: tokenizerURL),
            configData: FileManager.default.fileExists(atPath: configURL.path) ? Data(contentsOf: configURL) : nil,
            chatTemplate: try? String(contentsOf: templateURL, encoding: .utf8))
    }

    /// Builds a tokenizer from file contents.
    /// - Parameter chatTemplate: overrides the template found in `configData`.
    public init(tokenizerData: Data, configData: Data? = nil, chatTemplate: String? = nil) throws {
        let definition = try JSONDecoder().decode(TokenizerDefinition.self, from: tokenizerData)
        let config = try configData.map(TokenizerConfig.init(data:)) ?? TokenizerConfig()
        let vocabulary = try VocabularyReader.vocabulary(in: tokenizerData)
        let normalizer = try definition.normalizer.map(Normalizer.init)
        let addedVocabulary = AddedVocabulary(definition.addedTokens, vocabulary: vocabulary, normalizer: normalizer)
        model = BytePairEncoder(definition.model, vocabulary: vocabulary)
        preTokenizer = try PreTokenizer(definition.preTokenizer)
        self.normalizer = normalizer
        self.addedVocabulary = addedVocabulary

        var tokensByID: [Int32: String] = [:]
        for (token, id) in vocabulary { tokensByID[id] = token.string }
        for (content, id) in addedVocabulary.idsByContent { tokensByID[id] = content.string }
        vocabularySize = tokensByID.count
        tokenBytes = TokenBytes(
            tokensByID: tokensByID, specialIDs: addedVocabulary.specialIDs,
            isByteLevel: definition.decoder == .byteLevel)
        pieceDecoder = try definition.decoder.flatMap { $0 == .byteLevel ? nil : try PieceDecoder($0) }

        let lookup = { (token: String?) in
            token.map(ExactString.init).flatMap { addedVocabulary.idsByContent[$0] ?? vocabulary[$0] }
        }
        bosToken = config.bosToken
        eosToken = config.eosToken
        bosTokenID = lookup(config.bosToken)
        eosTokenID = lookup(config.eosToken)
        padTokenID = lookup(config.padToken)
        self.chatTemplate = chatTemplate ?? config.chatTemplate
    }

    /// Encodes text without adding BOS/EOS (like `encode(text, add_special_tokens=False)`).
    /// Special tokens written in the text, such as `<|im_start|>`, become their ids.
    public func encode(_ text: String) -> [Int32] {
        var ids: [Int32] = []
        for (index, piece) in addedVocabulary.rawMatcher.split(text).enumerated() {
            switch piece {
            case .token(let id):
                ids.append(id)
            case .text(let segment):
                let normalized = normalizer?.normalize(segment) ?? segment
                for (innerIndex, inner) in addedVocabulary.normalizedMatcher.split(normalized).enumerated() {
                    switch inner {
                    case .token(let id): ids.append(id)
                    case .text(let ordinary):
                        encodeOrdinaryText(ordinary, atStart: index == 0 && innerIndex == 0, into: &ids)
                    }
                }
            }
        }
        return ids
    }

    /// Decodes ids to text; invalid UTF-8 becomes U+FFFD, as in `tokenizers`.
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) -> String {
        if let pieceDecoder {
            let tokens = ids.compactMap { tokenBytes.visibleToken(for: $0, skipSpecialTokens: skipSpecialTokens) }
            return pieceDecoder.decode(tokens, startsSequence: true)
        }
        var bytes: [UInt8] = []
        for id in ids {
            bytes.append(contentsOf: tokenBytes.bytes(for: id, skipSpecialTokens: skipSpecialTokens))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A decoder for token-by-token streaming that only emits complete UTF-8 text.
    public func makeStreamingDetokenizer(skipSpecialTokens: Bool = true) -> StreamingDetokenizer {
        StreamingDetokenizer(
            tokenBytes: tokenBytes, pieceDecoder: pieceDecoder, skipSpecialTokens: skipSpecialTokens)
    }

    /// The id of a token given its exact text (added tokens included).
    public func tokenID(for token: String) -> Int32? {
        addedVocabulary.idsByContent[ExactString(token)] ?? model.vocabulary[ExactString(token)]
    }

    /// The text of a token as stored in `tokenizer.json` (byte-level or `▁` form for ordinary tokens).
    public func token(for id: Int32) -> String? {
        tokenBytes.token(for: id)
    }

    /// Whether `id` is an added token marked `special`.
    public func isSpecialToken(_ id: Int32) -> Bool {
        tokenBytes.isSpecial(id)
    }

    /// - Parameter atStart: whether `text` begins the input (no added token before it).
    private func encodeOrdinaryText(_ text: String, atStart: Bool, into ids: inout [Int32]) {
        for word in preTokenizer.split(text, atStart: atStart) {
            model.encode(word: word, into: &ids)
        }
    }
}
