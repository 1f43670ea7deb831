/// The `added_tokens` of a tokenizer: their ids, which are special, and the
/// matchers that find them in raw text (`normalized: false`) or in normalized text.
struct AddedVocabulary: Sendable {
    let idsByContent: [ExactString: Int32]
    let specialIDs: Set<Int32>
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher

    init(_ definitions: [AddedTokenDefinition], vocabulary: [ExactString: Int32], normalizer: Normalizer?) {
        var idsByContent: [ExactString: Int32] = [:]
        var specialIDs: Set<Int32> = []
        var rawTokens: [AddedToken] = []
        var normalizedTokens: [AddedToken] = []
        for definition in definitions {
            // Like `tokenizers`, an added token already in the vocabulary keeps its vocabulary id.
            let id = vocabulary[ExactString(definition.content)] ?? definition.id
            idsByContent[ExactString(definition.content)] = id
            if definition.special { specialIDs.insert(id) }
            let matchedText = definition.normalized
                ? normalizer?.normalize(definition.content) ?? definition.content
                : definition.content
            let token = AddedToken(
                id: id, content: Array(matchedText.unicodeScalars), singleWord: definition.singleWord,
                leftStrip: definition.leftStrip, rightStrip: definition.rightStrip)
            if definition.normalized { normalizedTokens.append(token) } else { rawTokens.append(token) }
        }
        self.idsByContent = idsByContent
        self.specialIDs = specialIDs
        rawMatcher = AddedTokenMatcher(tokens: rawTokens)
        normalizedMatcher = AddedTokenMatcher(tokens: normalizedTokens)
    }
}
