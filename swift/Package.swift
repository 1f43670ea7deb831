// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "SLMKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "SLMKit", targets: ["SLMKit"]),
        .executable(name: "slm-chat", targets: ["slm-chat"]),
    ],
    targets: [
        .target(name: "SLMKit"),
        // Runs an exported model from the command line; its model code is compiled on macOS only.
        .executableTarget(name: "slm-chat", dependencies: ["SLMKit"]),
        .testTarget(
            name: "SLMKitTests",
            dependencies: ["SLMKit"],
            exclude: ["Fixtures"]
        ),
    ]
)
