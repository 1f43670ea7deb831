import XCTest
@testable import SLMKit

final class StopStringScannerTests: XCTestCase {
    func testEarliestStopStringWins() {
        var scanner = StopStringScanner(stopStrings: ["world", "lo w"])
        XCTAssertEqual(scanner.append("hello world"), .stop("hel"))
    }

    func testPartialMatchIsHeldUntilDisproved() {
        var scanner = StopStringScanner(stopStrings: ["</s>"])
        XCTAssertEqual(scanner.append("a <"), .proceed("a "))
        XCTAssertEqual(scanner.append("/"), .proceed(""))
        XCTAssertEqual(scanner.append("x"), .proceed("</x"))
        XCTAssertEqual(scanner.append("</"), .proceed(""))
        XCTAssertEqual(scanner.flush(), "</")
    }

    func testMatchesBytesInsideGraphemeClusters() {
        var scanner = StopStringScanner(stopStrings: ["\n"])
        XCTAssertEqual(scanner.append("line\r\nnext"), .stop("line\r"))
        var accents = StopStringScanner(stopStrings: ["e"])
        XCTAssertEqual(accents.append("cafe\u{301}"), .stop("caf"))
    }

    func testMultiByteStopStrings() {
        var scanner = StopStringScanner(stopStrings: ["你好"])
        XCTAssertEqual(scanner.append("说你"), .proceed("说"))
        XCTAssertEqual(scanner.append("好吗"), .stop(""))
    }

    func testEmptyStopStringsAreIgnored() {
        var scanner = StopStringScanner(stopStrings: [""])
        XCTAssertEqual(scanner.append("abc"), .proceed("abc"))
    }
}
