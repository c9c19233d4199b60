import Foundation
public import GatehouseAuth
public import Logging
public import MQTTCore
public import NIOCore

/// Topic aliases from the broker to a 5.0 client, within the Topic Alias Maximum it announced.
///
/// The first topics delivered take the aliases and keep them for the connection; later topics
/// go out in full. A fleet's subscriber sees a small, stable set of topics, so first come is as
/// good as least-recently-used there, and costs one dictionary lookup per delivery instead of
/// bookkeeping and re-sent topics on every replacement.
struct OutboundTopicAliases {
    let maximum: UInt16
    private var aliases: [String: UInt16] = [:]

    init(maximum: UInt16) { self.maximum = maximum }

    var count: Int { aliases.count }

    /// The alias to send `topic` with, and whether this packet introduces it (and so must carry
    /// the topic too); nil when the client takes no aliases or all are taken by other topics.
    func alias(for topic: String) -> (alias: UInt16, isNew: Bool)? {
        guard maximum > 0 else { return nil }
        if let known = aliases[topic] { return (known, false) }
        guard aliases.count < Int(maximum) else { return nil }
        return (UInt16(aliases.count + 1), true)
    }

    mutating func assign(_ alias: UInt16, to topic: String) {
        aliases[topic] = alias
    }
}

/// One client connection: the MQTT protocol from CONNECT to close, on the connection's event
/// loop. Broker-wide state (sessions, subscriptions, retained messages) lives in `Broker`.
public final class BrokerConnectionHandler: ChannelInboundHandler, SessionConnection, @unchecked Sendable {
    public typealias InboundIn = MQTTPacket
    public typealias OutboundOut = ByteBuffer

    /// The connection's protocol state. Every transition happens on `eventLoop`.
    enum State {
        case awaitingConnect
        /// CONNECT is being authenticated off the loop; packets that arrive meanwhile wait.
        case authenticating(pending: [MQTTPacket])
        case connected(Connected)
        case closed
    }

    struct Connected {
        var version: MQTTProtocolVersion
        var session: Session
        var principal: Principal
        var will: MQTTPacket.Will?
        var inboundTopicAliases: [UInt16: String] = [:]
        /// The client's Maximum Packet Size: larger messages are not sent to it. [MQTT-3.1.2-24]
        var clientMaximumPacketSize: Int
        var outboundTopicAliases: OutboundTopicAliases
    }

    // Only touched on the event loop (hence @unchecked Sendable for the protocol's sake).
    private var state: State = .awaitingConnect
    private var context: ChannelHandlerContext?
    private var deliveries = DeliveryBatch()
    /// Acknowledgements waiting for the store to commit what they promise, in the order they
    /// must go out [MQTT-4.6.0-2]; a ticket of 0 waits only for those ahead of it.
    private var heldAcknowledgements = CircularBuffer<(packet: MQTTPacket, ticket: UInt64)>(initialCapacity: 1)
    private var highestHeldTicket: UInt64 = 0
    private var awaitingCommit = false
    /// A held SUBACK holds the session's output too: the retained messages it unlocks follow it.
    private var heldSubAcks = 0
    /// Inside a read cycle, replies are written but flushed once at read-complete.
    private var inReadCycle = false
    private var flushPending = false
    /// Acknowledgements freed the in-flight window: drain once at read-complete.
    private var drainPending = false
    private var tally = TrafficTally()
    private var connectTimeoutTask: Scheduled<Void>?
    private var credentialExpiryTask: Scheduled<Void>?
    /// Keep-alive: one timer per connection, re-armed from the time of the last packet, instead
    /// of an extra pipeline handler. [MQTT-3.1.2-24]
    private var keepAliveTask: Scheduled<Void>?
    private var keepAliveTimeout = TimeAmount.zero
    private var lastPacketAt = NIODeadline.uptimeNanoseconds(0)
    /// This connection's publish decisions (its principal is fixed once connected).
    private var publishDecisions = DecisionCache()
    private var logger: ConnectionLogger
    private let broker: Broker
    private let connectTimeout: TimeAmount
    /// Verified by the TLS listener before the first MQTT byte; dropped once CONNECT has used
    /// it, as an idle connection should not carry its DER and names.
    private var clientCertificate: ClientCertificate?
    public let eventLoop: any EventLoop

