/// Errors a ``ChatSession`` turn can end with (besides the model's and ``GenerationError``).
public enum ChatSessionError: Error, Equatable {
    /// A turn was sent while the previous one was still generating.
    case busy
    /// The system prompt and the new message alone fill the model's context.
    case messageTooLong(tokenCount: Int, limit: Int)
}
