/// Watches streamed text for stop strings.
///
/// Text that could be the start of a stop string is held back until it is
/// either completed (generation stops, the stop string is dropped) or ruled out.
/// Matching is done on UTF-8 bytes, so it is exact and ignores grapheme clustering.
struct StopStringScanner {
    enum Outcome: Equatable {
        /// Emit this text and continue.
        case proceed(String)
        /// Emit this text (what preceded the stop string) and stop.
        case stop(String)
    }

    private let stopStrings: [[UInt8]]
    private var pending: [UInt8] = []

    init(stopStrings: [String]) {
        self.stopStrings = stopStrings.map { Array($0.utf8) }.filter { !$0.isEmpty }
    }

    mutating func append(_ text: String) -> Outcome {
        pending.append(contentsOf: text.utf8)
        if let start = earliestStopString() {
            let visible = String(decoding: pending[..<start], as: UTF8.self)
            pending.removeAll()
            return .stop(visible)
        }
        let held = longestSuffixStartingAStopString()
        let visible = String(decoding: pending[..<(pending.count - held)], as: UTF8.self)
        pending.removeFirst(pending.count - held)
        return .proceed(visible)
    }

    /// Releases the held-back text once no more text will come.
    mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    private func earliestStopString() -> Int? {
        stopStrings.compactMap { firstIndex(of: $0, in: pending) }.min()
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    private func longestSuffixStartingAStopString() -> Int {
        var longest = 0
        for stop in stopStrings {
            let limit = min(stop.count - 1, pending.count)
            guard limit > longest else { continue }
            for length in stride(from: limit, to: longest, by: -1)
            where pending[(pending.count - length)...].elementsEqual(stop[..<length]) {
                longest = length
                break
            }
        }
        return longest
    }

    private func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        for start in 0...(haystack.count - needle.count)
        where haystack[start..<(start + needle.count)].elementsEqual(needle) {
            return start
        }
        return nil
    }
}
