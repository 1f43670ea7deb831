import Foundation

// `slm-chat MODEL_FOLDER PROMPT`: runs a model exported by mlx_slm end to end on macOS 15 or newer
// (ExportedModelFolder finds it, CoreMLLanguageModel runs it, its own chat template renders the
// prompt through a ChatSession) and streams the reply to stdout, statistics to stderr.
// Core ML exists only on Apple platforms, so elsewhere the tool only parses its arguments and says so.

let options: ChatCommandOptions
do {
    options = try ChatCommandOptions(arguments: Array(CommandLine.arguments.dropFirst()))
} catch {
    FileHandle.standardError.write(Data("\(error)\n\(ChatCommandOptions.usage)\n".utf8))
    exit(2)
}

#if os(macOS)
if #available(macOS 15.0, *) {
    do {
        try await ChatCommand(options: options).run()
    } catch {
        FileHandle.standardError.write(Data("slm-chat: \(error)\n".utf8))
        exit(1)
    }
} else {
    FileHandle.standardError.write(Data("slm-chat needs macOS 15 or newer (stateful Core ML models)\n".utf8))
    exit(1)
}
#else
FileHandle.standardError.write(Data("slm-chat runs Core ML models and works on macOS only\n".utf8))
exit(1)
#endif
