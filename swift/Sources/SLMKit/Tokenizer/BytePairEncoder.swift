/// The BPE model of `tokenizer.json`: turns one pre-tokenized word into token ids.
///
/// Merges are applied lowest rank first, leftmost first among equal ranks,
/// which gives the same result as the priority queue in `tokenizers`.
struct BytePairEncoder: Sendable {
    private struct Merge: Sendable {
        let rank: Int
        let result: Int32
    }

    let vocabulary: [ExactString: Int32]
    private let scalarIDs: [Unicode.Scalar: Int32]
    private let merges: [UInt64: Merge]
    private let unknownID: Int32?
    private let fuseUnknown: Bool
    private let ignoreMerges: Bool
    /// With `byte_fallback`, the ids of the `<0xXX>` tokens (`nil` where the vocabulary lacks one).
    private let byteIDs: [Int32?]?

    init(_ definition: BPEDefinition, vocabulary: [ExactString: Int32]) {
        self.vocabulary = vocabulary
        var scalarIDs: [Unicode.Scalar: Int32] = [:]
        for (token, id) in vocabulary {
            var scalars = token.string.unicodeScalars.makeIterator()
            if let first = scalars.next(), scalars.next() == nil {
                scalarIDs[first] = id
            }
        }
        self.scalarIDs = scalarIDs
        var merges: [UInt64: Merge] = [:]
        for (rank, (left, right)) in definition.merges.enumerated() {
            guard let leftID = vocabulary[ExactString(left)],
                  let rightID = vocabulary[ExactString(right)],
                  let result = vocabulary[ExactString(left + right)] else { continue }
            let key = Self.pairKey(leftID, rightID)
            if merges[key] == nil {
                merges[key] = Merge(rank: rank, result: result)
            }
        }
        self.merges = merges
        unknownID = definition.unknownToken.flatMap { vocabulary[ExactString($0)] }
        fuseUnknown = definition.fuseUnknown
        ignoreMerges = definition.ignoreMerges
        byteIDs = definition.byteFallback
            ? (0...255).map { vocabulary[ExactString(ByteToken.name(of: UInt8($0)))] }
            : nil
    }

    /// Appends the ids of `word` to `ids`.
    func encode(word: String, into ids: inout [Int32]) {
        if ignoreMerges, let id = vocabulary[ExactString(word)] {
            ids.append(id)
            return
        }
        var symbols = initialSymbols(of: word)
        while symbols.count > 1, let (index, merge) = bestMerge(in: symbols) {
            symbols[index] = merge.result
            symbols.remove(at: index + 1)
        }
        ids.append(contentsOf: symbols)
    }

    /// One symbol per scalar; unknown scalars become their UTF-8 bytes' `<0xXX>` tokens with byte
    /// fallback (when the vocabulary has them all), else `unk_token` (or vanish when there is none).
    private func initialSymbols(of word: String) -> [Int32] {
        var symbols: [Int32] = []
        var previousWasUnknown = false
        for scalar in word.unicodeScalars {
            if let id = scalarIDs[scalar] {
                symbols.append(id)
                previousWasUnknown = false
            } else if let bytes = fallbackIDs(of: scalar) {
                symbols.append(contentsOf: bytes)
                previousWasUnknown = false
            } else if let unknownID {
                if !(fuseUnknown && previousWasUnknown) { symbols.append(unknownID) }
                previousWasUnknown = true
            }
        }
        return symbols
    }

    private func fallbackIDs(of scalar: Unicode.Scalar) -> [Int32]? {
        guard let byteIDs else { return nil }
        var ids: [Int32] = []
        for byte in String(scalar).utf8 {
            guard let id = byteIDs[Int(byte)] else { return nil }
            ids.append(id)
        }
        return ids
    }

    private func bestMerge(in symbols: [Int32]) -> (Int, Merge)? {
        var best: (Int, Merge)?
        for index in 0..<(symbols.count - 1) {
            guard let merge = merges[Self.pairKey(symbols[index], symbols[index + 1])] else { continue }
            if best.map({ merge.rank < $0.1.rank }) ?? true {
                best = (index, merge)
            }
        }
        return best
    }

    private static func pairKey(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }
}
