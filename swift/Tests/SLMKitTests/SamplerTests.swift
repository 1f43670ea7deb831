import Foundation
import XCTest
@testable import SLMKit

final class SamplerTests: XCTestCase {
    private let logits: [Float] = [2.0, 1.0, 0.5, 0.0, -1.0, 1.5]

    func testSeededGeneratorMatchesReferenceSequence() {
        var zero = SeededRandomGenerator(seed: 0)
        XCTAssertEqual((0..<4).map { _ in zero.next() },
                       [0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0, 0x6AA5_94F1_262D_2D2C])
        var fortyTwo = SeededRandomGenerator(seed: 42)
        XCTAssertEqual(fortyTwo.next(), 0x1578_0B2E_0C2E_C716)
        for _ in 0..<1000 {
            let uniform = fortyTwo.nextUniform()
            XCTAssertTrue(uniform >= 0 && uniform < 1)
        }
    }

    func testGreedyPicksFirstLargestLogit() {
        var sampler = Sampler(parameters: .greedy)
        XCTAssertEqual(sampler.sample(logits: logits), 0)
        XCTAssertEqual(sampler.sample(logits: [1, 3, 3, 2]), 1)
        XCTAssertEqual(sampler.sample(logits: [.nan, 1, .nan]), 1)
    }

    func testTemperatureSamplingFollowsSoftmax() throws {
        let temperature: Float = 0.8
        let expected = try XCTUnwrap(LogitProcessing.softmax(logits, temperature: temperature))
        let frequencies = empiricalFrequencies(SamplingParameters(temperature: temperature, seed: 7), draws: 40_000)
        assertClose(frequencies, expected, draws: 40_000)
    }

    func testTopKNeverLeavesTheTopKAndRenormalizes() throws {
        let frequencies = empiricalFrequencies(SamplingParameters(temperature: 1, topK: 2, seed: 11), draws: 20_000)
        let probabilities = try XCTUnwrap(LogitProcessing.softmax(logits, temperature: 1))
        let topTwoMass = probabilities[0] + probabilities[5]
        var expected = [Double](repeating: 0, count: logits.count)
        expected[0] = probabilities[0] / topTwoMass
        expected[5] = probabilities[5] / topTwoMass
        for index in [1, 2, 3, 4] {
            XCTAssertEqual(frequencies[index], 0, "token \(index) is outside the top 2")
        }
        assertClose(frequencies, expected, draws: 20_000)
    }

    func testTopPMaskIsExact() {
        let probabilities = [0.125, 0.5, 0.125, 0.25]
        let ranked = LogitProcessing.rankedByProbability(probabilities)
        XCTAssertEqual(ranked, [1, 3, 0, 2], "ties keep id order")
        XCTAssertEqual(LogitProcessing.topP(ranked, probabilities: probabilities, p: 0.5), [1])
        XCTAssertEqual(LogitProcessing.topP(ranked, probabilities: probabilities, p: 0.75), [1, 3])
        XCTAssertEqual(LogitProcessing.topP(ranked, probabilities: probabilities, p: 0.76), [1, 3, 0])
        XCTAssertEqual(LogitProcessing.topP(ranked, probabilities: probabilities, p: 1), [1, 3, 0, 2])
        XCTAssertEqual(LogitProcessing.topP([1, 3], probabilities: probabilities, p: 0.6), [1],
                       "mass is measured after earlier filters renormalize")
    }

    func testMinPMaskIsExact() {
        let probabilities = [0.125, 0.5, 0.125, 0.25]
        let ranked = LogitProcessing.rankedByProbability(probabilities)
        XCTAssertEqual(LogitProcessing.minP(ranked, probabilities: probabilities, minP: 0.25), [1, 3, 0, 2])
        XCTAssertEqual(LogitProcessing.minP(ranked, probabilities: probabilities, minP: 0.3), [1, 3])
        XCTAssertEqual(LogitProcessing.minP(ranked, probabilities: probabilities, minP: 0.5), [1, 3])
        XCTAssertEqual(LogitProcessing.minP(ranked, probabilities: probabilities, minP: 0.51), [1])
    }

