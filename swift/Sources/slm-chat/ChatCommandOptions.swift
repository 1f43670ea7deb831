import Foundation

/// The command line of `slm-chat`: an exported model folder, a prompt and a few generation options.
/// Parsed on every platform (so Linux builds check it); only macOS runs a model with it.
struct ChatCommandOptions {
    static let usage = """
        usage: slm-chat MODEL_FOLDER PROMPT [--system TEXT] [--max-tokens N] [--temperature T] [--seed N] [--logprobs]
          MODEL_FOLDER  a folder exported by mlx_slm (Name.mlpackage or Name.mlmodelc, Name.json, tokenizer files)
          --temperature 0 (the default) is greedy; --logprobs prints each token's id and logprob to stderr
        """

    struct UsageError: Error, CustomStringConvertible {
        let description: String
    }

    var folder: URL
    var prompt: String
    var systemPrompt: String?
    var maxTokens = 256
    var temperature: Float = 0
    var seed: UInt64 = 0
    var showsLogprobs = false

    init(arguments: [String]) throws {
        var positional: [String] = []
        var systemPrompt: String?
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            func value() throws -> String {
                guard let next = remaining.popFirst() else { throw UsageError(description: "\(argument) needs a value") }
                return next
            }
            switch argument {
            case "--system": systemPrompt = try value()
            case "--max-tokens": maxTokens = try Self.number(Int.self, try value(), argument)
            case "--temperature": temperature = try Self.number(Float.self, try value(), argument)
            case "--seed": seed = try Self.number(UInt64.self, try value(), argument)
            case "--logprobs": showsLogprobs = true
            default:
                guard !argument.hasPrefix("--") else { throw UsageError(description: "unknown option \(argument)") }
                positional.append(argument)
            }
        }
        guard positional.count == 2 else { throw UsageError(description: "expected MODEL_FOLDER and PROMPT") }
        folder = URL(fileURLWithPath: positional[0])
        prompt = positional[1]
        self.systemPrompt = systemPrompt
    }

    private static func number<Value: LosslessStringConvertible>(_ type: Value.Type, _ text: String, _ option: String)
        throws -> Value {
        guard let value = Value(text) else { throw UsageError(description: "\(option) takes a number, not \(text)") }
        return value
    }
}
