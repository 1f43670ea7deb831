import Foundation
import XCTest
import SLMKit

/// `.token` events: every sampled token with its text piece and log-probability, the latter checked
/// against a log-softmax computed here from the logits the model actually returned.
final class TokenEventTests: XCTestCase {
    /// Passes calls through to a model and keeps every logits vector it returned, in order.
    private actor RecordingModel: CausalLanguageModel {
        nonisolated let maximumContextLength: Int? = nil
        let model: SuccessorModel
        private(set) var returned: [[Float]] = []

        init(_ model: SuccessorModel) {
            self.model = model
        }

        func reset() async {
            await model.reset()
        }

        func logits(for tokens: [Int32]) async throws -> [Float] {
            let logits = try await model.logits(for: tokens)
            returned.append(logits)
            return logits
        }
    }

    func testTokensCarryIDTextAndLogprobOfTheModelsLogits() async throws {
        let model = RecordingModel(SuccessorModel(vocabularySize: 9))
        let tokenizer = try TinyTokenizer.letters()
        let generator = Generator(model: model, tokenizer: tokenizer)
        // Hot sampling so that unlikely tokens (with very negative logprobs) are drawn too.
        let parameters = GenerationParameters(maxTokens: 40, sampling: SamplingParameters(temperature: 8, seed: 3))
        var tokens: [GeneratedToken] = []
        var text = ""
        var summary: GenerationSummary?
        for try await event in generator.generate(prompt: "A", parameters: parameters) {
            switch event {
            case .token(let token): tokens.append(token)
            case .text(let piece): text += piece
            case .finished(let finished): summary = finished
            }
        }
        let returned = await model.returned
        XCTAssertEqual(tokens.count, summary?.generatedTokenCount)
        XCTAssertEqual(tokens.count, returned.count, "one sampled token per logits vector")
        XCTAssertGreaterThan(Set(tokens.map(\.logprob)).count, 1, "both likely and unlikely tokens drawn")
        for (token, logits) in zip(tokens, returned) {
            let normalizer = log(logits.map { exp(Double($0)) }.reduce(0, +))
            XCTAssertEqual(token.logprob, Double(logits[Int(token.id)]) - normalizer, accuracy: 1e-9)
        }
        let eos = try XCTUnwrap(tokenizer.eosTokenID)
        let pieces = tokens.filter { $0.id != eos }
        XCTAssertEqual(pieces.map(\.text), pieces.map { tokenizer.decode([$0.id]) })
        XCTAssertEqual(pieces.map(\.text).joined(), text)
        if summary?.stopReason == .stopToken {
            XCTAssertEqual(tokens.last?.id, eos)
            XCTAssertEqual(tokens.last?.text, "", "a stop token has no text")
        }
    }
}