    func testTopPAndMinPRestrictSampling() {
        // Probabilities ∝ [1, 8, 1, 4, 2]: top-p 0.7 keeps {1, 3}; min-p 0.2 keeps {1, 3, 4}.
        let shaped = [1, 8, 1, 4, 2].map { Float(log(Double($0))) }
        var topP = Sampler(parameters: SamplingParameters(temperature: 1, topP: 0.7, seed: 3))
        var minP = Sampler(parameters: SamplingParameters(temperature: 1, minP: 0.2, seed: 3))
        var seenTopP = Set<Int32>()
        var seenMinP = Set<Int32>()
        for _ in 0..<3000 {
            seenTopP.insert(topP.sample(logits: shaped))
            seenMinP.insert(minP.sample(logits: shaped))
        }
        XCTAssertEqual(seenTopP, [1, 3])
        XCTAssertEqual(seenMinP, [1, 3, 4])
    }

    func testRepetitionPenaltyMatchesHandComputedValues() {
        var scores: [Float] = [2.0, -1.0, 0.5, 3.0]
        LogitProcessing.applyRepetitionPenalty(2, to: &scores, recentTokens: [0, 1, 1, 9])
        XCTAssertEqual(scores, [1.0, -2.0, 0.5, 3.0])

        var windowed: [Float] = [2.0, -1.0, 0.5, 3.0]
        let history: [Int32] = [0, 1, 2]
        LogitProcessing.applyRepetitionPenalty(2, to: &windowed, recentTokens: history.suffix(1))
        XCTAssertEqual(windowed, [2.0, -1.0, 0.25, 3.0])

        var sampler = Sampler(parameters: SamplingParameters(repetitionPenalty: 1.5, repetitionContextSize: 4))
        XCTAssertEqual(sampler.sample(logits: [3.0, 2.9], previousTokens: [0]), 1, "3.0 / 1.5 = 2.0 < 2.9")
        XCTAssertEqual(sampler.sample(logits: [3.0, 2.9], previousTokens: [0, 1, 1, 1, 1]), 0,
                       "token 0 left the window")
    }

    func testSameSeedGivesSameSequence() {
        let parameters = SamplingParameters(temperature: 1.2, topK: 4, topP: 0.95, minP: 0.01, seed: 1234)
        var first = Sampler(parameters: parameters)
        var second = Sampler(parameters: parameters)
        var reseeded = parameters
        reseeded.seed = 4321
        var other = Sampler(parameters: reseeded)
        let a = (0..<200).map { _ in first.sample(logits: logits) }
        let b = (0..<200).map { _ in second.sample(logits: logits) }
        let c = (0..<200).map { _ in other.sample(logits: logits) }
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
    }

    func testDegenerateLogitsNeverCrash() {
        var sampler = Sampler(parameters: SamplingParameters(temperature: 1, topP: 0.9, seed: 1))
        XCTAssertEqual(sampler.sample(logits: [-.infinity, -.infinity]), 0)
        XCTAssertEqual(sampler.sample(logits: [.nan, .nan]), 0)
        XCTAssertEqual(sampler.sample(logits: [0, .infinity, 1]), 1)
        XCTAssertEqual(sampler.sample(logits: []), 0)
        XCTAssertEqual(sampler.sample(logits: [-.infinity, 5, -.infinity]), 1)
    }

    private func empiricalFrequencies(_ parameters: SamplingParameters, draws: Int) -> [Double] {
        var sampler = Sampler(parameters: parameters)
        var counts = [Int](repeating: 0, count: logits.count)
        for _ in 0..<draws {
            counts[Int(sampler.sample(logits: logits))] += 1
        }
        return counts.map { Double($0) / Double(draws) }
    }

    /// Each frequency within 4.5 standard errors of its expected probability.
    private func assertClose(_ frequencies: [Double], _ expected: [Double], draws: Int,
                             file: StaticString = #filePath, line: UInt = #line) {
        for (index, probability) in expected.enumerated() {
            let standardError = (probability * (1 - probability) / Double(draws)).squareRoot()
            XCTAssertEqual(frequencies[index], probability, accuracy: max(4.5 * standardError, 1e-9),
                           "token \(index)", file: file, line: line)
        }
    }
}
