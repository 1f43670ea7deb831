import Foundation
import XCTest
@testable import SLMKit

/// The platform-independent planning of ``CoreAILanguageModel``'s calls: what each call sends
/// (`input_ids`, `position_ids`), which cache rows it writes, when the caches grow, and when
/// the context is exceeded.
final class CoreAIRequestTests: XCTestCase {
    func testPrefillThenDecodeSendsEveryPositionSoFar() throws {
        let sizing = try CoreAICacheSizing(maximumContextLength: 512)
        let prefill = try CoreAIRequest(appending: [11, 12, 13, 14, 15], pastLength: 0, cacheCapacity: 256, sizing: sizing)
        XCTAssertEqual(prefill.inputIDs, [11, 12, 13, 14, 15])
        XCTAssertEqual(prefill.positionIDs, [0, 1, 2, 3, 4])
        XCTAssertEqual(prefill.pastLength, 0)
        XCTAssertEqual(prefill.writtenRows, 0..<5)
        XCTAssertEqual(prefill.totalLength, 5)
        XCTAssertEqual(prefill.cacheCapacity, 256)
        XCTAssertFalse(prefill.growsCache)

        let first = try CoreAIRequest(appending: [16], pastLength: prefill.totalLength, cacheCapacity: 256, sizing: sizing)
        XCTAssertEqual(first.inputIDs, [16])
        XCTAssertEqual(first.positionIDs, [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(first.pastLength, 5)
        XCTAssertEqual(first.writtenRows, 5..<6)

        let second = try CoreAIRequest(appending: [17], pastLength: first.totalLength, cacheCapacity: 256, sizing: sizing)
        XCTAssertEqual(second.positionIDs, [0, 1, 2, 3, 4, 5, 6])
        XCTAssertEqual(second.pastLength, 6)
        XCTAssertEqual(second.writtenRows, 6..<7)
        XCTAssertFalse(second.growsCache)
    }

    /// Drives a stand-in for the program (it writes the tokens into the rows the request names and
    /// reads rows `0 ..< P + T`) through prefill, decode, growth and the context limit.
    func testAWholeSequenceFillsTheCacheRowByRow() throws {
        let sizing = try CoreAICacheSizing(maximumContextLength: 10, initialCapacity: 4)
        var cache = RowCache(capacity: sizing.initialCapacity)
        var sent: [[Int32]] = []
        var capacities: [Int] = []
        var grew: [Bool] = []
        for tokens: [Int32] in [[11, 12, 13], [14], [15], [16], [17], [18], [19], [20]] {
            let request = try CoreAIRequest(
                appending: tokens, pastLength: cache.length, cacheCapacity: cache.capacity, sizing: sizing)
            XCTAssertEqual(request.positionIDs, (0..<Int32(cache.length + tokens.count)).map { $0 })
            XCTAssertEqual(request.pastLength, cache.length)
            cache.apply(request)
            sent.append(request.positionIDs)
            capacities.append(request.cacheCapacity)
            grew.append(request.growsCache)
        }
        XCTAssertEqual(cache.rows.prefix(10), [11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
        XCTAssertEqual(sent.map(\.count), [3, 4, 5, 6, 7, 8, 9, 10])
        XCTAssertEqual(capacities, [4, 4, 8, 8, 8, 8, 10, 10], "doubles, capped at max_context")
        XCTAssertEqual(grew, [false, false, true, false, false, false, true, false])

        XCTAssertThrowsError(try CoreAIRequest(
            appending: [21], pastLength: cache.length, cacheCapacity: cache.capacity, sizing: sizing)) { error in
            XCTAssertEqual(error as? CoreAILanguageModelError, .contextOverflow(requested: 11, limit: 10))
        }
    }

    func testExceedingMaxContextIsAClearError() throws {
        let sizing = try CoreAICacheSizing(maximumContextLength: 8)
        XCTAssertEqual(try CoreAIRequest(appending: [1, 2], pastLength: 6, cacheCapacity: 8, sizing: sizing).totalLength, 8,
                       "exactly max_context fits")
        XCTAssertThrowsError(try CoreAIRequest(appending: [1, 2, 3], pastLength: 6, cacheCapacity: 8, sizing: sizing)) {
            let error = $0 as? CoreAILanguageModelError
            XCTAssertEqual(error, .contextOverflow(requested: 9, limit: 8))
            XCTAssertEqual(error?.description,
                           "9 tokens do not fit the 8-token context (max_context) of the Core AI program")
        }
        XCTAssertThrowsError(try CoreAIRequest(appending: Array(repeating: 0, count: 9), pastLength: 0,
                                               cacheCapacity: 8, sizing: sizing)) {
            XCTAssertEqual($0 as? CoreAILanguageModelError, .contextOverflow(requested: 9, limit: 8), "a long prompt")
        }
        XCTAssertThrowsError(try CoreAIRequest(appending: [], pastLength: 3, cacheCapacity: 8, sizing: sizing)) {
            XCTAssertEqual($0 as? CoreAILanguageModelError, .emptyInput)
        }
    }

    func testPrefillLongerThanTheInitialCacheGrowsItAtOnce() throws {
        let sizing = try CoreAICacheSizing(maximumContextLength: 2048)
        XCTAssertEqual(sizing.initialCapacity, 256)
        let request = try CoreAIRequest(appending: Array(repeating: 7, count: 600), pastLength: 0,
                                        cacheCapacity: sizing.initialCapacity, sizing: sizing)
        XCTAssertEqual(request.cacheCapacity, 1024)
        XCTAssertTrue(request.growsCache)
        XCTAssertEqual(request.positionIDs.last, 599)
    }

    func testCacheSizingDoublesUpToMaxContext() throws {
        let sizing = try CoreAICacheSizing(maximumContextLength: 1000)
        XCTAssertEqual(sizing.capacity(holding: 200, current: 256), 256)
        XCTAssertEqual(sizing.capacity(holding: 256, current: 256), 256)
        XCTAssertEqual(sizing.capacity(holding: 257, current: 256), 512)
        XCTAssertEqual(sizing.capacity(holding: 513, current: 256), 1000)
        XCTAssertEqual(try CoreAICacheSizing(maximumContextLength: 100).initialCapacity, 100,
                       "never more rows than max_context")
        XCTAssertThrowsError(try CoreAICacheSizing(maximumContextLength: 0)) {
            XCTAssertEqual($0 as? CoreAILanguageModelError, .missingMaximumContext)
        }
    }

    func testMaxContextComesFromTheManifest() throws {
        let manifest = try ModelManifest(data: Data(#"{"max_context": 512, "eos_token_id": 2}"#.utf8))
        let sizing = try CoreAICacheSizing(manifest: manifest)
        XCTAssertEqual(sizing.maximumContextLength, 512)
        XCTAssertEqual(sizing.initialCapacity, 256)
        for manifest in [nil, try ModelManifest(data: Data(#"{"eos_token_id": 2}"#.utf8))] {
            XCTAssertThrowsError(try CoreAICacheSizing(manifest: manifest)) {
                XCTAssertEqual($0 as? CoreAILanguageModelError, .missingMaximumContext)
            }
        }
    }

    func testManifestIsFoundNextToTheAimodelFolder() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slmkit-\(UUID().uuidString)")
        let program = directory.appendingPathComponent("Smol.aimodel", isDirectory: true)
        try FileManager.default.createDirectory(at: program, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data(#"{"max_context": 1024}"#.utf8).write(to: directory.appendingPathComponent("Smol.json"))
        XCTAssertEqual(try ModelManifest.load(near: program)?.maxContext, 1024)
    }
}

/// What the program does to one cache state, one token id per row: grow when asked (keeping the
/// rows written so far), check the rows it reads were written, write the new tokens.
private struct RowCache {
    private(set) var rows: [Int32?]
    private(set) var length = 0
    var capacity: Int { rows.count }

    init(capacity: Int) {
        rows = Array(repeating: nil, count: capacity)
    }

    mutating func apply(_ request: CoreAIRequest) {
        if request.growsCache {
            rows = Array(rows.prefix(request.pastLength))
                + Array(repeating: nil, count: request.cacheCapacity - request.pastLength)
        }
        XCTAssertGreaterThanOrEqual(capacity, request.totalLength)
        XCTAssertFalse(rows[0..<request.pastLength].contains(nil), "the past rows were written")
        for (row, token) in zip(request.writtenRows, request.inputIDs) {
            rows[row] = token
        }
        length = request.totalLength
    }
}
