/// Why a Jinja template could not be parsed or rendered.
public enum JinjaError: Error, Equatable, CustomStringConvertible {
    /// The template text is not valid in the supported Jinja subset.
    case syntax(String)
    /// Rendering hit an operation the values do not support (or one outside the subset).
    case runtime(String)
    /// The template called `raise_exception(message)`, as chat templates do for unsupported conversations.
    case raised(String)

    public var description: String {
        switch self {
        case .syntax(let message): "Jinja syntax error: \(message)"
        case .runtime(let message): "Jinja error: \(message)"
        case .raised(let message): message
        }
    }
}
