// swift-tools-version:6.2
import PackageDescription

// Micro benchmarks, apart from the main package so that CI's debug build never compiles
// them. Run: swift package --allow-writing-to-package-directory benchmark
let package = Package(
    name: "GatehouseBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "gatehouse", path: ".."),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/vapor/jwt-kit.git", from: "5.8.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "MQTTCodec",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "MQTTCore", package: "gatehouse"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Benchmarks/MQTTCodec",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "ACL",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "GatehouseACL", package: "gatehouse"),
                .product(name: "GatehouseAuth", package: "gatehouse"),
            ],
            path: "Benchmarks/ACL",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "IAM",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "GatehouseIAM", package: "gatehouse"),
                .product(name: "GatehouseAuth", package: "gatehouse"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "JWTKit", package: "jwt-kit"),
            ],
            path: "Benchmarks/IAM",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
