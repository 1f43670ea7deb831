import XCTest
@testable import SLMKit

/// The platform-independent parts of ``CoreAILanguageModel``'s data handling: the cache states'
/// shape and row copy when they grow, and the float16 logits it returns as `Float`.
final class CoreAIContractTests: XCTestCase {
    func testCacheShapeFindsTheSequenceAxis() throws {
        let shape = try CoreAICacheShape(name: "keyCache", declared: [30, 1, 3, -1, 64])
        XCTAssertEqual(shape.sequenceAxis, 3)
        XCTAssertEqual(shape.resolved(rows: 256), [30, 1, 3, 256, 64])
        for declared in [[30, 1, 3, 512, 64], [30, 1, -1, -1, 64], [30, 0, 3, -1, 64]] {
            XCTAssertThrowsError(try CoreAICacheShape(name: "valueCache", declared: declared)) {
                XCTAssertEqual($0 as? CoreAILanguageModelError, .unexpectedStateShape("valueCache", declared))
            }
        }
    }

    func testGrowingCopiesTheWrittenRows() throws {
        // [layers 2, 1, heads 1, S, head_dim 2]: 1 row written in an S = 1 array, copied into S = 3.
        let shape = try CoreAICacheShape(name: "keyCache", declared: [2, 1, 1, -1, 2])
        var pairs: [[Int]] = []
        shape.forEachElement(inFirstRows: 1, sourceStrides: [2, 2, 2, 2, 1], destinationStrides: [6, 6, 6, 2, 1]) {
            pairs.append([$0, $1])
        }
        XCTAssertEqual(pairs, [[0, 0], [1, 1], [2, 6], [3, 7]])
    }

    func testGrowingCopiesIntoPaddedStorage() throws {
        // [layers 1, 1, heads 2, S, head_dim 3]; source S = 2 contiguous, destination S = 4 with rows padded to 4.
        let shape = try CoreAICacheShape(name: "valueCache", declared: [1, 1, 2, -1, 3])
        let source = (0..<12).map(Float.init)
        var destination = [Float](repeating: -1, count: 32)
        shape.forEachElement(inFirstRows: 2, sourceStrides: [12, 12, 6, 3, 1], destinationStrides: [32, 32, 16, 4, 1]) {
            destination[$1] = source[$0]
        }
        XCTAssertEqual(destination, [0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                     6, 7, 8, -1, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1, -1])
        var visits = 0
        shape.forEachElement(inFirstRows: 0, sourceStrides: [12, 12, 6, 3, 1], destinationStrides: [32, 32, 16, 4, 1]) {
            _, _ in visits += 1
        }
        XCTAssertEqual(visits, 0, "an empty sequence copies nothing")
    }

    func testLogitsLastRowFromFloat16() throws {
        // [1, 2, 3]: row 0 = 1, 0, 0; row 1 = -2, 0.5, 65504.
        let bits: [UInt16] = [0x3C00, 0x0000, 0x0000, 0xC000, 0x3800, 0x7BFF]
        XCTAssertEqual(try CoreAILogits.lastRow(shape: [1, 2, 3], strides: [6, 3, 1], tokenCount: 2) { bits[$0] },
                       [-2, 0.5, 65504])
        // One decode step, with -inf and the smallest subnormal.
        let step: [UInt16] = [0xFC00, 0x0001, 0x4248]
        XCTAssertEqual(try CoreAILogits.lastRow(shape: [1, 1, 3], strides: [3, 3, 1], tokenCount: 1) { step[$0] },
                       [-.infinity, 0x1p-24, 3.140625])
    }

    func testLogitsLastRowFromPaddedStorage() throws {
        // Rows of 3 values padded to 4 elements.
        let bits: [UInt16] = [0x3C00, 0x4000, 0x4200, 0xFFFF, 0x4400, 0x4500, 0x4600, 0xFFFF]
        XCTAssertEqual(try CoreAILogits.lastRow(shape: [1, 2, 3], strides: [8, 4, 1], tokenCount: 2) { bits[$0] },
                       [4, 5, 6])
    }

    func testLogitsOfTheWrongShapeAreRejected() {
        for (shape, strides) in [([1, 3, 4], [12, 4, 1]), ([2, 2, 4], [8, 4, 1]), ([2, 4], [4, 1]), ([1, 2, 0], [0, 0, 1])] {
            XCTAssertThrowsError(try CoreAILogits.lastRow(shape: shape, strides: strides, tokenCount: 2) { _ in 0 }) {
                XCTAssertEqual($0 as? CoreAILanguageModelError, .unexpectedLogitsShape(shape))
            }
        }
    }
}
