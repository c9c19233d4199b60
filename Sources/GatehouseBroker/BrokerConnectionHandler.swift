import DequeModule
import Foundation
public import GatehouseAuth
public import Logging
public import MQTTCore
public import NIOCore

/// One client connection, on the connection's event loop: the adapter between the channel and
/// the broker. It frames the inbound bytes into packets itself (a `ByteToMessageHandler` in
/// front cost every idle connection its handler, context and buffers: 538 bytes by heaptrack);
/// `ConnectionProtocol` decides what each packet means; this carries it out (authentication,
/// the session, routing, timers, encoding and flushing). Broker-wide state (sessions,
/// subscriptions, retained messages) lives in `Broker`.
public final class BrokerConnectionHandler: ChannelInboundHandler, SessionConnection, @unchecked Sendable {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private struct HeldAcknowledgement {
        var packet: MQTTPacket
        var ticket: UInt64
        var receipt: DeliveryReceipt?
        /// It waits for a commit that nothing else is likely to make unnecessary.
        var urgent: Bool

        init(packet: MQTTPacket, ticket: UInt64, receipt: DeliveryReceipt? = nil) {
            self.packet = packet
            self.ticket = ticket
            self.receipt = receipt
            self.urgent = ticket > 0 && receipt?.mayBeFulfilled != true
        }

        func mayGo(committed: UInt64) -> Bool { ticket <= committed || receipt?.isFulfilled == true }
    }

    /// What a connected client has: its session and who it is.
    private struct Attachment {
        let session: Session
        let principal: Principal
    }

    /// What an enhanced authentication exchange is for.
    private enum ExchangePurpose {
        case connect(ConnectionProtocol.ConnectRequest)
        case reauthenticate
    }

    // Only touched on the event loop (hence @unchecked Sendable for the protocol's sake).
    private var parser = MQTTPacketParser()
    /// The bytes of a packet not yet whole; nil between packets, so that an idle connection
    /// holds no buffer of its own.
    private var partialPacket: ByteBuffer?
    /// Larger packets are refused from their fixed header, before the body is read.
    private let maximumPacketSize: Int
    private var connection: ConnectionProtocol
    private var attached: Attachment?
    /// The server's half of an enhanced authentication waiting for the client's AUTH.
    private var exchange: Boxed<(continuation: any EnhancedAuthenticationContinuation, purpose: ExchangePurpose)>?
    private var context: ChannelHandlerContext?
    private var deliveries = DeliveryBatch()
    /// Acknowledgements waiting for the store to commit what they promise, in the order they
    /// must go out [MQTT-4.6.0-2]; a ticket of 0 waits only for those ahead of it. One with a
    /// receipt may also go once its subscribers have acknowledged every stored copy.
    private var heldAcknowledgements = Deque<HeldAcknowledgement>()
    private var highestHeldTicket: UInt64 = 0
    private var urgentlyHeld = 0
    /// The highest ticket a `whenDurable` call is out for (0: none), and whether it was urgent.
    private var awaitedTicket: UInt64 = 0
    private var awaitingUrgently = false
    /// A held SUBACK holds the session's output too: the retained messages it unlocks follow it.
    private var heldSubAcks = 0
    /// Inside a read cycle, replies are written but flushed once at read-complete.
    private var inReadCycle = false
    private var flushPending = false
    /// Acknowledgements freed the in-flight window: drain once at read-complete.
    private var drainPending = false
    /// The cycle's PUBACKs and PUBCOMPs, completed in one go at its end (or before the
    /// session is drained or left), so that the session's lock is taken once for them.
    private var acknowledgedOutbound: [UInt16] = []
    private var tally = TrafficTally()
    private var connectTimeoutTask: Scheduled<Void>?
    private var credentialExpiryTask: Scheduled<Void>?
    /// Keep-alive: the event loop's wheel checks `lastPacketAt + keepAliveTimeout`, instead of
    /// a timer or a pipeline handler per connection. [MQTT-3.1.2-24]
    private var keepAliveWheel: KeepAliveWheel<BrokerConnectionHandler>?
    var keepAlivePosition: KeepAlivePosition?
    private var keepAliveTimeout = TimeAmount.zero
    private var lastPacketAt = NIODeadline.uptimeNanoseconds(0)
    /// This connection's publish decisions (its principal is fixed once connected).
    private var publishDecisions = DecisionCache()
    /// The last routed PUBLISH's topic split into levels, and the clients it matched.
    private var matchCache = MatchCache()
    private var publishRate: PublishRateLimit?
    private var logger: ConnectionLogger
    private let broker: Broker
    private let connectTimeout: TimeAmount
    /// Verified by the TLS listener before the first MQTT byte; dropped once CONNECT has used
    /// it, as an idle connection should not carry its DER and names.
    private var clientCertificate: Boxed<ClientCertificate>?
    /// The listener that accepted this connection, for its connection limit.
    private let listener: ListenerConnections?
    public let eventLoop: any EventLoop

