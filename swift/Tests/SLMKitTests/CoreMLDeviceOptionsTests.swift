import Foundation
import XCTest
@testable import SLMKit

/// What ``CoreMLLanguageModel`` decides without CoreML: the shapes and compute units a manifest names,
/// how a prompt is split into enumerated lengths, the compiled-model cache and the prediction queue.
final class CoreMLDeviceOptionsTests: XCTestCase {
    private func manifest(_ json: String) throws -> ModelManifest {
        try ModelManifest(data: Data(json.utf8))
    }

    func testShapesAndComputeUnitsFromTheManifest() throws {
        let enumerated = try manifest("""
        {"input_shapes": "enumerated", "query_lengths": [64, 1], "logits": "last", "compute_units": "cpuAndNeuralEngine"}
        """)
        XCTAssertEqual(CoreMLInputShapes(manifest: enumerated), .enumerated(queryLengths: [1, 64]))
        XCTAssertEqual(ComputeUnitChoice.preferred(by: enumerated), .cpuAndNeuralEngine)

        let ranged = try manifest(#"{"input_shapes": "ranged", "compute_units": "cpuAndGPU"}"#)
        XCTAssertEqual(CoreMLInputShapes(manifest: ranged), .ranged)
        XCTAssertEqual(ComputeUnitChoice.preferred(by: ranged), .cpuAndGPU)

        // older exports name neither: ranged shapes, which the Neural Engine does not compile
        let old = try manifest(#"{"max_context": 512}"#)
        XCTAssertEqual(CoreMLInputShapes(manifest: old), .ranged)
        XCTAssertEqual(ComputeUnitChoice.preferred(by: old), .cpuAndGPU)
        XCTAssertEqual(ComputeUnitChoice.preferred(by: nil), .cpuAndGPU)
        // no compute_units: those the shapes suit; an unknown name falls back the same way
        let unnamed = try manifest(#"{"input_shapes": "enumerated", "query_lengths": [1, 8], "compute_units": "tpu"}"#)
        XCTAssertEqual(ComputeUnitChoice.preferred(by: unnamed), .cpuAndNeuralEngine)

        XCTAssertNil(CoreMLInputShapes(manifest: try manifest(#"{"input_shapes": "enumerated", "query_lengths": [8]}"#)),
                     "without 1 some prompt lengths cannot be fed")
        XCTAssertNil(CoreMLInputShapes(manifest: try manifest(#"{"input_shapes": "bucketed"}"#)))
    }

    func testPromptsAreSplitIntoTheLongestLengthsThatFit() {
        let shapes = CoreMLInputShapes.enumerated(queryLengths: [1, 4, 64])
        XCTAssertEqual(shapes.chunkLengths(count: 10), [4, 4, 1, 1])
        XCTAssertEqual(shapes.chunkLengths(count: 135), [64, 64, 4, 1, 1, 1])
        XCTAssertEqual(shapes.chunkLengths(count: 1), [1])
        XCTAssertEqual(shapes.chunkLengths(count: 0), [])
        for count in 1...200 {
            let chunks = shapes.chunkLengths(count: count)
            XCTAssertEqual(chunks.reduce(0, +), count)
            XCTAssertTrue(chunks.allSatisfy { [1, 4, 64].contains($0) })
        }
        XCTAssertEqual(CoreMLInputShapes.ranged.chunkLengths(count: 10), [10], "one call of any length")
    }

    func testCompiledModelIsKeptAndRecompiledOnlyWhenThePackageChanges() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("slmkit-cache-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let package = root.appendingPathComponent("apps/Smol.mlpackage")
        let weights = package.appendingPathComponent("Data/com.apple.CoreML/weights/weight.bin")
        try FileManager.default.createDirectory(at: weights.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data([1, 2, 3]).write(to: weights)
        try Data("{}".utf8).write(to: package.appendingPathComponent("Manifest.json"))
        let cache = CompiledModelCache(directory: root.appendingPathComponent("compiled"))

        let compiler = FakeCompiler(scratch: root.appendingPathComponent("scratch"))
        let first = try await cache.compiledModel(forPackageAt: package, compile: compiler.compile)
        let again = try await cache.compiledModel(forPackageAt: package, compile: compiler.compile)
        XCTAssertEqual(compiler.count, 1, "the second load finds the kept model")
        XCTAssertEqual(first, again)
        XCTAssertEqual(first.deletingLastPathComponent().lastPathComponent, "Smol")
        XCTAssertEqual(first.lastPathComponent, "\(try CompiledModelCache.key(forPackageAt: package)).mlmodelc")
        XCTAssertEqual(try String(contentsOf: first.appendingPathComponent("model.mil"), encoding: .utf8), "compiled 1")

        // a new package (another size, so another key even within the file system's time resolution)
        try Data([1, 2, 3, 4]).write(to: weights)
        let updated = try await cache.compiledModel(forPackageAt: package, compile: compiler.compile)
        XCTAssertEqual(compiler.count, 2)
        XCTAssertNotEqual(updated, first)
        XCTAssertFalse(FileManager.default.fileExists(atPath: first.path), "the old compiled model is removed")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: updated.deletingLastPathComponent().path),
                       [updated.lastPathComponent])
        XCTAssertEqual(try CompiledModelCache.key(forPackageAt: package).count, 16)
        XCTAssertThrowsError(try CompiledModelCache.key(forPackageAt: root.appendingPathComponent("missing")))
    }

    func testPredictionsRunOffTheCallersActor() async throws {
        let queue = PredictionQueue(label: "test")
        let model = BlockingModel(queue: queue)
        let running = DispatchSemaphore(value: 0)
        let gate = DispatchSemaphore(value: 0)
        let safety = Flag()
        DispatchQueue.global().asyncAfter(deadline: .now() + 10) {  // never hang: release the work after 10 s
            safety.set()
            gate.signal()
        }
        async let blocked = model.predict("a", running: running, gate: gate)
        let deadline = ContinuousClock.now + .seconds(5)
        while running.wait(timeout: .now()) == .timedOut, ContinuousClock.now < deadline {
            await Task.yield()
        }
        // the prediction is blocked on its queue, and the actor still answers
        let answer = await model.ping()
        XCTAssertEqual(answer, "pong")
        XCTAssertFalse(safety.isSet, "the actor answered only once the prediction was released")
        gate.signal()
        let outcome = try await blocked
        XCTAssertEqual(outcome.name, "a")
        XCTAssertTrue(outcome.ranOnQueue)
        XCTAssertFalse(queue.isCurrent, "the test itself is not on the queue")

        let results = try await (queue.run { 1 }, queue.run { 2 })
        XCTAssertEqual([results.0, results.1], [1, 2])
        do {
            _ = try await queue.run { () throws -> Int in throw CocoaError(.fileNoSuchFile) }
            XCTFail("expected the work's error")
        } catch {
            XCTAssertEqual((error as? CocoaError)?.code, .fileNoSuchFile)
        }
    }
}

/// A flag set from any thread.
private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool { lock.withLock { value } }

    func set() {
        lock.withLock { value = true }
    }
}

/// Stands in for `MLModel.compileModel(at:)`: writes a new `.mlmodelc` folder each call.
private final class FakeCompiler: @unchecked Sendable {
    let scratch: URL
    private(set) var count = 0

    init(scratch: URL) {
        self.scratch = scratch
    }

    func compile(_ package: URL) async throws -> URL {
        count += 1
        let output = scratch.appendingPathComponent("\(UUID().uuidString).mlmodelc")
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        try Data("compiled \(count)".utf8).write(to: output.appendingPathComponent("model.mil"))
        return output
    }
}

/// An actor that runs a blocking "prediction" through a ``PredictionQueue``, as ``CoreMLLanguageModel`` does.
private actor BlockingModel {
    struct Outcome: Sendable {
        let name: String
        let ranOnQueue: Bool
    }

    let queue: PredictionQueue

    init(queue: PredictionQueue) {
        self.queue = queue
    }

    func predict(_ name: String, running: DispatchSemaphore, gate: DispatchSemaphore) async throws -> Outcome {
        let queue = self.queue
        return try await queue.run {
            running.signal()
            gate.wait()
            return Outcome(name: name, ranOnQueue: queue.isCurrent)
        }
    }

    func ping() -> String {
        "pong"
    }
}
