import MQTTCore
import NIOCore
import Synchronization

/// One load-generating client: CONNECT, then SUBSCRIBE for a subscriber, then (when the run
/// starts) PUBLISH for a publisher, acknowledging and counting what comes back. Publishes are
/// written from a pre-encoded frame with the timestamp, sequence and packet identifier
/// patched in, so that the generator costs little per message.
final class BenchClientHandler: ChannelInboundHandler {
    typealias InboundIn = BenchInbound
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
    private var pumpScheduled = false
    /// What is to be written at the end of this read cycle or publishing burst: one write
    /// and one flush for many packets.
    private var outgoing: ByteBuffer?
    /// Counts and latencies since the last hand-over to the recorder (one lock per burst).
    private var pending = PendingCounts()
    /// pubsub: the end-to-end window (a publisher's own, or the one a subscriber reports to).
    private let deliveryWindow: DeliveryWindow?
    private var publisherWindow: PublisherWindow?
    private var stallCheck: Scheduled<Void>?

    init(
        role: Role, number: Int, plan: BenchPlan, recorder: BenchRecorder, ready: EventLoopPromise<Void>,
        window: DeliveryWindow? = nil
    ) {
        self.deliveryWindow = window
        self.publisherWindow = role == .publisher ? PublisherWindow(window: window, number: number) : nil
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
        case .publish(let qos, let packetIdentifier, let sentAt, let publisher):
            received(qos: qos, packetIdentifier: packetIdentifier, sentAt: sentAt, publisher: publisher)
        case .acknowledgement(let type, let packetIdentifier, let reasonCode):
            switch type {
            case .puback where plan.qos == .atLeastOnce, .pubcomp:
                acknowledged(packetIdentifier, reasonCode: reasonCode)
            case .pubrec:
                if reasonCode >= 0x80 {
                    acknowledged(packetIdentifier, reasonCode: reasonCode)
                } else {
                    writeAcknowledgement(type: .pubrel, packetIdentifier, context: context)
                }
            case .pubrel: writeAcknowledgement(type: .pubcomp, packetIdentifier, context: context)
            default: break
            }
        case .packet(let packet):
            receivedControl(packet, context: context)
        }
    }

    private func receivedControl(_ packet: MQTTPacket, context: ChannelHandlerContext) {
        switch packet {
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
        case .disconnect(let disconnect):
            recorder.record { $0.error("DISCONNECT \(disconnect.reasonCode)") }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flushOutgoing(context)
        context.fireChannelReadComplete()
    }

    /// The gathering buffer, taken out so that appending to it does not copy it (the copy
    /// left behind would share its storage).
    private func takeOutgoing(_ context: ChannelHandlerContext, capacity: Int) -> ByteBuffer {
        guard let buffer = outgoing else { return context.channel.allocator.buffer(capacity: capacity) }
        outgoing = nil
        return buffer
    }

    /// Writes and flushes what was gathered, and hands the counts to the recorder.
    private func flushOutgoing(_ context: ChannelHandlerContext) {
        if let buffer = outgoing {
            outgoing = nil
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }
        if !pending.isEmpty {
            recorder.record { pending.apply(to: &$0) }
            pending.reset()
        }
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
        if let slot = publisherWindow?.slot {
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            let eventLoop = context.eventLoop
            slot.wake.withLock { $0 = { eventLoop.execute { handler.value.windowOpened() } } }
        }
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
        stallCheck?.cancel()
        publisherWindow?.slot.wake.withLock { $0 = nil }
    }

    private func windowOpened() {
        stallCheck?.cancel()
        stallCheck = nil
        if messagesPerNanosecond > 0 { publishDue() } else { pump() }
    }

    /// Whether the delivery window lets another message go; while it is shut, a check a second
    /// later starts it afresh if nothing was delivered meanwhile.
    private func windowAllows() -> Bool {
        guard let window = publisherWindow else { return true }
        if window.mayPublish(sent: Int(sequence)) { return true }
        guard stallCheck == nil, let context else { return false }
        let deliveredThen = window.delivered
        stallCheck = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) { [weak self] in
            guard let self else { return }
            self.stallCheck = nil
            guard self.running, var window = self.publisherWindow, window.delivered == deliveredThen else { return }
            window.reset(sent: Int(self.sequence))
            self.publisherWindow = window
            self.recorder.record { $0.windowResets += 1 }
            self.windowOpened()
        }
        return false
    }

    /// Sends an MQTT DISCONNECT and closes.
    func disconnect() {
        stop()
        guard let context, context.channel.isActive else { return }
        flushOutgoing(context)
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
            && windowAllows()
    }

    private func publishDue() {
        guard let context, running else { return }
        let due = Int(Double(monotonicNanoseconds() - startedAt) * messagesPerNanosecond) + 1 - Int(sequence)
        var sent = 0
        while sent < due, mayPublish, context.channel.isWritable {
            publishOne(context: context)
            sent += 1
        }
        flushOutgoing(context)
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
        flushOutgoing(context)
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
        var buffer = takeOutgoing(context, capacity: 64 * frame.template.readableBytes)
        frame.append(
            to: &buffer, sentAt: now, publisher: UInt32(truncatingIfNeeded: number), sequence: sequence,
            packetIdentifier: packetIdentifier)
        outgoing = buffer
        pending.published += 1
    }

    private func acknowledged(_ packetIdentifier: UInt16, reasonCode: UInt8) {
        guard let sentAt = inflight.removeValue(forKey: packetIdentifier) else {
            recorder.record { $0.error("acknowledgement of unknown packet \(packetIdentifier)") }
            return
        }
        if reasonCode < 0x80 {
            pending.acknowledged += 1
            pending.acknowledgementLatencies.append(monotonicNanoseconds() - sentAt)
        } else {
            let code = MQTTReasonCode(rawValue: reasonCode)
            recorder.record {
                $0.refused += 1
                $0.error("publish refused: \(code)")
            }
        }
        guard let context, running, plan.rate == 0 else { return }
        while mayPublish, context.channel.isWritable { publishOne(context: context) }
    }

    private func received(qos: MQTTQoS, packetIdentifier: UInt16, sentAt: UInt64?, publisher: UInt32?) {
        let now = monotonicNanoseconds()
        if let deliveryWindow, let publisher { deliveryWindow.delivered(from: Int(publisher)) }
        pending.received += 1
        if let sentAt, sentAt <= now { pending.deliveryLatencies.append(now - sentAt) }
        guard let context else { return }
        switch qos {
        case .atMostOnce: break
        case .atLeastOnce: writeAcknowledgement(type: .puback, packetIdentifier, context: context)
        case .exactlyOnce: writeAcknowledgement(type: .pubrec, packetIdentifier, context: context)
        }
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP with success: a reason code of 0 may be left out in
    /// 5.0, which makes the four bytes the same in both versions.
    private func writeAcknowledgement(type: MQTTPacketType, _ packetIdentifier: UInt16, context: ChannelHandlerContext)
    {
        var buffer = takeOutgoing(context, capacity: 256)
        buffer.writeInteger(type.rawValue << 4 | type.requiredFlags)
        buffer.writeInteger(UInt8(2))
        buffer.writeInteger(packetIdentifier)
        outgoing = buffer
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

    /// Appends one message to `buffer`.
    func append(
        to buffer: inout ByteBuffer, sentAt: UInt64, publisher: UInt32, sequence: UInt32, packetIdentifier: UInt16
    ) {
        let start = buffer.writerIndex
        buffer.writeImmutableBuffer(template)
        buffer.setInteger(sentAt, at: start + payloadOffset)
        buffer.setInteger(publisher, at: start + payloadOffset + 8)
        buffer.setInteger(sequence, at: start + payloadOffset + 12)
        if let packetIdentifierOffset { buffer.setInteger(packetIdentifier, at: start + packetIdentifierOffset) }
    }
}

/// A client's counts between two hand-overs to its recorder.
struct PendingCounts {
    var published = 0
    var acknowledged = 0
    var received = 0
    var deliveryLatencies: [UInt64] = []
    var acknowledgementLatencies: [UInt64] = []

    var isEmpty: Bool { published == 0 && acknowledged == 0 && received == 0 }

    /// Back to zero, keeping the arrays' storage for the next burst.
    mutating func reset() {
        published = 0
        acknowledged = 0
        received = 0
        deliveryLatencies.removeAll(keepingCapacity: true)
        acknowledgementLatencies.removeAll(keepingCapacity: true)
    }

    func apply(to counts: inout BenchCounts) {
        counts.published += published
        counts.acknowledged += acknowledged
        counts.received += received
        for latency in deliveryLatencies { counts.deliveryLatency.record(latency) }
        for latency in acknowledgementLatencies { counts.acknowledgementLatency.record(latency) }
    }
}
