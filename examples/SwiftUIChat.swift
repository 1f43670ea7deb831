// SwiftUIChat.swift — a minimal SwiftUI chat screen streaming replies with SLMKit.
//
// Not part of the Swift package build (it needs SwiftUI and Core ML, so it only
// builds on Apple platforms). To try it, add SLMKit to an iOS 18 / macOS 15 app
// target, copy this file in, and bundle the folder `mlx-slm export coreml` wrote:
// `Name.mlpackage` (or an Xcode-compiled `Name.mlmodelc`), its manifest `Name.json`
// and the tokenizer files. `ExportedModelFolder` finds the model by that name. Then
// show `ChatView(modelDirectory: url)` with `url` from
// `Bundle.main.url(forResource: "SmolLM2", withExtension: nil)`.

import SLMKit
import SwiftUI

/// Owns the model and the conversation; streams each reply into the last message.
@available(iOS 18.0, macOS 15.0, *)
@MainActor
@Observable
final class ChatModel {
    var messages: [ChatMessage] = []
    var draft = ""
    var status = "Loading…"
    private(set) var isGenerating = false

    private var session: ChatSession?
    private var stopTokenIDs: Set<Int32> = []
    private var generation: Task<Void, Never>?

    /// Loads the tokenizer and the Core ML model exported by mlx_slm. The session keeps the
    /// model's KV cache between turns, so each reply prefills only the new message.
    func load(from directory: URL) async {
        do {
            let folder = try ExportedModelFolder(directory: directory)
            let tokenizer = try Tokenizer(directory: directory)
            let model = try await CoreMLLanguageModel.load(contentsOf: folder.modelURL, manifestURL: folder.manifestURL)
            stopTokenIDs = Set(model.manifest?.eosTokenIDs ?? [])
            // The model's own chat template from its manifest (or tokenizer), else SmolLM2's ChatML.
            let template: any ChatPromptTemplate = try JinjaChatTemplate(manifest: model.manifest, tokenizer: tokenizer)
                ?? ChatMLTemplate.smolLM2
            session = ChatSession(generator: Generator(model: model, tokenizer: tokenizer), template: template)
            status = "Ready"
        } catch {
            status = "Could not load the model: \(error)"
        }
    }

    /// Sends the draft and streams the assistant's answer.
    func send() {
        let text = draft.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let session, !text.isEmpty, !isGenerating else { return }
        draft = ""
        messages.append(.user(text))
        messages.append(.assistant(""))
        let parameters = GenerationParameters(
            maxTokens: 512,
            sampling: SamplingParameters(temperature: 0.7, topP: 0.9, repetitionPenalty: 1.1,
                                         seed: UInt64.random(in: 0...UInt64.max)),
            stopTokenIDs: stopTokenIDs)
        isGenerating = true
        generation = Task {
            do {
                for try await event in await session.send(text, parameters: parameters) {
                    switch event {
                    case .text(let piece):
                        if let last = messages.indices.last { messages[last].content += piece }
                    case .token:
                        break
                    case .finished(let summary):
                        let rate = String(format: "%.1f", summary.tokensPerSecond)
                        status = "\(summary.prefilledTokenCount) tokens prefilled, "
                            + "\(summary.generatedTokenCount) generated, \(rate) tokens/s"
                    }
                }
            } catch {
                status = "Generation failed: \(error)"
            }
            isGenerating = false
        }
    }

    /// Stops the running generation; the partial reply stays.
    func stop() {
        generation?.cancel()
    }
}

@available(iOS 18.0, macOS 15.0, *)
struct ChatView: View {
    let modelDirectory: URL
    @State private var chat = ChatModel()

    var body: some View {
        VStack(spacing: 0) {
            ScrollView {
                LazyVStack(alignment: .leading, spacing: 12) {
                    ForEach(Array(chat.messages.enumerated()), id: \.offset) { _, message in
                        Text(message.content.isEmpty ? "…" : message.content)
                            .padding(10)
                            .background(message.role == "user" ? Color.blue.opacity(0.15) : Color.gray.opacity(0.12))
                            .clipShape(RoundedRectangle(cornerRadius: 10))
                            .frame(maxWidth: .infinity, alignment: message.role == "user" ? .trailing : .leading)
                    }
                }
                .padding()
            }
            Text(chat.status).font(.footnote).foregroundStyle(.secondary)
            HStack {
                TextField("Message", text: $chat.draft)
                    .textFieldStyle(.roundedBorder)
                    .onSubmit { chat.send() }
                if chat.isGenerating {
                    Button("Stop") { chat.stop() }
                } else {
                    Button("Send") { chat.send() }
                }
            }
            .padding()
        }
        .task { await chat.load(from: modelDirectory) }
    }
}
