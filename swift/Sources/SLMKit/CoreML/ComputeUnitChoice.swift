/// Core ML compute units by the names of `MLComputeUnits`' cases, as the manifest's `compute_units`
/// records them, so the choice is read and tested without CoreML.
public enum ComputeUnitChoice: String, Sendable, CaseIterable {
    case cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all

    /// The units a model should run on: the manifest's `compute_units`, else those its input shapes suit
    /// (ranged: CPU and GPU; enumerated: CPU and Neural Engine).
    public static func preferred(by manifest: ModelManifest?) -> ComputeUnitChoice {
        if let name = manifest?.raw["compute_units"]?.stringValue, let choice = ComputeUnitChoice(rawValue: name) {
            return choice
        }
        let shapes = manifest.flatMap(CoreMLInputShapes.init(manifest:)) ?? .ranged
        return shapes.suitedComputeUnits
    }
}

#if canImport(CoreML)
import CoreML

extension ComputeUnitChoice {
    /// The `MLComputeUnits` case of the same name.
    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .all: return .all
        }
    }
}
#endif
