import Foundation
import XCTest
@testable import SLMKit

/// Model chat templates rendered by SLMKit's Jinja subset against transformers' `apply_chat_template`
/// (goldens from `make_golden.py`: SmolLM2, Qwen2.5, Qwen3, Llama 3.1, Mistral v0.3, Gemma 3).
final class JinjaChatTemplateTests: XCTestCase {
    private struct TemplateGolden: Decodable {
        let name: String
        let template: String
        let special_tokens: [String: String]
        let cases: [Case]
    }

    private struct Case: Decodable {
        let messages: [ChatMessage]
        let add_generation_prompt: Bool
        let extra: [String: JSONValue]
        let prompt: String?
        let error: String?
    }

    private func goldens() throws -> [TemplateGolden] {
        try Fixtures.decode([TemplateGolden].self, from: "chat_templates_golden.json")
    }

    func testModelTemplatesMatchTransformers() throws {
        let goldens = try goldens()
        XCTAssertEqual(goldens.map(\.name), ["smollm2", "qwen2_5", "qwen3", "llama3_1", "mistral_v0_3", "gemma3"])
        for golden in goldens {
            for item in golden.cases {
                let template = try JinjaChatTemplate(
                    source: golden.template, specialTokens: golden.special_tokens, variables: item.extra)
                let label = "\(golden.name) \(item.messages.map(\.role)) generation prompt \(item.add_generation_prompt)"
                if let expected = item.prompt {
                    XCTAssertEqual(try template.render(item.messages, addGenerationPrompt: item.add_generation_prompt),
                                   expected, label)
                } else {
                    XCTAssertThrowsError(try template.render(item.messages, addGenerationPrompt: item.add_generation_prompt),
                                         label) { error in
                        XCTAssertEqual(error as? JinjaError, .raised(item.error ?? ""), label)
                    }
                }
            }
        }
    }

    func testTheManifestTemplateWinsOverTheTokenizers() throws {
        let qwen = try XCTUnwrap(try goldens().first { $0.name == "qwen2_5" })
        let manifestData = try JSONSerialization.data(withJSONObject: ["chat_template": qwen.template])
        let manifest = try ModelManifest(data: manifestData)
        let tokenizer = try Fixtures.smolLM2Tokenizer()
        let fromManifest = try XCTUnwrap(try JinjaChatTemplate(manifest: manifest, tokenizer: tokenizer))
        let fromTokenizer = try XCTUnwrap(try JinjaChatTemplate(manifest: nil, tokenizer: tokenizer))
        let item = qwen.cases[0]
        XCTAssertEqual(try fromManifest.render(item.messages, addGenerationPrompt: item.add_generation_prompt), item.prompt)
        XCTAssertEqual(try fromTokenizer.render([.user("Hi")], addGenerationPrompt: true),
                       try ChatMLTemplate.smolLM2.render([.user("Hi")], addGenerationPrompt: true))
    }

    func testWhatTheSubsetLeavesOutIsASyntaxError() {
        XCTAssertThrowsError(try JinjaTemplate("{% macro f() %}x{% endmacro %}")) { error in
            XCTAssertEqual(error as? JinjaError, .syntax("unsupported statement {% macro %}"))
        }
        XCTAssertThrowsError(try JinjaTemplate("{{ 'open }}"))
        XCTAssertThrowsError(try JinjaTemplate("{% if x %}no end"))
    }
}