    public init(
        broker: Broker,
        eventLoop: any EventLoop,
        connectTimeout: TimeAmount,
        clientCertificate: ClientCertificate? = nil,
        maximumPacketSize: Int = MQTTFrameDecoder.protocolMaximumPacketSize,
        listener: ListenerConnections? = nil,
        logger: Logger
    ) {
        self.broker = broker
        self.maximumPacketSize = maximumPacketSize
        self.listener = listener
        self.connection = ConnectionProtocol(limits: broker.configuration)
        self.eventLoop = eventLoop
        self.connectTimeout = connectTimeout
        self.clientCertificate = clientCertificate.map(Boxed.init)
        self.logger = ConnectionLogger(logger)
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        logger.remote = context.remoteAddress
        connectTimeoutTask = eventLoop.scheduleTask(in: connectTimeout) { [self] in
            if connection.phase == .awaitingConnect {
                logger.debug("no CONNECT within the connect timeout")
                close(sendingDisconnect: nil)
            }
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        connectTimeoutTask?.cancel()
        credentialExpiryTask?.cancel()
        keepAliveWheel?.remove(self)
        self.context = nil
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        inReadCycle = true
        // Ended (a violation, a refusal, a DISCONNECT either way): what still arrives while the
        // connection drains is dropped unread.
        guard connection.phase != .closed else { return }
        var bytes = unwrapInboundIn(data)
        if var partial = partialPacket {
            partialPacket = nil
            partial.writeBuffer(&bytes)
            bytes = partial
        }
        let unread = bytes.readableBytes
        defer { tally.bytesReceived += unread - bytes.readableBytes }
        do {
            while let packet = try parser.parse(from: &bytes, maximumPacketSize: maximumPacketSize) {
                handle(packet)
            }
        } catch {
            refuse(error)
            return
        }
        if bytes.readableBytes > 0 { partialPacket = bytes }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        // A packet arrived in this cycle (channelRead set the flag): the keep-alive restarts.
        if inReadCycle, keepAliveWheel != nil { lastPacketAt = eventLoop.now }
        inReadCycle = false
        completeAcknowledgedOutbound()
        if drainPending {
            drainPending = false
            sessionHasOutput()
        }
        if flushPending {
            flushPending = false
            context.flush()
        }
        deliveries.take().wake()
        awaitCommit()
        tally.flush(into: broker.statistics)
        context.fireChannelReadComplete()
    }

    // MARK: Acknowledgements that wait for the store

    /// Sends an acknowledgement now, or holds it until the store has committed what it
    /// promises (`durable`; or until `receipt` is fulfilled) or until those ahead of it go.
    private func acknowledge(_ packet: MQTTPacket, durable: Bool, receipt: DeliveryReceipt? = nil) {
        if durable, let store = broker.store {
            let ticket = store.currentTicket()
            highestHeldTicket = max(highestHeldTicket, ticket)
            hold(HeldAcknowledgement(packet: packet, ticket: ticket, receipt: receipt))
        } else if !heldAcknowledgements.isEmpty {
            hold(HeldAcknowledgement(packet: packet, ticket: 0))
        } else {
            send(packet)
        }
    }

    private func hold(_ held: HeldAcknowledgement) {
        if case .suback = held.packet { heldSubAcks += 1 }
        if held.urgent { urgentlyHeld += 1 }
        heldAcknowledgements.append(held)
    }

    public func deliveryReceiptsFulfilled() {
        releaseAcknowledgements(through: 0)
    }

    /// Asks the store, once per read cycle, to say when the held acknowledgements may go;
    /// again, urgently, if an urgent one came while a relaxed request was out.
    private func awaitCommit() {
        guard highestHeldTicket > 0, let store = broker.store else { return }
        let urgent = urgentlyHeld > 0
        guard awaitedTicket == 0 || (urgent && !awaitingUrgently) else { return }
        let ticket = highestHeldTicket
        awaitedTicket = ticket
        awaitingUrgently = urgent
        store.whenDurable(ticket, on: eventLoop, urgent: urgent) { [self] in
            if awaitedTicket <= ticket {
                awaitedTicket = 0
                awaitingUrgently = false
            }
            releaseAcknowledgements(through: ticket)
            awaitCommit()
        }
    }

    private func releaseAcknowledgements(through ticket: UInt64) {
        if highestHeldTicket <= ticket { highestHeldTicket = 0 }
        let releasedSubAck = heldSubAcks > 0
        // Written as one batch, flushed once: a commit releases many acknowledgements.
        guard let context, connection.phase == .connected else { return }
        var released = false
        while let first = heldAcknowledgements.first, first.mayGo(committed: ticket) {
            heldAcknowledgements.removeFirst()
            if case .suback = first.packet { heldSubAcks -= 1 }
            if first.urgent { urgentlyHeld -= 1 }
            write(first.packet, version: connection.version, context: context)
            released = true
        }
        // Nothing left to wait for: the commit pending need not be awaited again.
        if heldAcknowledgements.isEmpty { highestHeldTicket = 0 }
        if released { flushOrDefer(context) }
        if releasedSubAck && heldSubAcks == 0 { sessionHasOutput() }
    }

    private func handle(_ packet: MQTTPacket) {
        perform(connection.receive(packet))
    }

    private func perform(_ step: ConnectionProtocol.Step) {
        switch step {
        case .authenticate(let request):
            connectTimeoutTask?.cancel()
            if request.authenticationMethod != nil {
                startExchange(request)
            } else {
                authenticate(request)
            }
        case .continueAuthentication(let data):
            guard let (continuation, purpose) = exchange?.value else { return }
            exchange = nil
            runExchangeStep(purpose) { await continuation.respond(data) }
        case .reauthenticate(let data):
            reauthenticate(data)
        case .hold, .ignore:
            break
        case .publish(let publish, let topic):
            receivePublish(publish, topic: topic)
        case .forSession(let packet):
            handleSessionPacket(packet)
        case .reply(let packet):
            send(packet)
        case .disconnect(let expiry):
            if let expiry, let attached { attached.session.expiryInterval = expiry }
            close(sendingDisconnect: nil)
        case .refuse(let connack):
            sendAndClose(connack)
        case .close(let reason):
            close(sendingDisconnect: reason)
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Ended with a DISCONNECT and draining: what arrives now is dropped until the drain timer closes.
        if connection.phase == .closed { return }
        logger.debug("connection error", metadata: ["error": "\(error)"])
        close(sendingDisconnect: nil)
    }

    /// A packet that breaks the protocol: the connection ends with the violation's reason.
    private func refuse(_ violation: MQTTProtocolViolation) {
        if connection.phase == .closed { return }
        logger.info("protocol violation", metadata: ["violation": "\(violation)", "reason": "\(violation.reasonCode)"])
        perform(connection.violated(violation))
    }

    public func channelInactive(context: ChannelHandlerContext) {
        connectionEnded()
        context.fireChannelInactive()
    }

    // MARK: CONNECT

    private func authenticate(_ request: ConnectionProtocol.ConnectRequest) {
        logger.clientID = request.clientID
        let credentials = ConnectCredentials(
            clientIdentifier: request.clientID,
            username: request.connect.username,
            password: request.connect.password,
            remoteAddress: context?.remoteAddress?.ipAddress,
            clientCertificate: clientCertificate?.value
        )
        clientCertificate = nil
        let authenticator = broker.authenticator
        if let known = authenticator.authenticateImmediately(credentials) {
            finishConnect(request, outcome: known)
            return
        }
        let outcome = eventLoop.makePromise(of: AuthenticationOutcome.self)
        outcome.completeWithTask { await authenticator.authenticate(credentials) }
        outcome.futureResult.assumeIsolatedUnsafeUnchecked().whenSuccess { [self] result in
            finishConnect(request, outcome: result)
        }
    }

    // MARK: Enhanced authentication [MQTT-4.12]

    private func startExchange(_ request: ConnectionProtocol.ConnectRequest) {
        guard let method = request.authenticationMethod, let authenticator = broker.enhancedAuthenticator,
            authenticator.methods.contains(method)
        else {
            logger.info(
                "authentication method not offered", metadata: ["method": "\(request.authenticationMethod ?? "")"])
            sendAndClose(connection.methodRefused())
            return
        }
        logger.clientID = request.clientID
        let credentials = ConnectCredentials(
            clientIdentifier: request.clientID, username: request.connect.username,
            remoteAddress: context?.remoteAddress?.ipAddress)
        clientCertificate = nil
        let data = request.authenticationData
        runExchangeStep(.connect(request)) {
            await authenticator.start(method: method, data: data, credentials: credentials)
        }
    }

    /// AUTH 0x19: the connected client presents new credentials with its CONNECT's method.
    private func reauthenticate(_ data: [UInt8]) {
        guard let attached, let method = connection.authenticationMethod,
            let authenticator = broker.enhancedAuthenticator
        else { return }
        let credentials = ConnectCredentials(
            clientIdentifier: attached.principal.clientIdentifier, username: attached.principal.username,
            remoteAddress: context?.remoteAddress?.ipAddress)
        runExchangeStep(.reauthenticate) {
            await authenticator.start(method: method, data: data, credentials: credentials)
        }
    }

    /// Runs one step of an exchange off the loop and carries on with its answer on the loop.
    private func runExchangeStep(
        _ purpose: ExchangePurpose, _ step: @escaping @Sendable () async -> EnhancedAuthenticationStep
    ) {
        let answer = eventLoop.makePromise(of: EnhancedAuthenticationStep.self)
        answer.completeWithTask(step)
        answer.futureResult.assumeIsolatedUnsafeUnchecked().whenSuccess { [self] step in
            continueExchange(step, purpose)
        }
    }

    private func continueExchange(_ step: EnhancedAuthenticationStep, _ purpose: ExchangePurpose) {
        guard connection.phase == .authenticating || connection.phase == .connected else { return }
        switch (step, purpose) {
        case (.challenge(let data, let next), _):
            exchange = Boxed((next, purpose))
            send(connection.challenge(data))
        case (.accepted(let principal, let data), .connect(let request)):
            finishConnect(request, outcome: .accepted(principal), authenticationData: data)
        case (.accepted(let principal, let data), .reauthenticate):
            reauthenticated(as: principal, data: data)
        case (.rejected, .connect):
            logger.info("authentication refused")
            sendAndClose(connection.authenticationRefused())
        case (.rejected, .reauthenticate):
            logger.info("re-authentication refused")
            close(sendingDisconnect: .notAuthorized)
        }
    }

    /// The session keeps going under the new credential: its roles decide from now on, and its
    /// expiry replaces the old one's. Another identity may not take the session over this way.
    private func reauthenticated(as principal: Principal, data: [UInt8]?) {
        guard let previous = attached else { return }
        guard principal.identityID == previous.principal.identityID else {
            logger.notice(
                "re-authentication as another identity refused", metadata: ["identity": "\(principal.identityID)"])
            close(sendingDisconnect: .notAuthorized)
            return
        }
        attached = Attachment(session: previous.session, principal: principal)
        previous.session.replacePrincipal(principal)
        publishDecisions = DecisionCache()
        armCredentialExpiry(principal)
        logger.info("re-authenticated")
        send(connection.reauthenticated(data: data))
    }

    private func armCredentialExpiry(_ principal: Principal) {
        credentialExpiryTask?.cancel()
        credentialExpiryTask = nil
        guard let expiresAt = principal.expiresAt else { return }
        // The credential's end is the session's end. [DISCONNECT 0x87 in 5.0]
        let remaining = max(0, expiresAt - Int64(Date().timeIntervalSince1970))
        credentialExpiryTask = eventLoop.scheduleTask(in: .seconds(remaining)) { [self] in
            logger.info("credential expired")
            close(sendingDisconnect: .notAuthorized)
        }
    }

    private func finishConnect(
        _ request: ConnectionProtocol.ConnectRequest, outcome: AuthenticationOutcome,
        authenticationData: [UInt8]? = nil
    ) {
        guard connection.phase == .authenticating else { return }  // closed meanwhile
        guard case .accepted(let principal) = outcome else {
            logger.info("authentication refused")
            sendAndClose(connection.authenticationRefused())
            return
        }
        let replacing = broker.session(clientID: request.clientID).map {
            $0.isConnected && $0.principal.identityID == principal.identityID
        }
        if let refusal = broker.admission.admit(
            identity: principal.identityID, on: listener, replacing: replacing ?? false)
        {
            let counter =
                switch refusal {
                case .maximumConnections: broker.statistics.refusedOverConnectionLimit
                case .maximumListenerConnections: broker.statistics.refusedOverListenerLimit
                case .maximumConnectionsPerIdentity: broker.statistics.refusedOverIdentityLimit
                }
            broker.statistics.add(counter, 1)
            logger.notice(
                "CONNECT refused: \(refusal.rawValue) reached", metadata: ["identity": "\(principal.identityID)"])
            sendAndClose(connection.quotaRefused())
            return
        }
        let opened: Broker.OpenedSession
        do {
            opened = try broker.openSession(
                clientID: request.clientID,
                cleanStart: request.connect.cleanStart,
                expiryInterval: request.sessionExpiryInterval,
                receiveMaximum: request.receiveMaximum,
                principal: principal,
                connection: self
            )
        } catch {
            broker.admission.release(identity: principal.identityID, on: listener)
            logger.notice(
                "CONNECT refused: the session belongs to another identity",
                metadata: ["identity": "\(principal.identityID)"])
            sendAndClose(connection.sessionRefused())
            return
        }
        if let previous = opened.previousConnection {
            logger.info("session taken over")
            previous.disconnect(reason: .sessionTakenOver)
        }
        attached = Attachment(session: opened.session, principal: principal)
        publishRate = PublishRateLimit(
            messagesPerSecond: broker.configuration.maximumPublishRate,
            bytesPerSecond: broker.configuration.maximumPublishBytesRate, now: eventLoop.now)
        let accepted = connection.accepted(
            sessionPresent: opened.sessionPresent, authenticationData: authenticationData)
        // The store keeps this connection's Will (and forgets a previous connection's), so that a
        // crash of the broker ends the connection as a drop would.
        opened.session.disarmWill()
        if let will = request.connect.will {
            opened.session.armWill(
                WillMessage(will, publisherClientID: request.clientID), delay: will.properties.willDelayInterval ?? 0)
        }
        broker.statistics.add(broker.statistics.clientsConnected, 1)
        if connection.version == .v5 { broker.statistics.add(broker.statistics.clientsConnectedV5, 1) }
        context?.triggerUserOutboundEvent(MQTTConnectAccepted(), promise: nil)
        send(accepted.connack)
        if accepted.keepAlive > 0 {
            // The client has one and a half keep-alive periods to send anything. [MQTT-3.1.2-24]
            keepAliveTimeout = .milliseconds(Int64(accepted.keepAlive) * 1_500)
            lastPacketAt = eventLoop.now
            let wheel = broker.keepAliveWheels.wheel(for: eventLoop)
            keepAliveWheel = wheel
            wheel.watch(self)
        }
        armCredentialExpiry(principal)
        logger.debug(
            "connected",
            metadata: ["version": "\(connection.version)", "session_present": "\(opened.sessionPresent)"])
        sessionHasOutput()
        for packet in accepted.pending { handle(packet) }
        drainPending = false
        sessionHasOutput()
        deliveries.take().wake()
        awaitCommit()
    }

    // MARK: Connected

    private func handleSessionPacket(_ packet: MQTTPacket) {
        guard let session = attached?.session else { return }
        switch packet {
        case .puback(let ack):
            acknowledgedOutbound.append(ack.packetIdentifier)
        case .pubrec(let ack):
            if ack.reasonCode.isFailure {
                acknowledgedOutbound.append(ack.packetIdentifier)
            } else if session.releaseOutbound(ack.packetIdentifier) {
                send(.pubrel(.init(packetIdentifier: ack.packetIdentifier)))
            } else {
                send(.pubrel(.init(packetIdentifier: ack.packetIdentifier, reasonCode: .packetIdentifierNotFound)))
            }
        case .pubcomp(let ack):
            acknowledgedOutbound.append(ack.packetIdentifier)
        case .pubrel(let ack):
            let known = session.releaseInboundQoS2(ack.packetIdentifier)
            send(
                .pubcomp(
                    .init(
                        packetIdentifier: ack.packetIdentifier, reasonCode: known ? .success : .packetIdentifierNotFound
                    )))
        case .subscribe(let subscribe):
            receiveSubscribe(subscribe, session)
        case .unsubscribe(let unsubscribe):
            let codes = unsubscribe.topicFilters.map { filter -> MQTTReasonCode in
                broker.unsubscribe(session, filter: filter) ? .success : .noSubscriptionExisted
            }
            acknowledge(connection.unsubscribeAcknowledgement(unsubscribe, codes: codes), durable: session.isStored)
        default:
            preconditionFailure("ConnectionProtocol hands only the session's packets to the session")
        }
    }

    private func receivePublish(_ publish: MQTTPacket.Publish, topic: String) {
        guard let attached else { return }
        tally.messagesReceived += 1
        if publishRate?.admit(size: publish.payload.readableBytes, now: eventLoop.now) == false {
            broker.statistics.add(broker.statistics.disconnectedOverPublishRate, 1)
            logger.notice("publish rate limit exceeded")
            close(sendingDisconnect: .messageRateTooHigh)
            return
        }
        let session = attached.session
        var isRepeat = false
        var durable = false
        if publish.qos == .exactlyOnce {
            let limit = Int(broker.configuration.receiveMaximum)
            switch session.receiveInboundQoS2(publish.packetIdentifier, limit: limit) {
            case .new: durable = session.isStored
            case .duplicate: isRepeat = true
            case .overLimit:
                close(sendingDisconnect: .receiveMaximumExceeded)
                return
            }
        }
        // A client usually publishes to the same topic again: split it only when it changes.
        let levels = matchCache.levels(of: topic)
        var code = connection.refusal(of: publish, topic: levels) ?? .success
        if code == .success, !broker.access.mayPublish(attached.principal, topic: levels, decisions: &publishDecisions)
        {
            broker.statistics.countDrop(.aclRefused)
            code = .notAuthorized
        }
        if code == .success && !isRepeat && broker.isOverMemoryBudget {
            broker.statistics.add(broker.statistics.refusedOverMemoryBudget, 1)
            broker.statistics.countDrop(.memoryBudget)
            code = .quotaExceeded
        }
        var receipt: DeliveryReceipt?
        if code == .success && !isRepeat {
            let message = RoutedMessage(
                publish: publish, topic: topic, publisherClientID: session.clientID, now: .now())
            // A QoS 1 PUBACK promises only the deliveries to persistent sessions (a retained
            // message, or QoS 2 state, must be committed).
            if publish.qos == .atLeastOnce && !publish.retain, let store = broker.store, store.isKeepingUp {
                deliveries.pendingReceipt = PendingReceipt(publisher: self)
            }
            deliveries.wroteToStore = false
            if broker.publish(message, topic: levels, matches: &matchCache, into: &deliveries) == 0 {
                // A retained message is kept for later subscribers: not a drop.
                if !publish.retain { broker.statistics.countDrop(.noSubscribers) }
                code = .noMatchingSubscribers
            }
            receipt = deliveries.pendingReceipt.receipt
            deliveries.pendingReceipt = PendingReceipt()
            if deliveries.wroteToStore { durable = !(receipt?.routingFinished() ?? false) }
        } else if code.isFailure {
            logger.debug("publish refused", metadata: ["topic": "\(topic)", "reason": "\(code)"])
            // A refused QoS 2 message is not held for PUBREL.
            if publish.qos == .exactlyOnce && !isRepeat { _ = session.releaseInboundQoS2(publish.packetIdentifier) }
            if code == .notAuthorized && broker.configuration.disconnectOnRefusedPublish {
                close(sendingDisconnect: .notAuthorized)
                return
            }
        }
        if let acknowledgement = connection.acknowledgement(of: publish, code: code) {
            acknowledge(acknowledgement, durable: durable, receipt: receipt)
        }
    }

    private func receiveSubscribe(_ subscribe: MQTTPacket.Subscribe, _ session: Session) {
        guard let principal = attached?.principal else { return }
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
            let isNew = !session.hasSubscription(filter)
            guard !isNew || session.subscriptionCount < broker.configuration.maximumSubscriptionsPerClient
            else {
                codes.append(.quotaExceeded)
                continue
            }
            // A shared subscription is authorized on its filter, not on the $share/ prefix.
            guard broker.access.maySubscribe(principal, filter: filter) else {
                codes.append(.notAuthorized)
                continue
            }
            let retained = broker.subscribe(
                session, filter: filter, options: subscription.options, identifier: identifier)
            broker.deliverRetained(
                retained, to: session, options: subscription.options, identifier: identifier,
                into: &deliveries)
            codes.append(MQTTReasonCode(rawValue: subscription.options.qos.rawValue))
        }
        // SUBACK goes before the retained messages it unlocks: those wait for the drain.
        acknowledge(
            .suback(.init(packetIdentifier: subscribe.packetIdentifier, reasonCodes: codes)),
            durable: session.isStored)
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
    private func completeAcknowledgedOutbound() {
        guard !acknowledgedOutbound.isEmpty, let session = attached?.session else { return }
        if session.completeOutbound(acknowledgedOutbound, into: &deliveries) { drainPending = true }
        acknowledgedOutbound.removeAll(keepingCapacity: true)
    }

    public func sessionHasOutput() {
        completeAcknowledgedOutbound()
        guard connection.phase == .connected, let session = attached?.session, let context,
            context.channel.isWritable, heldSubAcks == 0
        else { return }
        let version = connection.version
        let maximumPacketSize = connection.clientMaximumPacketSize
        let now = NIODeadline.now()
        let outgoing = session.takeOutgoing(now: now)
        guard !outgoing.isEmpty else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        // Read and counted once per drain, not per message: each touch of the handler's state
        // is a runtime exclusivity check.
        let sharesFrames = connection.outboundTopicAliases.maximum == 0
        var sent = 0
        for packet in outgoing {
            switch packet {
            case .pubrel(let identifier):
                try? MQTTPacket.pubrel(.init(packetIdentifier: identifier)).write(
                    to: &buffer, version: version)
            case .publish(let queued, let identifier, let duplicate):
                if queued.qos == .atMostOnce, !queued.retain, sharesFrames,
                    version == .v311 || queued.subscriptionIdentifiers.isEmpty,
                    let shared = queued.message.sharedForms?.bytes(for: version)
                {
                    guard shared.readableBytes <= maximumPacketSize else { continue }
                    buffer.writeImmutableBuffer(shared)
                    sent += 1
                    continue
                }
                var publish = queued.message.packet(
                    qos: queued.qos,
                    retain: queued.retain,
                    packetIdentifier: identifier,
                    duplicate: duplicate,
                    subscriptionIdentifiers: version == .v5 ? queued.subscriptionIdentifiers : [],
                    now: now
                )
                let alias = connection.outboundTopicAliases.alias(for: publish.topicName)
                if let alias {
                    publish.properties.items.append(.topicAlias(alias.alias))
                    if !alias.isNew { publish.topicName = "" }
                }
                let start = buffer.writerIndex
                let written = (try? MQTTPacket.publish(publish).write(to: &buffer, version: version)) != nil
                guard written, buffer.writerIndex - start <= maximumPacketSize else {
                    // Too large for this client: dropped as if delivered. [MQTT-3.1.2-25]
                    buffer.moveWriterIndex(to: start)
                    if queued.qos != .atMostOnce { _ = session.completeOutbound(identifier, into: &deliveries) }
                    continue
                }
                // The client knows the alias only once a packet carrying it with the topic went out.
                if let alias, alias.isNew { connection.outboundTopicAliases.assign(alias.alias, to: publish.topicName) }
                sent += 1
            }
        }
        tally.messagesSent += sent
        guard buffer.readableBytes > 0 else { return }
        tally.bytesSent += buffer.readableBytes
        context.write(wrapOutboundOut(buffer), promise: nil)
        flushOrDefer(context)
        // Drains outside a read cycle (woken by other connections) tell the publishers of
        // messages dropped as too large.
        if !inReadCycle { deliveries.take().wake() }
    }

    /// Outside a read cycle (a commit released acknowledgements, another connection woke this
    /// one) the counts go to the shared ones with the flush, as read-complete would hand them.
    private func flushOrDefer(_ context: ChannelHandlerContext) {
        if inReadCycle {
            flushPending = true
        } else {
            context.flush()
            tally.flush(into: broker.statistics)
        }
    }

    public func disconnect(reason: MQTTReasonCode) {
        eventLoop.execute { [self] in close(sendingDisconnect: reason) }
    }

    /// Writes a packet to a connected client (or, for AUTH, one still authenticating).
    private func send(_ packet: MQTTPacket) {
        guard let context, connection.phase == .connected || connection.phase == .authenticating else { return }
        write(packet, version: connection.version, context: context)
        flushOrDefer(context)
    }

    private func write(_ packet: MQTTPacket, version: MQTTProtocolVersion, context: ChannelHandlerContext) {
        do {
            let bytes = try packet.encoded(version: version, allocator: context.channel.allocator)
            tally.bytesSent += bytes.readableBytes
            context.write(wrapOutboundOut(bytes), promise: nil)
        } catch {
            logger.error("could not encode \(packet.type)", metadata: ["error": "\(error)"])
        }
    }

    /// Sends a refusing CONNACK (the protocol is closed already), then closes.
    private func sendAndClose(_ packet: MQTTPacket) {
        guard let context else { return }
        if let bytes = try? packet.encoded(version: connection.version, allocator: context.channel.allocator) {
            let channel = context.channel
            tally.bytesSent += bytes.readableBytes
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
        guard let disconnect = connection.disconnectPacket(reason) else {
            context.close(promise: nil)
            return
        }
        write(disconnect, version: .v5, context: context)
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
        guard connection.end(), let attached else { return }
        broker.statistics.add(broker.statistics.clientsConnected, -1)
        if connection.version == .v5 { broker.statistics.add(broker.statistics.clientsConnectedV5, -1) }
        broker.admission.release(identity: attached.principal.identityID, on: listener)
        // A PUBLISH (or PUBACK) read together with the DISCONNECT never reaches channelReadComplete.
        completeAcknowledgedOutbound()
        deliveries.take().wake()
        tally.flush(into: broker.statistics)
        if attached.session.isAttached(to: self) { attached.session.disarmWill() }
        if let will = connection.will,
            broker.access.mayPublishWill(attached.principal, topic: will.topic)
        {
            let message = WillMessage(will, publisherClientID: attached.session.clientID)
            let delay = will.properties.willDelayInterval ?? 0
            let session = attached.session
            if session.isAttached(to: self) {
                broker.publishWill(message, delay: delay, session: session, on: eventLoop)
            } else if delay == 0 || broker.session(clientID: session.clientID) !== session {
                // Taken over: a Will without delay is due now, a delayed one only if its session
                // ended (Clean Start); a resumed session cancels it. [MQTT-3.1.3-9]
                broker.publishWill(message, delay: 0, session: session, on: eventLoop)
            }
        }
        broker.connectionClosed(self, session: attached.session, on: eventLoop)
    }
}

extension BrokerConnectionHandler: KeepAliveMember {
    var keepAliveDeadline: NIODeadline? {
        guard connection.phase == .connected, keepAliveTimeout > .zero else { return nil }
        return lastPacketAt + keepAliveTimeout
    }

    func keepAliveExpired() {
        logger.info("keep-alive timeout")
        close(sendingDisconnect: .keepAliveTimeout)
    }
}
