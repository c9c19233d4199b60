import Benchmark
import Foundation
import GatehouseACL
import GatehouseAuth

/// An ACL of `count` rules: ten per role, over as many roles as that takes, each role's rules
/// in its own tenant-like branch, as a large multi-tenant fleet would have.
private func aclFile(rules count: Int) -> String {
    var text = "default deny\n"
    for role in 0..<max(1, count / 10) {
        text += "role r\(role)\n"
        for rule in 0..<min(10, count) {
            text += "  allow publish   tenants/t\(role)/devices/%c/telemetry/m\(rule)/#\n"
        }
    }
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(count).acl").path
    try? text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

private let decisionsPerIteration = 1_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .mallocCountTotal],
        maxDuration: .seconds(3),
        maxIterations: 100_000
    )

    for count in [10, 1_000, 100_000] {
        let path = aclFile(rules: count)
        guard let table = try? ACLTable.load(file: path) else { fatalError("the generated ACL must load") }
        // A device with two roles, one of which has a rule for this topic.
        let device = Principal(
            identityID: "id", username: "sensor-7", clientIdentifier: "sensor-7", tenant: "t0", roles: ["r0", "r1"])
        let allowed = "tenants/t0/devices/sensor-7/telemetry/m3/temperature"
        let refused = "tenants/t0/devices/sensor-8/telemetry/m3/temperature"

        Benchmark("authorize publish, \(count) rules ×\(decisionsPerIteration)") { benchmark in
            for _ in benchmark.scaledIterations {
                for index in 0..<decisionsPerIteration {
                    blackHole(table.decide(device, .publish, topic: index & 1 == 0 ? allowed : refused))
                }
            }
        }

        Benchmark("authorize subscribe, \(count) rules ×\(decisionsPerIteration)") { benchmark in
            for _ in benchmark.scaledIterations {
                for _ in 0..<decisionsPerIteration {
                    blackHole(table.decide(device, .subscribe, topic: "tenants/t0/devices/sensor-7/telemetry/+"))
                }
            }
        }
    }

    let large = aclFile(rules: 100_000)
    Benchmark("load and compile a 100,000-rule file", configuration: .init(maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? ACLTable.load(file: large)) }
    }
}
