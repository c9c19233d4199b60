import MQTTCore
import NIOCore

/// One load-generating client: CONNECT, then SUBSCRIBE for a subscriber, then (when the run
/// starts) PUBLISH for a publisher, acknowledging and counting what comes back. Publishes are
/// written from a pre-encoded frame with the timestamp, sequence and packet identifier
/// patched in, so that the generator costs little per message.
final class BenchClientHandler: ChannelInboundHandler {
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = ByteBuffer

    enum Role { case idle, publisher, subscriber }

    private let role: Role
    private let number: Int
    private let clientIdentifier: String
    private let plan: BenchPlan
    private let recorder: BenchRecorder
    /// Succeeds when the client is ready (connected, and subscribed for a subscriber).
    private let ready: EventLoopPromise<Void>
    private var connectStartedAt: UInt64 = 0
    private var isReady = false
    /// The ready promise is completed once: by readiness, a refusal, a close or the timeout.
    private var settled = false
    private var connectTimeout: Scheduled<Void>?

    // Publishing.
    private let frame: PublishFrame
    private var context: ChannelHandlerContext?
    private var running = false
    private var startedAt: UInt64 = 0
    private var messagesPerNanosecond = 0.0
    private var sequence: UInt32 = 0
    private var inflight: [UInt16: UInt64] = [:]
    private var inflightLimit: Int
    private var nextPacketIdentifier: UInt16 = 0
    private var pacing: RepeatedTask?
    private var needsFlush = false
    private var pumpScheduled = false

    init(
        role: Role, number: Int, plan: BenchPlan, recorder: BenchRecorder, ready: EventLoopPromise<Void>
    ) {
        self.role = role
        self.number = number
        self.clientIdentifier = plan.clientIdentifier(number: number, subscriber: role == .subscriber)
        self.plan = plan
        self.recorder = recorder
        self.ready = ready
        self.inflightLimit = plan.qos == .atMostOnce ? .max : plan.inflight
        self.frame = PublishFrame(
            topic: BenchPlan.expand(plan.topic, number: number, clientIdentifier: clientIdentifier),
            qos: plan.qos, payloadSize: plan.payloadSize, version: plan.protocolVersion)
    }

