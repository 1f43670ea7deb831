import Foundation

/// RFC 7386 JSON merge patches over `JSONSerialization` values, the rule
/// `make_golden.py` uses to store tokenizer variants as small patches over the SmolLM2 `tokenizer.json`.
enum JSONMergePatch {
    /// `patch` applied to `target`: objects merge key by key (a `null` removes the key), anything else replaces.
    static func apply(_ patch: Any, to target: Any?) -> Any {
        guard let patchObject = patch as? [String: Any] else { return patch }
        var merged = target as? [String: Any] ?? [:]
        for (key, value) in patchObject {
            if value is NSNull {
                merged[key] = nil
            } else {
                merged[key] = apply(value, to: merged[key])
            }
        }
        return merged
    }

    /// The SmolLM2 fixture `tokenizer.json` with `patch` applied, serialized for ``Tokenizer``.
    static func patchedSmolLM2Tokenizer(_ patch: Any) throws -> Data {
        let base = try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("tokenizer.json")))
        return try JSONSerialization.data(withJSONObject: apply(patch, to: base))
    }
}
