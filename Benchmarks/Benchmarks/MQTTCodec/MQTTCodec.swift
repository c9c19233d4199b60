import Benchmark
import MQTTCore
import NIOCore

/// A telemetry message as fleets send it: QoS 0, a four-level topic, 64 bytes on the wire.
private func telemetryPublish(version: MQTTProtocolVersion) -> MQTTPacket {
    let topic = "sensors/device-0042/temp"
    // 2 bytes fixed header, 2 + 24 topic, 1 property length byte in 5.0, the rest payload.
    let payloadLength = 64 - 2 - (2 + topic.utf8.count) - (version == .v5 ? 1 : 0)
    return .publish(.init(topicName: topic, payload: ByteBuffer(repeating: 0x41, count: payloadLength)))
}

private let packetsPerIteration = 1_000

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .cpuTotal, .throughput, .mallocCountTotal],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 1_000_000
    )

    for version in MQTTProtocolVersion.allCases {
        // One buffer holding 1,000 back-to-back packets, decoded as a connection would read it.
        let packet = telemetryPublish(version: version)
        var stream = ByteBuffer()
        for _ in 0..<packetsPerIteration { try? packet.write(to: &stream, version: version) }
        precondition(stream.readableBytes == 64 * packetsPerIteration, "the PUBLISH must be 64 bytes")

        Benchmark("decode 64-byte QoS 0 PUBLISH (\(version)) ×1000") { benchmark in
            for _ in benchmark.scaledIterations {
                var input = stream
                var parser = MQTTPacketParser(protocolVersion: version)
                while let decoded = try parser.parse(from: &input) { blackHole(decoded) }
            }
        }

        Benchmark("encode 64-byte QoS 0 PUBLISH (\(version)) ×1000") { benchmark in
            var output = ByteBuffer()
            output.reserveCapacity(64 * packetsPerIteration)
            for _ in benchmark.scaledIterations {
                output.clear()
                for _ in 0..<packetsPerIteration { try packet.write(to: &output, version: version) }
                blackHole(output)
            }
        }
    }

    let filters = ["sensors/+/temp", "sensors/#", "+/device-0042/+", "fleet/a/b/c"]
    Benchmark("match a topic against 4 filters ×1000") { benchmark in
        for _ in benchmark.scaledIterations {
            for _ in 0..<packetsPerIteration {
                for filter in filters {
                    blackHole(MQTTTopic.matches(filter: filter, topic: "sensors/device-0042/temp"))
                }
            }
        }
    }
}
