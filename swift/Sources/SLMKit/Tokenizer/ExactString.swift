/// A string compared and hashed scalar for scalar. Swift's `String` equality is Unicode canonical
/// equivalence, under which a vocabulary's `é` (U+00E9) and `e` + U+0301 would be one key;
/// `tokenizers` keeps them apart, and SentencePiece vocabularies hold both.
struct ExactString: Hashable, Sendable {
    let string: String

    init(_ string: String) {
        self.string = string
    }

    static func == (lhs: ExactString, rhs: ExactString) -> Bool {
        lhs.string.utf8.elementsEqual(rhs.string.utf8)
    }

    func hash(into hasher: inout Hasher) {
        for byte in string.utf8 { hasher.combine(byte) }
    }
}
