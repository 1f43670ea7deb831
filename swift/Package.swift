// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "SLMKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "SLMKit", targets: ["SLMKit"]),
    ],
    targets: [
        .target(name: "SLMKit"),
        .testTarget(
            name: "SLMKitTests",
            dependencies: ["SLMKit"],
            exclude: ["Fixtures"]
        ),
    ]
)
