import Foundation

/// The useful bits of `tokenizer_config.json`, read leniently: special tokens
/// may be plain strings or `{"content": ...}` objects, and the chat template a
/// string or a list of named templates.
struct TokenizerConfig: Sendable {
    var bosToken: String?
    var eosToken: String?
    var padToken: String?
    var chatTemplate: String?

    init() {}

    init(data: Data) throws {
        let root = try JSONDecoder().decode([String: JSONValue].self, from: data)
        bosToken = Self.tokenContent(root["bos_token"])
        eosToken = Self.tokenContent(root["eos_token"])
        padToken = Self.tokenContent(root["pad_token"])
        chatTemplate = Self.template(root["chat_template"])
    }

    private static func tokenContent(_ value: JSONValue?) -> String? {
        value?.stringValue ?? value?["content"]?.stringValue
    }

    private static func template(_ value: JSONValue?) -> String? {
        if let text = value?.stringValue { return text }
        let named = value?.arrayValue ?? []
        let preferred = named.first { $0["name"]?.stringValue == "default" } ?? named.first
        return preferred?["template"]?.stringValue
    }
}