    var isFinished: Bool { plan.limit > 0 && Int(sequence) >= plan.limit && inflight.isEmpty }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        connectStartedAt = monotonicNanoseconds()
        var properties: MQTTProperties = []
        if plan.protocolVersion == .v5 {
            properties.items.append(.receiveMaximum(65_535))
            if !plan.cleanStart { properties.items.append(.sessionExpiryInterval(.max)) }
        }
        let connect = MQTTPacket.Connect(
            protocolVersion: plan.protocolVersion, clientIdentifier: clientIdentifier,
            cleanStart: plan.cleanStart, keepAlive: plan.keepAlive, username: plan.username,
            password: plan.password.map { Array($0.utf8) }, properties: properties)
        send(.connect(connect), context: context)
        context.flush()
        connectTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(10)) { [weak self] in
            guard let self, !self.settled else { return }
            self.fail("no CONNACK or SUBACK within 10 s")
            self.context?.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        pacing?.cancel()
        running = false
        if isReady {
            recorder.record { $0.disconnects += 1 }
        } else if !settled {
            fail("connection closed before CONNACK")
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        recorder.record { $0.error("\(error)") }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .connack(let connack):
            guard connack.reasonCode.rawValue < 0x80 else {
                fail("CONNACK \(connack.reasonCode)")
                context.close(promise: nil)
                return
            }
            if let receiveMaximum = connack.properties.receiveMaximum, plan.qos != .atMostOnce {
                inflightLimit = min(inflightLimit, Int(receiveMaximum))
            }
            if role == .subscriber {
                let filter = BenchPlan.expand(
                    plan.effectiveSubscriptionFilter, number: number, clientIdentifier: clientIdentifier)
                let subscribe = MQTTPacket.Subscribe(
                    packetIdentifier: 1,
                    subscriptions: [.init(topicFilter: filter, options: .init(qos: plan.qos))])
                send(.subscribe(subscribe), context: context)
                context.flush()
            } else {
                becomeReady()
            }
        case .suback(let suback):
            guard suback.reasonCodes.allSatisfy({ $0.rawValue < 0x80 }) else {
                fail("SUBACK \(suback.reasonCodes.map { "\($0)" }.joined(separator: ","))")
                context.close(promise: nil)
                return
            }
            becomeReady()
        case .publish(let publish):
            received(publish, context: context)
        case .puback(let ack):
            guard plan.qos == .atLeastOnce else { return }
            acknowledged(ack)
        case .pubrec(let ack):
            if ack.reasonCode.rawValue >= 0x80 {
                acknowledged(ack)
            } else {
                writeAcknowledgement(type: .pubrel, ack.packetIdentifier, context: context)
            }
        case .pubcomp(let ack):
            acknowledged(ack)
        case .pubrel(let ack):
            writeAcknowledgement(type: .pubcomp, ack.packetIdentifier, context: context)
        case .disconnect(let disconnect):
            recorder.record { $0.error("DISCONNECT \(disconnect.reasonCode)") }
        case .pingresp, .unsuback, .auth, .connect, .subscribe, .unsubscribe, .pingreq:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, running, plan.rate == 0 { pump() }
        context.fireChannelWritabilityChanged()
    }

    /// Starts publishing: paced to this publisher's share of the rate, or as fast as the
    /// broker takes messages (the TCP window for QoS 0, the in-flight window for QoS 1/2).
    func start(messagesPerSecond: Double) {
        guard role == .publisher, let context, context.channel.isActive else { return }
        running = true
        startedAt = monotonicNanoseconds()
        if messagesPerSecond > 0 {
            messagesPerNanosecond = messagesPerSecond / 1e9
            let tick = TimeAmount.nanoseconds(max(1_000_000, Int64(1e9 / messagesPerSecond)))
            // Cancelled when the channel closes, so the handler lives exactly as long.
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            pacing = context.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: tick) { _ in
                handler.value.publishDue()
            }
        } else {
            pump()
        }
    }

    func stop() {
        running = false
        pacing?.cancel()
    }

    /// Sends an MQTT DISCONNECT and closes.
    func disconnect() {
        stop()
        guard let context, context.channel.isActive else { return }
        send(.disconnect(.init()), context: context)
        context.flush()
        // Closing on purpose is not counted as the broker's disconnect.
        isReady = false
        context.close(promise: nil)
    }

    private func becomeReady() {
        guard !settled else { return }
        settled = true
        isReady = true
        connectTimeout?.cancel()
        let latency = monotonicNanoseconds() - connectStartedAt
        recorder.record {
            $0.connected += 1
            $0.connectLatency.record(latency)
        }
        ready.succeed()
    }

    private func fail(_ reason: String) {
        guard !settled else { return }
        settled = true
        connectTimeout?.cancel()
        recorder.record {
            $0.connectFailures += 1
            $0.error(reason)
        }
        ready.fail(BenchConnectFailure(reason: reason))
    }

    private var mayPublish: Bool {
        running && inflight.count < inflightLimit && (plan.limit == 0 || Int(sequence) < plan.limit)
    }

    private func publishDue() {
        guard let context, running else { return }
        let due = Int(Double(monotonicNanoseconds() - startedAt) * messagesPerNanosecond) + 1 - Int(sequence)
        var sent = 0
        while sent < due, mayPublish, context.channel.isWritable {
            publishOne(context: context)
            sent += 1
        }
        if sent > 0 { context.flush() }
    }

    /// Writes a batch, then yields the loop to the other clients before the next.
    private func pump() {
        guard let context, running, !pumpScheduled else { return }
        var sent = 0
        while sent < 64, mayPublish, context.channel.isWritable {
            publishOne(context: context)
            sent += 1
        }
        guard sent > 0 else { return }
        context.flush()
        // QoS 1/2 refill from their acknowledgements; QoS 0 goes on while the socket takes it.
        if plan.qos == .atMostOnce, context.channel.isWritable {
            pumpScheduled = true
            context.eventLoop.assumeIsolated().execute {
                self.pumpScheduled = false
                self.pump()
            }
        }
    }

    private func publishOne(context: ChannelHandlerContext) {
        sequence &+= 1
        let now = monotonicNanoseconds()
        var packetIdentifier: UInt16 = 0
        if plan.qos != .atMostOnce {
            repeat {
                nextPacketIdentifier = nextPacketIdentifier == .max ? 1 : nextPacketIdentifier + 1
            } while inflight[nextPacketIdentifier] != nil
            packetIdentifier = nextPacketIdentifier
            inflight[packetIdentifier] = now
        }
        let buffer = frame.make(
            allocator: context.channel.allocator, sentAt: now, publisher: UInt32(truncatingIfNeeded: number),
            sequence: sequence, packetIdentifier: packetIdentifier)
        context.write(wrapOutboundOut(buffer), promise: nil)
        recorder.record { $0.published += 1 }
    }

    private func acknowledged(_ ack: MQTTPacket.PublishAcknowledgement) {
        guard let sentAt = inflight.removeValue(forKey: ack.packetIdentifier) else {
            recorder.record { $0.error("acknowledgement of unknown packet \(ack.packetIdentifier)") }
            return
        }
        let latency = monotonicNanoseconds() - sentAt
        let success = ack.reasonCode.rawValue < 0x80
        recorder.record {
            if success {
                $0.acknowledged += 1
                $0.acknowledgementLatency.record(latency)
            } else {
                $0.refused += 1
                $0.error("publish refused: \(ack.reasonCode)")
            }
        }
        guard let context, running, plan.rate == 0 else { return }
        while mayPublish, context.channel.isWritable {
            publishOne(context: context)
            needsFlush = true
        }
    }

    private func received(_ publish: MQTTPacket.Publish, context: ChannelHandlerContext) {
        let now = monotonicNanoseconds()
        let sentAt = publish.payload.getInteger(at: publish.payload.readerIndex, as: UInt64.self)
        recorder.record {
            $0.received += 1
            if let sentAt, sentAt <= now, publish.payload.readableBytes >= BenchPayload.headerSize {
                $0.deliveryLatency.record(now - sentAt)
            }
        }
        switch publish.qos {
        case .atMostOnce: break
        case .atLeastOnce: writeAcknowledgement(type: .puback, publish.packetIdentifier, context: context)
        case .exactlyOnce: writeAcknowledgement(type: .pubrec, publish.packetIdentifier, context: context)
        }
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP with success: a reason code of 0 may be left out in
    /// 5.0, which makes the four bytes the same in both versions.
    private func writeAcknowledgement(type: MQTTPacketType, _ packetIdentifier: UInt16, context: ChannelHandlerContext)
    {
        var buffer = context.channel.allocator.buffer(capacity: 4)
        buffer.writeInteger(type.rawValue << 4 | type.requiredFlags)
        buffer.writeInteger(UInt8(2))
        buffer.writeInteger(packetIdentifier)
        context.write(wrapOutboundOut(buffer), promise: nil)
        needsFlush = true
    }

    private func send(_ packet: MQTTPacket, context: ChannelHandlerContext) {
        do {
            var buffer = context.channel.allocator.buffer(capacity: 64)
            try packet.write(to: &buffer, version: plan.protocolVersion)
            context.write(wrapOutboundOut(buffer), promise: nil)
        } catch {
            recorder.record { $0.error("encoding \(packet.type): \(error)") }
        }
    }
}

