import XCTest
import SLMKit

final class ChatMLTemplateTests: XCTestCase {
    private struct ChatCase: Decodable {
        let messages: [ChatMessage]
        let add_generation_prompt: Bool
        let prompt: String
    }

    func testSmolLM2TemplateMatchesTransformers() throws {
        let cases = try Fixtures.decode([ChatCase].self, from: "chat_golden.json")
        XCTAssertFalse(cases.isEmpty)
        for item in cases {
            let prompt = ChatMLTemplate.smolLM2.render(item.messages, addGenerationPrompt: item.add_generation_prompt)
            XCTAssertEqual(prompt, item.prompt)
        }
    }

    func testTemplateWithoutDefaultSystemPrompt() {
        let prompt = ChatMLTemplate().render([.user("Hi")])
        XCTAssertEqual(prompt, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }
}