    public init(
        broker: Broker,
        eventLoop: any EventLoop,
        connectTimeout: TimeAmount,
        clientCertificate: ClientCertificate? = nil,
        logger: Logger
    ) {
        self.broker = broker
        self.eventLoop = eventLoop
        self.connectTimeout = connectTimeout
        self.clientCertificate = clientCertificate
        self.logger = ConnectionLogger(logger)
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        logger.remote = context.remoteAddress
        connectTimeoutTask = eventLoop.scheduleTask(in: connectTimeout) { [self] in
            if case .awaitingConnect = state {
                logger.debug("no CONNECT within the connect timeout")
                close(sendingDisconnect: nil)
            }
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        connectTimeoutTask?.cancel()
        credentialExpiryTask?.cancel()
        keepAliveTask?.cancel()
        self.context = nil
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        inReadCycle = true
        handle(unwrapInboundIn(data))
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        // A packet arrived in this cycle (channelRead set the flag): the keep-alive restarts.
        if inReadCycle, keepAliveTask != nil { lastPacketAt = eventLoop.now }
        inReadCycle = false
        if drainPending {
            drainPending = false
            sessionHasOutput()
        }
        if flushPending {
            flushPending = false
            context.flush()
        }
        deliveries.wakeAll()
        awaitCommit()
        tally.flush(into: broker.statistics)
        context.fireChannelReadComplete()
    }

    // MARK: Acknowledgements that wait for the store

    /// Sends an acknowledgement now, or holds it until the store has committed what it
    /// promises (`durable`) or until those ahead of it go.
    private func acknowledge(_ packet: MQTTPacket, durable: Bool) {
        if durable, let store = broker.store {
            let ticket = store.currentTicket()
            highestHeldTicket = max(highestHeldTicket, ticket)
            hold(packet, ticket: ticket)
        } else if !heldAcknowledgements.isEmpty {
            hold(packet, ticket: 0)
        } else {
            send(packet)
        }
    }

    private func hold(_ packet: MQTTPacket, ticket: UInt64) {
        if case .suback = packet { heldSubAcks += 1 }
        heldAcknowledgements.append((packet, ticket))
    }

    /// Asks the store, once per read cycle, to say when the held acknowledgements may go.
    private func awaitCommit() {
        guard !awaitingCommit, highestHeldTicket > 0, let store = broker.store else { return }
        awaitingCommit = true
        let ticket = highestHeldTicket
        store.whenDurable(ticket, on: eventLoop) { [self] in
            awaitingCommit = false
            releaseAcknowledgements(through: ticket)
            awaitCommit()
        }
    }

    private func releaseAcknowledgements(through ticket: UInt64) {
        if highestHeldTicket <= ticket { highestHeldTicket = 0 }
        let releasedSubAck = heldSubAcks > 0
        // Written as one batch, flushed once: a commit releases many acknowledgements.
        guard let context, case .connected(let connected) = state else { return }
        var released = false
        while let first = heldAcknowledgements.first, first.ticket <= ticket {
            heldAcknowledgements.removeFirst()
            if case .suback = first.packet { heldSubAcks -= 1 }
            write(first.packet, version: connected.version, context: context)
            released = true
        }
        if released { flushOrDefer(context) }
        if releasedSubAck && heldSubAcks == 0 { sessionHasOutput() }
    }

    private func handle(_ packet: MQTTPacket) {
        switch state {
        case .awaitingConnect:
            guard case .connect(let connect) = packet else {
                close(sendingDisconnect: nil)  // [MQTT-3.1.0-1]
                return
            }
            connectTimeoutTask?.cancel()
            beginConnect(connect)
        case .authenticating(var pending):
            pending.append(packet)
            state = .authenticating(pending: pending)
        case .connected(let connected):
            handleConnected(packet, connected)
        case .closed:
            break
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Ended with a DISCONNECT and draining: what arrives now (the decoder refuses every byte
        // after a violation) is dropped until the drain timer closes.
        if case .closed = state { return }
        guard let violation = error as? MQTTProtocolViolation else {
            logger.debug("connection error", metadata: ["error": "\(error)"])
            close(sendingDisconnect: nil)
            return
        }
        logger.info("protocol violation", metadata: ["violation": "\(violation)", "reason": "\(violation.reasonCode)"])
        switch state {
        case .awaitingConnect:
            // An unknown level gets the 3.1.1 return code 1, which every version reads. [MQTT-3.1.2-2]
            if case .unsupportedProtocolVersion = violation {
                sendAndClose(.connack(.init(reasonCode: .unsupportedProtocolVersion)), version: .v311)
            } else {
                close(sendingDisconnect: nil)
            }
        default:
            close(sendingDisconnect: violation.reasonCode)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        connectionEnded()
        context.fireChannelInactive()
    }

    // MARK: CONNECT

    private func beginConnect(_ connect: MQTTPacket.Connect) {
        var clientID = connect.clientIdentifier
        var assignedIdentifier: String?
        if clientID.isEmpty {
            // 3.1.1 assigns an identifier only to a clean session. [MQTT-3.1.3-8]
            guard connect.protocolVersion == .v5 || connect.cleanStart else {
                sendAndClose(.connack(.init(reasonCode: .clientIdentifierNotValid)), version: connect.protocolVersion)
                return
            }
            clientID = "gatehouse-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
            assignedIdentifier = clientID
        }
        logger.clientID = clientID
        let credentials = ConnectCredentials(
            clientIdentifier: clientID,
            username: connect.username,
            password: connect.password,
            remoteAddress: context?.remoteAddress?.ipAddress,
            clientCertificate: clientCertificate
        )
        clientCertificate = nil
        state = .authenticating(pending: [])
        let authenticator = broker.authenticator
        if let known = authenticator.authenticateImmediately(credentials) {
            finishConnect(connect, clientID: clientID, assignedIdentifier: assignedIdentifier, outcome: known)
            return
        }
        let outcome = eventLoop.makePromise(of: AuthenticationOutcome.self)
        outcome.completeWithTask { await authenticator.authenticate(credentials) }
        outcome.futureResult.assumeIsolatedUnsafeUnchecked().whenSuccess { [self] result in
            finishConnect(connect, clientID: clientID, assignedIdentifier: assignedIdentifier, outcome: result)
        }
    }

    private func finishConnect(
        _ connect: MQTTPacket.Connect,
        clientID: String,
        assignedIdentifier: String?,
        outcome: AuthenticationOutcome
    ) {
        guard case .authenticating(let pending) = state else { return }
        let version = connect.protocolVersion
        guard case .accepted(let principal) = outcome else {
            // The same answer whatever was wrong: a client must not learn which part failed.
            let code: MQTTReasonCode =
                connect.username == nil && connect.password == nil ? .notAuthorized : .badUserNameOrPassword
            logger.info("authentication refused")
            sendAndClose(.connack(.init(reasonCode: code)), version: version)
            return
        }
        let configuration = broker.configuration
        let expiry: UInt32 =
            version == .v5 ? (connect.properties.sessionExpiryInterval ?? 0) : (connect.cleanStart ? 0 : UInt32.max)
        let receiveMaximum =
            version == .v5
            ? Int(connect.properties.receiveMaximum ?? UInt16.max) : configuration.maximumInflightMessages
        let opened: Broker.OpenedSession
        do {
            opened = try broker.openSession(
                clientID: clientID,
                cleanStart: connect.cleanStart,
                expiryInterval: expiry,
                receiveMaximum: receiveMaximum,
                principal: principal,
                connection: self
            )
        } catch {
            logger.notice(
                "CONNECT refused: the session belongs to another identity",
                metadata: ["identity": "\(principal.identityID)"])
            sendAndClose(.connack(.init(reasonCode: .notAuthorized)), version: version)
            return
        }
        if let previous = opened.previousConnection {
            logger.info("session taken over")
            previous.disconnect(reason: .sessionTakenOver)
        }
        state = .connected(
            Connected(
                version: version,
                session: opened.session,
                principal: principal,
                will: connect.will,
                clientMaximumPacketSize: Int(connect.properties.maximumPacketSize ?? UInt32.max),
                outboundTopicAliases: OutboundTopicAliases(
                    maximum: version == .v5 ? connect.properties.topicAliasMaximum ?? 0 : 0)
            ))
        // The store keeps this connection's Will (and forgets a previous connection's), so that a
        // crash of the broker ends the connection as a drop would.
        opened.session.disarmWill()
        if let will = connect.will {
            opened.session.armWill(
                willMessage(will, clientID: clientID), delay: will.properties.willDelayInterval ?? 0)
        }

        var properties: [MQTTProperty] = []
        if version == .v5 {
            if let assignedIdentifier { properties.append(.assignedClientIdentifier(assignedIdentifier)) }
            properties += [
                .receiveMaximum(configuration.receiveMaximum),
                .topicAliasMaximum(configuration.topicAliasMaximum),
                .maximumPacketSize(UInt32(configuration.maximumPacketSize)),
                .retainAvailable(1),
                .wildcardSubscriptionAvailable(1),
                .subscriptionIdentifierAvailable(1),
                .sharedSubscriptionAvailable(1),
            ]
        }
        broker.statistics.add(broker.statistics.clientsConnected, 1)
        // The broker's maximum keep-alive overrides a longer (or disabled) one. [MQTT-3.2.2-21]
        var keepAlive = connect.keepAlive
        let maximumKeepAlive = configuration.maximumKeepAlive
        if maximumKeepAlive > 0 && (keepAlive == 0 || keepAlive > maximumKeepAlive) {
            keepAlive = maximumKeepAlive
            if version == .v5 { properties.append(.serverKeepAlive(maximumKeepAlive)) }
        }
        let sessionPresent = opened.sessionPresent && !connect.cleanStart
        send(
            .connack(
                .init(sessionPresent: sessionPresent, reasonCode: .success, properties: MQTTProperties(properties))))
        if keepAlive > 0 {
            // The client has one and a half keep-alive periods to send anything. [MQTT-3.1.2-24]
            keepAliveTimeout = .milliseconds(Int64(keepAlive) * 1_500)
            lastPacketAt = eventLoop.now
            armKeepAlive(in: keepAliveTimeout)
        }
        if let expiresAt = principal.expiresAt {
            // The credential's end is the session's end. [DISCONNECT 0x87 in 5.0]
            let remaining = max(0, expiresAt - Int64(Date().timeIntervalSince1970))
            credentialExpiryTask = eventLoop.scheduleTask(in: .seconds(remaining)) { [self] in
                logger.info("credential expired")
                close(sendingDisconnect: .notAuthorized)
            }
        }
        logger.debug("connected", metadata: ["version": "\(version)", "session_present": "\(sessionPresent)"])
        sessionHasOutput()
        for packet in pending { handle(packet) }
        drainPending = false
        sessionHasOutput()
        deliveries.wakeAll()
        awaitCommit()
    }

    private func armKeepAlive(in delay: TimeAmount) {
        keepAliveTask = eventLoop.scheduleTask(in: delay) { [self] in
            let idle = eventLoop.now - lastPacketAt
            guard idle >= keepAliveTimeout else {
                armKeepAlive(in: keepAliveTimeout - idle)
                return
            }
            logger.info("keep-alive timeout")
            close(sendingDisconnect: .keepAliveTimeout)
        }
    }

    // MARK: Connected

    private func handleConnected(_ packet: MQTTPacket, _ connected: Connected) {
        let session = connected.session
        switch packet {
        case .publish(let publish):
            receivePublish(publish, connected)
        case .puback(let ack):
            if session.completeOutbound(ack.packetIdentifier) { drainPending = true }
        case .pubrec(let ack):
            if ack.reasonCode.isFailure {
                if session.completeOutbound(ack.packetIdentifier) { drainPending = true }
            } else if session.releaseOutbound(ack.packetIdentifier) {
                send(.pubrel(.init(packetIdentifier: ack.packetIdentifier)))
            } else {
                send(.pubrel(.init(packetIdentifier: ack.packetIdentifier, reasonCode: .packetIdentifierNotFound)))
            }
        case .pubcomp(let ack):
            if session.completeOutbound(ack.packetIdentifier) { drainPending = true }
        case .pubrel(let ack):
            let known = session.releaseInboundQoS2(ack.packetIdentifier)
            send(
                .pubcomp(
                    .init(
                        packetIdentifier: ack.packetIdentifier, reasonCode: known ? .success : .packetIdentifierNotFound
                    )))
        case .subscribe(let subscribe):
            receiveSubscribe(subscribe, connected)
        case .unsubscribe(let unsubscribe):
            let codes = unsubscribe.topicFilters.map { filter -> MQTTReasonCode in
                broker.unsubscribe(session, filter: filter) ? .success : .noSubscriptionExisted
            }
            acknowledge(
                .unsuback(
                    .init(
                        packetIdentifier: unsubscribe.packetIdentifier,
                        reasonCodes: connected.version == .v5 ? codes : [])),
                durable: session.isStored)
        case .pingreq:
            send(.pingresp)
        case .disconnect(let disconnect):
            receiveDisconnect(disconnect, connected)
        case .connect:
            close(sendingDisconnect: .protocolError)  // a second CONNECT [MQTT-3.1.0-2]
        case .auth:
            close(sendingDisconnect: .protocolError)  // no extended authentication was started
        case .connack, .suback, .unsuback, .pingresp:
            close(sendingDisconnect: .protocolError)  // server-to-client packets
        }
    }

    private func receivePublish(_ publish: MQTTPacket.Publish, _ connected: Connected) {
        tally.messagesReceived += 1
        tally.bytesReceived += publish.payload.readableBytes
        var connected = connected
        let version = connected.version
        // Topic alias: a name sets the alias, an empty name uses it. [MQTT-3.3.2-12]
        var topic = publish.topicName
        if let alias = publish.properties.topicAlias {
            guard alias <= broker.configuration.topicAliasMaximum else {
                close(sendingDisconnect: .topicAliasInvalid)
                return
            }
            if topic.isEmpty {
                guard let known = connected.inboundTopicAliases[alias] else {
                    close(sendingDisconnect: .protocolError)
                    return
                }
                topic = known
            } else {
                connected.inboundTopicAliases[alias] = topic
                state = .connected(connected)
            }
        }
        var isRepeat = false
        var durable = false
        if publish.qos == .exactlyOnce {
            let limit = Int(broker.configuration.receiveMaximum)
            switch connected.session.receiveInboundQoS2(publish.packetIdentifier, limit: limit) {
            case .new: durable = connected.session.isStored
            case .duplicate: isRepeat = true
            case .overLimit:
                close(sendingDisconnect: .receiveMaximumExceeded)
                return
            }
        }
        var code: MQTTReasonCode = .success
        let levels = TopicLevels(topic)
        if publish.properties.payloadFormatIndicator == 1
            && String(validating: publish.payload.readableBytesView, as: UTF8.self) == nil
        {
            code = .payloadFormatInvalid
        } else if !broker.isWithinTopicLevelLimit(levels) {
            code = .topicNameInvalid
        } else if !broker.access.mayPublish(connected.principal, topic: levels, decisions: &publishDecisions) {
            code = .notAuthorized
        }

        if code == .success && !isRepeat {
            let message = RoutedMessage(
                publish: publish, topic: topic, publisherClientID: connected.session.clientID, now: .now())
            deliveries.wroteToStore = false
            if broker.publish(message, topic: levels, into: &deliveries) == 0 && version == .v5 {
                code = .noMatchingSubscribers
            }
            if deliveries.wroteToStore { durable = true }
        } else if code.isFailure {
            logger.debug("publish refused", metadata: ["topic": "\(topic)", "reason": "\(code)"])
            // A refused QoS 2 message is not held for PUBREL.
            if publish.qos == .exactlyOnce && !isRepeat {
                _ = connected.session.releaseInboundQoS2(publish.packetIdentifier)
            }
            if code == .notAuthorized && broker.configuration.disconnectOnRefusedPublish {
                close(sendingDisconnect: .notAuthorized)
                return
            }
        }
        // 3.1.1 has no way to say no: acknowledge and drop. [MQTT-3.3.5-2]
        let wireCode: MQTTReasonCode = version == .v5 ? code : .success
        switch publish.qos {
        case .atMostOnce: break
        case .atLeastOnce:
            acknowledge(
                .puback(.init(packetIdentifier: publish.packetIdentifier, reasonCode: wireCode)), durable: durable)
        case .exactlyOnce:
            acknowledge(
                .pubrec(.init(packetIdentifier: publish.packetIdentifier, reasonCode: wireCode)), durable: durable)
        }
    }

    private func receiveSubscribe(_ subscribe: MQTTPacket.Subscribe, _ connected: Connected) {
        let identifier = subscribe.properties.subscriptionIdentifiers.first
        var codes: [MQTTReasonCode] = []
        for subscription in subscribe.subscriptions {
            let filter: MQTTTopicFilter
            do {
                filter = try MQTTTopicFilter(parsing: subscription.topicFilter)
            } catch {
                codes.append(error.reasonCode)
                continue
            }
            guard broker.isWithinTopicLevelLimit(filter.filter) else {
                codes.append(.topicFilterInvalid)
                continue
            }
            let isNew = !connected.session.hasSubscription(filter)
            guard !isNew || connected.session.subscriptionCount < broker.configuration.maximumSubscriptionsPerClient
            else {
                codes.append(.quotaExceeded)
                continue
            }
            // A shared subscription is authorized on its filter, not on the $share/ prefix.
            guard broker.access.maySubscribe(connected.principal, filter: filter) else {
                codes.append(.notAuthorized)
                continue
            }
            let retained = broker.subscribe(
                connected.session, filter: filter, options: subscription.options, identifier: identifier)
            broker.deliverRetained(
                retained, to: connected.session, options: subscription.options, identifier: identifier,
                into: &deliveries)
            codes.append(MQTTReasonCode(rawValue: subscription.options.qos.rawValue))
        }
        // SUBACK goes before the retained messages it unlocks: those wait for the drain.
        acknowledge(
            .suback(.init(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes)),
            durable: connected.session.isStored)
    }

    private func receiveDisconnect(_ disconnect: MQTTPacket.Disconnect, _ connected: Connected) {
        var connected = connected
        if let expiry = disconnect.properties.sessionExpiryInterval {
            // A session that was to end with the connection cannot be made to outlive it. [MQTT-3.14.2-2]
            if connected.session.expiryInterval == 0 && expiry != 0 {
                close(sendingDisconnect: .protocolError)
                return
            }
            connected.session.expiryInterval = expiry
        }
        // A normal DISCONNECT discards the Will; 0x04 asks for it. [MQTT-3.1.2-10]
        if disconnect.reasonCode != .disconnectWithWillMessage { connected.will = nil }
        state = .connected(connected)
        close(sendingDisconnect: nil)
    }

    // MARK: Outbound

    /// A slow reader's socket filled up and has drained again: resume sending.
    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { sessionHasOutput() }
        context.fireChannelWritabilityChanged()
    }

    /// Drains the session into the socket: every packet into one buffer, one write, one flush.
    /// Nothing is taken while the channel is not writable, so a slow reader's backlog stays in
    /// its bounded session queue (QoS 0 dropped first) instead of the socket's buffers.
    public func sessionHasOutput() {
        guard case .connected(var connected) = state, let context, context.channel.isWritable, heldSubAcks == 0
        else { return }
        let aliasesBefore = connected.outboundTopicAliases.count
        let now = NIODeadline.now()
        let outgoing = connected.session.takeOutgoing(now: now)
        guard !outgoing.isEmpty else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        for packet in outgoing {
            switch packet {
            case .pubrel(let identifier):
                try? MQTTPacket.pubrel(.init(packetIdentifier: identifier)).write(
                    to: &buffer, version: connected.version)
            case .publish(let queued, let identifier, let duplicate):
                if queued.qos == .atMostOnce, !queued.retain, connected.outboundTopicAliases.maximum == 0,
                    connected.version == .v311 || queued.subscriptionIdentifiers.isEmpty,
                    let shared = queued.message.sharedForms?.bytes(for: connected.version)
                {
                    guard shared.readableBytes <= connected.clientMaximumPacketSize else { continue }
                    buffer.writeImmutableBuffer(shared)
                    tally.messagesSent += 1
                    tally.bytesSent += queued.message.payload.readableBytes
                    continue
                }
                var publish = queued.message.packet(
                    qos: queued.qos,
                    retain: queued.retain,
                    packetIdentifier: identifier,
                    duplicate: duplicate,
                    subscriptionIdentifiers: connected.version == .v5 ? queued.subscriptionIdentifiers : [],
                    now: now
                )
                let alias = connected.outboundTopicAliases.alias(for: publish.topicName)
                if let alias {
                    publish.properties.items.append(.topicAlias(alias.alias))
                    if !alias.isNew { publish.topicName = "" }
                }
                let start = buffer.writerIndex
                let written = (try? MQTTPacket.publish(publish).write(to: &buffer, version: connected.version)) != nil
                guard written, buffer.writerIndex - start <= connected.clientMaximumPacketSize else {
                    // Too large for this client: dropped as if delivered. [MQTT-3.1.2-25]
                    buffer.moveWriterIndex(to: start)
                    if queued.qos != .atMostOnce { _ = connected.session.completeOutbound(identifier) }
                    continue
                }
                // The client knows the alias only once a packet carrying it with the topic went out.
                if let alias, alias.isNew { connected.outboundTopicAliases.assign(alias.alias, to: publish.topicName) }
                tally.messagesSent += 1
                tally.bytesSent += queued.message.payload.readableBytes
            }
        }
        if connected.outboundTopicAliases.count != aliasesBefore { state = .connected(connected) }
        guard buffer.readableBytes > 0 else { return }
        context.write(wrapOutboundOut(buffer), promise: nil)
        flushOrDefer(context)
        // Drains outside a read cycle (woken by other connections) hand over their counts here.
        if !inReadCycle { tally.flush(into: broker.statistics) }
    }

    private func flushOrDefer(_ context: ChannelHandlerContext) {
        if inReadCycle {
            flushPending = true
        } else {
            context.flush()
        }
    }

    public func disconnect(reason: MQTTReasonCode) {
        eventLoop.execute { [self] in close(sendingDisconnect: reason) }
    }

    private func send(_ packet: MQTTPacket) {
        guard let context, case .connected(let connected) = state else { return }
        write(packet, version: connected.version, context: context)
        flushOrDefer(context)
    }

    private func write(_ packet: MQTTPacket, version: MQTTProtocolVersion, context: ChannelHandlerContext) {
        do {
            context.write(
                wrapOutboundOut(try packet.encoded(version: version, allocator: context.channel.allocator)),
                promise: nil)
        } catch {
            logger.error("could not encode \(packet.type)", metadata: ["error": "\(error)"])
        }
    }

    private func sendAndClose(_ packet: MQTTPacket, version: MQTTProtocolVersion) {
        guard let context else { return }
        state = .closed
        if let bytes = try? packet.encoded(version: version, allocator: context.channel.allocator) {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(bytes)).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.close(promise: nil)
        }
    }

    /// How long a connection ended with a DISCONNECT is still read (and discarded) before it closes.
    static let disconnectDrainTime = TimeAmount.milliseconds(500)

    /// Closes the connection; a 5.0 client first gets DISCONNECT with `reason`.
    ///
    /// A client may still be writing (PUBRELs for the PUBRECs it got) when the broker ends its
    /// connection: closing with its bytes unread would reset the connection, and the client would
    /// see a broken pipe instead of the reason. So the session ends now, the write side is shut
    /// after the DISCONNECT, and what still arrives is read and dropped until the client closes
    /// or `disconnectDrainTime` passes.
    private func close(sendingDisconnect reason: MQTTReasonCode?) {
        guard let context else { return }
        guard let reason, case .connected(let connected) = state, connected.version == .v5 else {
            context.close(promise: nil)
            return
        }
        write(.disconnect(.init(reasonCode: reason)), version: .v5, context: context)
        context.flush()
        connectionEnded()  // the state is now closed: later packets are dropped
        let channel = context.channel
        let halfClosed = eventLoop.makePromise(of: Void.self)
        context.close(mode: .output, promise: halfClosed)
        // A transport that cannot half-close closes at once.
        halfClosed.futureResult.whenFailure { [logger] error in
            logger.debug("half-close refused", metadata: ["error": "\(error)"])
            channel.close(promise: nil)
        }
        eventLoop.scheduleTask(in: Self.disconnectDrainTime) { channel.close(promise: nil) }
    }

    /// The socket is gone: publish the Will unless a normal DISCONNECT discarded it, and let
    /// the broker decide whether the session lives on. [MQTT-3.1.2-8]
    private func connectionEnded() {
        guard case .connected(let connected) = state else {
            state = .closed
            return
        }
        state = .closed
        broker.statistics.add(broker.statistics.clientsConnected, -1)
        // A PUBLISH read together with the DISCONNECT never reaches channelReadComplete.
        deliveries.wakeAll()
        tally.flush(into: broker.statistics)
        if connected.session.isAttached(to: self) { connected.session.disarmWill() }
        if let will = connected.will,
            broker.access.mayPublishWill(connected.principal, topic: will.topic)
        {
            let message = willMessage(will, clientID: connected.session.clientID)
            let delay = will.properties.willDelayInterval ?? 0
            let session = connected.session
            if session.isAttached(to: self) {
                broker.publishWill(message, delay: delay, session: session, on: eventLoop)
            } else if delay == 0 || broker.session(clientID: session.clientID) !== session {
                // Taken over: a Will without delay is due now, a delayed one only if its session
                // ended (Clean Start); a resumed session cancels it. [MQTT-3.1.3-9]
                broker.publishWill(message, delay: 0, session: session, on: eventLoop)
            }
        }
        broker.connectionClosed(self, session: connected.session, on: eventLoop)
    }

    private func willMessage(_ will: MQTTPacket.Will, clientID: String) -> RoutedMessage {
        RoutedMessage(
            publish: MQTTPacket.Publish(
                topicName: will.topic, payload: will.payload, qos: will.qos, retain: will.retain,
                properties: will.properties),
            topic: will.topic, publisherClientID: clientID, now: .now())
    }
}
