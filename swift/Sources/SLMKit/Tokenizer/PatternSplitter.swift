import Foundation

/// Cuts text around the matches of a pattern, following the semantics of the
/// `Split` pre-tokenizer in Hugging Face `tokenizers`.
///
/// Offsets are UTF-16 based (as `NSRegularExpression` reports them) and pieces
/// are rebuilt from UTF-16 code units, so grapheme clusters never shift a cut.
struct PatternSplitter: Sendable {
    private struct Segment {
        var lower: Int
        var upper: Int
        var isMatch: Bool
    }

    private let regex: NSRegularExpression
    private let behavior: SplitBehavior
    private let invert: Bool

    init(pattern: SplitPattern, behavior: SplitBehavior, invert: Bool) throws {
        let source: String
        switch pattern {
        case .regex(let expression): source = expression
        case .string(let literal): source = NSRegularExpression.escapedPattern(for: literal)
        }
        do {
            regex = try NSRegularExpression(pattern: source)
        } catch {
            throw TokenizerError.invalidPattern(source)
        }
        self.behavior = behavior
        self.invert = invert
    }

    /// Splits `text` into non-empty pieces.
    func split(_ text: String) -> [String] {
        let units = Array(text.utf16)
        var segments = matchSegments(in: text, length: units.count)
        if invert {
            for index in segments.indices { segments[index].isMatch.toggle() }
        }
        return apply(behavior, to: segments)
            .filter { $0.lower < $0.upper }
            .map { String(decoding: units[$0.lower..<$0.upper], as: UTF16.self) }
    }

    /// Alternating match / non-match segments covering the whole text.
    private func matchSegments(in text: String, length: Int) -> [Segment] {
        var segments: [Segment] = []
        var cursor = 0
        for match in regex.matches(in: text, range: NSRange(location: 0, length: length)) {
            let lower = match.range.location
            let upper = lower + match.range.length
            if lower > cursor { segments.append(Segment(lower: cursor, upper: lower, isMatch: false)) }
            segments.append(Segment(lower: lower, upper: upper, isMatch: true))
            cursor = upper
        }
        if cursor < length { segments.append(Segment(lower: cursor, upper: length, isMatch: false)) }
        return segments
    }

    private func apply(_ behavior: SplitBehavior, to segments: [Segment]) -> [Segment] {
        switch behavior {
        case .isolated:
            return segments
        case .removed:
            return segments.filter { !$0.isMatch }
        case .mergedWithPrevious:
            return mergeForward(segments) { isMatch, previousWasMatch in isMatch && !previousWasMatch }
        case .contiguous:
            return mergeForward(segments) { isMatch, previousWasMatch in isMatch == previousWasMatch }
        case .mergedWithNext:
            var result: [Segment] = []
            var nextWasMatch = false
            for segment in segments.reversed() {
                if segment.isMatch && !nextWasMatch, let last = result.indices.last {
                    result[last].lower = segment.lower
                } else {
                    result.append(segment)
                }
                nextWasMatch = segment.isMatch
            }
            return result.reversed()
        }
    }

    /// Walks left to right, extending the previous piece whenever `joins` says so.
    private func mergeForward(_ segments: [Segment], joins: (Bool, Bool) -> Bool) -> [Segment] {
        var result: [Segment] = []
        var previousWasMatch = false
        for segment in segments {
            if joins(segment.isMatch, previousWasMatch), let last = result.indices.last {
                result[last].upper = segment.upper
            } else {
                result.append(segment)
            }
            previousWasMatch = segment.isMatch
        }
        return result
    }
}
