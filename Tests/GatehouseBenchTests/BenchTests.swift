import MQTTCore
import NIOCore
import Testing

@testable import GatehouseBench

@Suite("latency histogram")
struct LatencyHistogramTests {
    @Test("small values are exact, large ones within 1/64")
    func resolution() {
        for value: UInt64 in [0, 1, 63, 64, 65, 127, 128, 1_000, 999_999, 1_234_567_890, .max / 2] {
            let edge = LatencyHistogram.upperEdge(of: LatencyHistogram.bucket(of: value))
            #expect(edge >= value)
            #expect(Double(edge - value) <= Double(value) / 64 + 1, "value \(value), edge \(edge)")
        }
        #expect(LatencyHistogram.bucket(of: .max) < (64 - 6 + 1) * 64)
    }

    @Test("percentiles of 1...1000 µs")
    func percentiles() {
        var histogram = LatencyHistogram()
        for microseconds in 1...1000 { histogram.record(UInt64(microseconds) * 1000) }
        #expect(histogram.count == 1000)
        #expect(histogram.maximum == 1_000_000)
        #expect(histogram.minimum == 1000)
        for (quantile, expected) in [(0.5, 500_000.0), (0.9, 900_000.0), (0.99, 990_000.0)] {
            let value = Double(histogram.value(atQuantile: quantile))
            #expect(abs(value - expected) <= expected / 64, "p\(quantile * 100): \(value)")
        }
        #expect(histogram.value(atQuantile: 1) == 1_000_000)
        #expect(LatencyHistogram().value(atQuantile: 0.99) == 0)
    }

    @Test("merging equals recording into one")
    func merging() {
        var odd = LatencyHistogram()
        var even = LatencyHistogram()
        var all = LatencyHistogram()
        for value: UInt64 in 1...5000 {
            if value % 2 == 0 { even.record(value * 37) } else { odd.record(value * 37) }
            all.record(value * 37)
        }
        odd.merge(even)
        #expect(odd == all)
    }
}

@Suite("bench publish frame and plan")
struct BenchPlanTests {
    @Test(
        "patched frames appended to one buffer parse as the publishes they claim, fully and by the bench's decoder",
        arguments: MQTTProtocolVersion.allCases, MQTTQoS.allCases)
    func frame(version: MQTTProtocolVersion, qos: MQTTQoS) throws {
        let frame = PublishFrame(topic: "bench/7", qos: qos, payloadSize: 40, version: version)
        var buffer = ByteBuffer()
        for sequence: UInt32 in [99, 100] {
            frame.append(
                to: &buffer, sentAt: 0x0102_0304_0506_0708, publisher: 7, sequence: sequence,
                packetIdentifier: UInt16(4142 + sequence))
        }
        var decoderInput = buffer
        var parser = MQTTPacketParser(protocolVersion: version)
        for sequence: UInt32 in [99, 100] {
            let packet = try parser.parse(from: &buffer, maximumPacketSize: 1 << 20)
            guard case .publish(let publish) = packet else {
                Issue.record("not a publish: \(String(describing: packet))")
                return
            }
            #expect(publish.topicName == "bench/7")
            #expect(publish.qos == qos)
            #expect(publish.packetIdentifier == (qos == .atMostOnce ? 0 : UInt16(4142 + sequence)))
            #expect(publish.payload.readableBytes == 40)
            #expect(
                publish.payload.getInteger(at: publish.payload.readerIndex, as: UInt64.self) == 0x0102_0304_0506_0708)
            #expect(publish.payload.getInteger(at: publish.payload.readerIndex + 8, as: UInt32.self) == 7)
            #expect(publish.payload.getInteger(at: publish.payload.readerIndex + 12, as: UInt32.self) == sequence)
        }
        #expect(buffer.readableBytes == 0)

        var decoder = BenchFrameDecoder(version: version)
        for sequence: UInt32 in [99, 100] {
            guard
                case .publish(let decodedQoS, let identifier, let sentAt, let publisher) =
                    try decoder.decode(buffer: &decoderInput)
            else {
                Issue.record("the bench decoder did not read a publish")
                return
            }
            #expect(decodedQoS == qos && sentAt == 0x0102_0304_0506_0708 && publisher == 7)
            #expect(identifier == (qos == .atMostOnce ? 0 : UInt16(4142 + sequence)))
        }
        #expect(decoderInput.readableBytes == 0)
    }

    @Test("the bench decoder reads acknowledgements in place and hands other packets to the full parser")
    func decoderAcknowledgements() throws {
        var decoder = BenchFrameDecoder(version: .v5)
        var input = ByteBuffer(bytes: [0x40, 0x02, 0x00, 0x05])  // PUBACK 5, success implied
        input.writeBytes([0x50, 0x03, 0x00, 0x06, 0x97])  // PUBREC 6, Quota exceeded
        input.writeBytes([0x20, 0x03, 0x00, 0x00, 0x00])  // CONNACK
        input.writeBytes([0x40, 0x02, 0x00])  // half a PUBACK
        guard case .acknowledgement(.puback, 5, 0) = try decoder.decode(buffer: &input) else {
            throw BenchTestFailure("PUBACK")
        }
        guard case .acknowledgement(.pubrec, 6, 0x97) = try decoder.decode(buffer: &input) else {
            throw BenchTestFailure("PUBREC")
        }
        guard case .packet(.connack(let connack)) = try decoder.decode(buffer: &input) else {
            throw BenchTestFailure("CONNACK")
        }
        #expect(connack.reasonCode == .success)
        #expect(try decoder.decode(buffer: &input) == nil)
        #expect(input.readableBytes == 3)
    }

    @Test("topics expand per client; pubsub subscribers get the topic's filter")
    func topics() {
        var plan = BenchPlan(scenario: .pubsub)
        plan.topic = "fleet/%c/t/%i"
        #expect(plan.clientIdentifier(number: 3, subscriber: false) == "bench-pub-3")
        #expect(plan.clientIdentifier(number: 3, subscriber: true) == "bench-sub-3")
        #expect(BenchPlan.expand(plan.topic, number: 3, clientIdentifier: "bench-pub-3") == "fleet/bench-pub-3/t/3")
        #expect(plan.effectiveSubscriptionFilter == "fleet/+/t/+")
        #expect(BenchPlan(scenario: .sub).clientIdentifier(number: 1, subscriber: true) == "bench-sub-1")
        #expect(BenchPlan(scenario: .pub).clientIdentifier(number: 1, subscriber: false) == "bench-pub-1")
        #expect(BenchPlan(scenario: .conn).clientIdentifier(number: 2, subscriber: false) == "bench-conn-2")
    }

    @Test("bad plans are refused naming the option")
    func validation() {
        var plan = BenchPlan(scenario: .pub)
        #expect(plan.validate() == nil)
        plan.payloadSize = 8
        #expect(plan.validate()?.contains("--size") == true)
        plan = BenchPlan(scenario: .pub)
        plan.topic = "bench/+"
        #expect(plan.validate()?.contains("--topic") == true)
        plan = BenchPlan(scenario: .sub)
        plan.topic = "bench/#"
        #expect(plan.validate() == nil)
        plan.port = 0
        #expect(plan.validate()?.contains("--port") == true)
        plan = BenchPlan(scenario: .conn)
        plan.sourceAddresses = ["127.0.0.2", "::1"]
        #expect(plan.validate() == nil)
        plan.sourceAddresses.append("localhost")
        #expect(plan.validate()?.contains("'localhost'") == true)
    }
}

struct BenchTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
