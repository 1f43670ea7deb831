import Foundation

/// Compiled Core ML models (`.mlmodelc`) kept between launches, so a `.mlpackage` is compiled once
/// rather than at every launch.
///
/// A package's compiled model lives at `<directory>/<package name>/<key>.mlmodelc`; the key hashes every
/// file of the package (relative path, size, modification time), so an app update that replaces the
/// package compiles it again, and the old compiled model is removed then. What compiles is passed in
/// (`MLModel.compileModel(at:)` in ``CoreMLLanguageModel``), so the caching is tested without CoreML.
public struct CompiledModelCache: Sendable {
    public let directory: URL

    public init(directory: URL) {
        self.directory = directory
    }

    /// `Application Support/SLMKit/CompiledModels` of the app.
    public static func applicationSupport() throws -> CompiledModelCache {
        let support = try FileManager.default.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        return CompiledModelCache(directory: support.appendingPathComponent("SLMKit/CompiledModels", isDirectory: true))
    }

    /// 16 hex digits: FNV-1a (64-bit) over each file's relative path, size and modification time, in path order.
    public static func key(forPackageAt url: URL) throws -> String {
        let fileManager = FileManager.default
        let root = url.standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard fileManager.fileExists(atPath: root, isDirectory: &isDirectory), isDirectory.boolValue,
              let enumerator = fileManager.enumerator(atPath: root) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: root])
        }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        func mix(_ text: String) {
            for byte in text.utf8 + [0] {
                hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
            }
        }
        for path in enumerator.allObjects.compactMap({ $0 as? String }).sorted() {
            let attributes = try fileManager.attributesOfItem(atPath: root + "/" + path)
            guard attributes[.type] as? FileAttributeType == .typeRegular else { continue }
            let size = (attributes[.size] as? NSNumber)?.uint64Value ?? 0
            let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            mix("\(path)|\(size)|\(modified.bitPattern)")
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// Where the package's compiled model is (or will be) kept.
    public func compiledURL(forPackageAt url: URL) throws -> URL {
        let name = url.deletingPathExtension().lastPathComponent
        return directory.appendingPathComponent(name, isDirectory: true)
            .appendingPathComponent("\(try Self.key(forPackageAt: url)).mlmodelc", isDirectory: true)
    }

    /// The package's compiled model: the kept one, or `compile(url)`'s result moved into the cache
    /// (replacing the package's older compiled models).
    public func compiledModel(forPackageAt url: URL, compile: (URL) async throws -> URL) async throws -> URL {
        let target = try compiledURL(forPackageAt: url)
        let fileManager = FileManager.default
        if fileManager.fileExists(atPath: target.path) {
            return target
        }
        let compiled = try await compile(url)
        let folder = target.deletingLastPathComponent()
        try fileManager.createDirectory(at: folder, withIntermediateDirectories: true)
        for old in try fileManager.contentsOfDirectory(atPath: folder.path) where old != target.lastPathComponent {
            try? fileManager.removeItem(at: folder.appendingPathComponent(old))
        }
        do {
            try fileManager.moveItem(at: compiled, to: target)
        } catch {
            guard fileManager.fileExists(atPath: target.path) else { throw error }
            try? fileManager.removeItem(at: compiled)  // another load kept the same compiled model first
        }
        return target
    }
}