struct BenchConnectFailure: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}

/// A publisher's PUBLISH, encoded once; each message copies it and patches in its header
/// fields.
struct PublishFrame {
    let template: ByteBuffer
    let payloadOffset: Int
    let packetIdentifierOffset: Int?

    init(topic: String, qos: MQTTQoS, payloadSize: Int, version: MQTTProtocolVersion) {
        var payload = ByteBuffer()
        payload.writeRepeatingByte(0x2E, count: payloadSize)
        let publish = MQTTPacket.Publish(
            topicName: topic, payload: payload, qos: qos, packetIdentifier: qos == .atMostOnce ? 0 : 1)
        var buffer = ByteBuffer()
        // A topic the generator was given is valid, or the broker says why not.
        try? MQTTPacket.publish(publish).write(to: &buffer, version: version)
        template = buffer
        payloadOffset = buffer.writerIndex - payloadSize
        // 5.0 puts the (empty) property length between the packet identifier and the payload.
        packetIdentifierOffset = qos == .atMostOnce ? nil : payloadOffset - 2 - (version == .v5 ? 1 : 0)
    }

    func make(
        allocator: ByteBufferAllocator, sentAt: UInt64, publisher: UInt32, sequence: UInt32, packetIdentifier: UInt16
    ) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: template.readableBytes)
        buffer.writeImmutableBuffer(template)
        buffer.setInteger(sentAt, at: payloadOffset)
        buffer.setInteger(publisher, at: payloadOffset + 8)
        buffer.setInteger(sequence, at: payloadOffset + 12)
        if let packetIdentifierOffset { buffer.setInteger(packetIdentifier, at: packetIdentifierOffset) }
        return buffer
    }
}
