// swift-tools-version:6.2
import PackageDescription

// Built apart from the main package: libFuzzer needs `--sanitize=fuzzer --sanitize=address`
// on every module, which must not leak into the ordinary build.
let package = Package(
    name: "GatehouseFuzz",
    dependencies: [
        .package(name: "gatehouse", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "FuzzFrameDecoder",
            dependencies: [
                .product(name: "MQTTCore", package: "gatehouse"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        )
    ]
)
