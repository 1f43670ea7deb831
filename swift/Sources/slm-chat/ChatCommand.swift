#if os(macOS)
import Foundation
import SLMKit

/// Loads an exported model folder and answers one prompt with the model's own chat template.
@available(macOS 15.0, *)
struct ChatCommand {
    struct MissingTemplate: Error, CustomStringConvertible {
        var description: String { "neither the manifest nor tokenizer_config.json has a chat template" }
    }

    let options: ChatCommandOptions

    func run() async throws {
        let folder = try ExportedModelFolder(directory: options.folder)
        let model = try await CoreMLLanguageModel.load(contentsOf: folder.modelURL, manifestURL: folder.manifestURL)
        let tokenizer = try Tokenizer(directory: folder.directory)
        guard let template = try JinjaChatTemplate(manifest: model.manifest, tokenizer: tokenizer) else {
            throw MissingTemplate()
        }
        let session = ChatSession(
            generator: Generator(model: model, tokenizer: tokenizer), template: template,
            systemPrompt: options.systemPrompt)
        let sampling = options.temperature > 0
            ? SamplingParameters(temperature: options.temperature, seed: options.seed)
            : .greedy
        let parameters = GenerationParameters(
            maxTokens: options.maxTokens, sampling: sampling,
            stopTokenIDs: Set(model.manifest?.eosTokenIDs ?? []))
        for try await event in await session.send(options.prompt, parameters: parameters) {
            switch event {
            case .text(let piece):
                FileHandle.standardOutput.write(Data(piece.utf8))
            case .token(let token):
                if options.showsLogprobs {
                    log("[\(token.id) \(token.text.debugDescription) \(String(format: "%.3f", token.logprob))]")
                }
            case .finished(let summary):
                log("\n\(summary.prefilledTokenCount) prompt tokens, \(summary.generatedTokenCount) generated, "
                    + String(format: "%.1f tokens/s, stopped by %@", summary.tokensPerSecond, "\(summary.stopReason)"))
            }
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
    }

    private func log(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }
}
#endif
