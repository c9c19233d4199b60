import GatehouseBroker
import MQTTCore
import NIOCore
import NIOEmbedded
import Testing

/// The connection handler through its real pipeline, one rule a test.
@Suite("connection handler", .timeLimit(.minutes(1)))
struct ConnectionHandlerTests {
    @Test("CONNACK announces the broker's limits and assigns an identifier to an empty one")
    func connack() async throws {
        let client = try await TestConnection(broker: makeBroker())
        let connack = try await client.connect(clientID: "")
        #expect(connack.reasonCode == .success && !connack.sessionPresent)
        let properties = connack.properties
        #expect(properties.receiveMaximum == 100)
        #expect(properties.topicAliasMaximum == 10)
        #expect(properties.maximumPacketSize == 1_048_576)
        #expect(
            properties.first { if case .assignedClientIdentifier(let id) = $0 { id } else { nil } }?.isEmpty == false)
    }

    @Test("3.1.1: an empty client id without a clean session is refused with return code 2")
    func emptyClientIdentifierPersistent() async throws {
        let client = try await TestConnection(broker: makeBroker(), version: .v311)
        #expect(try await client.connect(clientID: "", cleanStart: false).reasonCode == .clientIdentifierNotValid)
        try await client.waitUntilClosed()
    }

    @Test("a wrong password gets 0x86; no detail beyond it")
    func badPassword() async throws {
        let client = try await TestConnection(broker: makeBroker())
        let connack = try await client.connect(clientID: "c", password: "wrong")
        #expect(connack.reasonCode == .badUserNameOrPassword && connack.properties.isEmpty)
        try await client.waitUntilClosed()
    }

    @Test("QoS 0, 1 and 2 reach a subscriber at min(published, granted) QoS")
    func qosDowngrade() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "sub")
        #expect(try await subscriber.subscribe("a/#", qos: .atLeastOnce) == [.grantedQoS1])
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")

        try await publisher.send(
            .publish(
                .init(topicName: "a/b", payload: ByteBuffer(string: "two"), qos: .exactlyOnce, packetIdentifier: 9)))
        #expect(try await publisher.receive() == .pubrec(.init(packetIdentifier: 9)))
        guard case .publish(let delivered) = try await subscriber.receive() else {
            throw TestFailure("expected PUBLISH")
        }
        #expect(
            delivered.qos == .atLeastOnce && delivered.payload == ByteBuffer(string: "two")
                && delivered.packetIdentifier != 0)
        try await subscriber.send(.puback(.init(packetIdentifier: delivered.packetIdentifier)))
        try await publisher.send(.pubrel(.init(packetIdentifier: 9)))
        #expect(try await publisher.receive() == .pubcomp(.init(packetIdentifier: 9)))
    }

    @Test("a QoS 2 PUBLISH sent again before PUBREL is delivered once")
    func exactlyOnce() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "sub")
        _ = try await subscriber.subscribe("x", qos: .atMostOnce)
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        let publish = MQTTPacket.Publish(
            topicName: "x", payload: ByteBuffer(string: "once"), qos: .exactlyOnce, packetIdentifier: 3)
        try await publisher.send(.publish(publish))
        _ = try await publisher.receive()
        var again = publish
        again.duplicate = true
        try await publisher.send(.publish(again))
        #expect(try await publisher.receive() == .pubrec(.init(packetIdentifier: 3)))
        guard case .publish = try await subscriber.receive() else { throw TestFailure("expected one PUBLISH") }
        try await subscriber.expectSilence()
    }

    @Test("5.0 PUBACK says No matching subscribers; a refused topic gets 0x87, 3.1.1 a plain PUBACK")
    func publishAcknowledgementCodes() async throws {
        let broker = makeBroker()
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        try await client.send(
            .publish(.init(topicName: "nobody", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 1)))
        #expect(try await client.receive() == .puback(.init(packetIdentifier: 1, reasonCode: .noMatchingSubscribers)))
        try await client.send(
            .publish(.init(topicName: "forbidden/x", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 2)))
        #expect(try await client.receive() == .puback(.init(packetIdentifier: 2, reasonCode: .notAuthorized)))

        let legacy = try await TestConnection(broker: broker, version: .v311)
        try await legacy.connect(clientID: "l")
        try await legacy.send(
            .publish(.init(topicName: "forbidden/x", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 4)))
        #expect(try await legacy.receive() == .puback(.init(packetIdentifier: 4)))
    }

    @Test("SUBACK: invalid filter 0x8F, refused 0x87 (also when shared), granted QoS; 3.1.1 sees 0x80")
    func subackCodes() async throws {
        let broker = makeBroker()
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        try await client.send(
            .subscribe(
                .init(
                    packetIdentifier: 5,
                    subscriptions: [
                        .init(topicFilter: "a/#/b"), .init(topicFilter: "forbidden/#"),
                        .init(topicFilter: "$share/g/forbidden/x"),
                        .init(topicFilter: "ok/+", options: .init(qos: .exactlyOnce)),
                    ])))
        #expect(
            try await client.receive()
                == .suback(
                    .init(
                        packetIdentifier: 5,
                        reasonCodes: [
                            .topicFilterInvalid, .notAuthorized, .notAuthorized, .grantedQoS2,
                        ])))
        let legacy = try await TestConnection(broker: broker, version: .v311)
        try await legacy.connect(clientID: "l")
        #expect(try await legacy.subscribe("forbidden/x") == [.unspecifiedError])
    }

    @Test("retained messages: set, replaced, cleared, and delivered on subscribe with the retain flag")
    func retained() async throws {
        let broker = makeBroker()
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        for payload in ["first", "second"] {
            try await publisher.send(
                .publish(.init(topicName: "r/1", payload: ByteBuffer(string: payload), retain: true)))
        }
        try await publisher.send(.publish(.init(topicName: "r/2", payload: ByteBuffer(string: "gone"), retain: true)))
        try await publisher.send(.publish(.init(topicName: "r/2", payload: ByteBuffer(), retain: true)))
        await publisher.channel.testingEventLoop.run()
        #expect(broker.retained.count == 1)

        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "s")
        _ = try await subscriber.subscribe("r/+")
        guard case .publish(let retained) = try await subscriber.receive() else {
            throw TestFailure("expected the retained message")
        }
        #expect(retained.retain && retained.topicName == "r/1" && retained.payload == ByteBuffer(string: "second"))
        #expect(retained.qos == .atMostOnce)  // published at QoS 0: min(0, granted 1)
        try await subscriber.expectSilence()
    }

    @Test("the Will is published when the connection drops, not after a normal DISCONNECT, and after 0x04")
    func wills() async throws {
        let broker = makeBroker()
        let watcher = try await TestConnection(broker: broker)
        try await watcher.connect(clientID: "w")
        _ = try await watcher.subscribe("status/#", qos: .atMostOnce)
        let will = MQTTPacket.Will(topic: "status/dev", payload: ByteBuffer(string: "offline"))

        let dropped = try await TestConnection(broker: broker)
        try await dropped.connect(clientID: "d1", will: will)
        try await dropped.channel.close()
        guard case .publish(let published) = try await watcher.receive() else { throw TestFailure("expected the Will") }
        #expect(published.payload == ByteBuffer(string: "offline"))

        let polite = try await TestConnection(broker: broker)
        try await polite.connect(clientID: "d2", will: will)
        try await polite.send(.disconnect(.init()))
        try await polite.waitUntilClosed()
        try await watcher.expectSilence()

        let asking = try await TestConnection(broker: broker)
        try await asking.connect(clientID: "d3", will: will)
        try await asking.send(.disconnect(.init(reasonCode: .disconnectWithWillMessage)))
        guard case .publish = try await watcher.receive() else { throw TestFailure("expected the Will after 0x04") }
    }

    @Test("max connections per identity: another client id is refused 0x97; a takeover and other identities are not")
    func connectionsPerIdentity() async throws {
        let broker = makeBroker { $0.maximumConnectionsPerIdentity = 1 }
        let first = try await TestConnection(broker: broker)
        #expect(try await first.connect(clientID: "a1").reasonCode == .success)
        let second = try await TestConnection(broker: broker)
        #expect(try await second.connect(clientID: "a2").reasonCode == .quotaExceeded)
        try await second.waitUntilClosed()
        let otherIdentity = try await TestConnection(broker: broker)
        #expect(try await otherIdentity.connect(clientID: "u1", password: "secret").reasonCode == .success)
        let takeover = try await TestConnection(broker: broker)
        #expect(try await takeover.connect(clientID: "a1").reasonCode == .success)
        #expect(try await first.receive() == .disconnect(.init(reasonCode: .sessionTakenOver)))
    }

    @Test("past the memory budget QoS 1 publishes get 0x97 and QoS 0 ones are dropped, until queues drain")
    func memoryBudget() async throws {
        // Each queued 100-byte message on topic "q" counts 100 + 1 + 96 bytes.
        let broker = makeBroker { $0.maximumQueuedBytes = 300 }
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "away", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        _ = try await subscriber.subscribe("q")
        try await subscriber.send(.disconnect(.init()))
        try await subscriber.waitUntilClosed()
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        let payload = ByteBuffer(repeating: 0x61, count: 100)
        for id: UInt16 in 1...3 {
            try await publisher.send(
                .publish(.init(topicName: "q", payload: payload, qos: .atLeastOnce, packetIdentifier: id)))
        }
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 1)))
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 2)))
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 3, reasonCode: .quotaExceeded)))
        try await publisher.send(.publish(.init(topicName: "q", payload: payload)))
        #expect(broker.statistics.snapshot.refusedOverMemoryBudget == 2)
        #expect(broker.statistics.snapshot.droppedByReason[.memoryBudget] == 2)

        let back = try await TestConnection(broker: broker)
        try await back.connect(clientID: "away", cleanStart: false, properties: [.sessionExpiryInterval(300)])
        for _ in 0..<2 {
            guard case .publish(let queued) = try await back.receive() else { throw TestFailure("expected PUBLISH") }
            try await back.send(.puback(.init(packetIdentifier: queued.packetIdentifier)))
        }
        try await back.expectSilence()  // the QoS 0 message was dropped
        #expect(broker.statistics.snapshot.queuedBytes == 0)
        try await publisher.send(
            .publish(.init(topicName: "q", payload: payload, qos: .atLeastOnce, packetIdentifier: 4)))
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 4)))
    }

    @Test("a client publishing past max_publish_rate gets DISCONNECT 0x96 Message rate too high")
    func publishRateLimit() async throws {
        let broker = makeBroker { $0.maximumPublishRate = 5 }
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "fast")
        // The bucket holds one second's worth; the testing loop's clock stands still.
        for _ in 0..<5 { try await client.send(.publish(.init(topicName: "t", payload: ByteBuffer(string: "x")))) }
        try await client.expectSilence()
        try await client.send(.publish(.init(topicName: "t", payload: ByteBuffer(string: "x"))))
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .messageRateTooHigh)))
        try await client.waitUntilClosed()
        #expect(broker.statistics.snapshot.disconnectedOverPublishRate == 1)
    }

    @Test("max connections: the next CONNECT is refused (5.0 0x97, 3.1.1 code 3) until a client leaves")
    func connectionLimit() async throws {
        let broker = makeBroker { $0.maximumConnections = 2 }
        let first = try await TestConnection(broker: broker)
        try await first.connect(clientID: "c1")
        let second = try await TestConnection(broker: broker)
        try await second.connect(clientID: "c2", password: "secret")
        let refused = try await TestConnection(broker: broker)
        #expect(try await refused.connect(clientID: "c3").reasonCode == .quotaExceeded)
        let refused311 = try await TestConnection(broker: broker, version: .v311)
        #expect(try await refused311.connect(clientID: "c4").reasonCode == .serverUnavailable)
        #expect(broker.statistics.snapshot.refusedOverConnectionLimit == 2)
        try await second.send(.disconnect(.init()))
        try await second.waitUntilClosed()
        let afterwards = try await TestConnection(broker: broker)
        #expect(try await afterwards.connect(clientID: "c3").reasonCode == .success)
    }

    @Test("a second connection with the same client id takes over: the first gets DISCONNECT 0x8E")
    func takeover() async throws {
        let broker = makeBroker()
        let first = try await TestConnection(broker: broker)
        try await first.connect(clientID: "same")
        let second = try await TestConnection(broker: broker)
        try await second.connect(clientID: "same")
        #expect(try await first.receive() == .disconnect(.init(reasonCode: .sessionTakenOver)))
        try await first.waitUntilClosed()
        #expect(second.isActive)
    }

    @Test("a persistent session keeps its subscriptions and QoS 1 messages while offline")
    func persistentSession() async throws {
        let broker = makeBroker()
        let first = try await TestConnection(broker: broker)
        #expect(
            try await first.connect(clientID: "p", cleanStart: false, properties: [.sessionExpiryInterval(300)])
                .sessionPresent == false)
        _ = try await first.subscribe("jobs/#")
        try await first.send(.disconnect(.init()))
        try await first.waitUntilClosed()

        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        try await publisher.send(
            .publish(
                .init(
                    topicName: "jobs/1", payload: ByteBuffer(string: "queued"), qos: .atLeastOnce, packetIdentifier: 1))
        )
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 1)))

        let again = try await TestConnection(broker: broker)
        #expect(
            try await again.connect(clientID: "p", cleanStart: false, properties: [.sessionExpiryInterval(300)])
                .sessionPresent)
        guard case .publish(let caughtUp) = try await again.receive() else {
            throw TestFailure("expected the queued message")
        }
        #expect(caughtUp.payload == ByteBuffer(string: "queued"))
    }

    @Test("an unacknowledged QoS 1 message is resent with DUP after reconnecting")
    func resendWithDuplicate() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "s", cleanStart: false, properties: [.sessionExpiryInterval(60)])
        _ = try await subscriber.subscribe("t")
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(
            .publish(.init(topicName: "t", payload: ByteBuffer(string: "m"), qos: .atLeastOnce, packetIdentifier: 1)))
        guard case .publish(let first) = try await subscriber.receive() else { throw TestFailure("expected PUBLISH") }
        #expect(!first.duplicate)
        try await subscriber.channel.close()

        let back = try await TestConnection(broker: broker)
        try await back.connect(clientID: "s", cleanStart: false, properties: [.sessionExpiryInterval(60)])
        guard case .publish(let resent) = try await back.receive() else { throw TestFailure("expected the resend") }
        #expect(resent.duplicate && resent.packetIdentifier == first.packetIdentifier)
    }

    @Test("a client that exceeds the announced receive maximum is disconnected with 0x93")
    func receiveMaximumExceeded() async throws {
        let broker = makeBroker { $0.receiveMaximum = 2 }
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        for identifier in UInt16(1)...3 {
            try await client.send(
                .publish(.init(topicName: "t", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: identifier)))
        }
        #expect(try await client.receive() == .pubrec(.init(packetIdentifier: 1, reasonCode: .noMatchingSubscribers)))
        #expect(try await client.receive() == .pubrec(.init(packetIdentifier: 2, reasonCode: .noMatchingSubscribers)))
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .receiveMaximumExceeded)))
        try await client.waitUntilClosed()
    }

    @Test("a resend of a held QoS 2 message at a full receive window is acknowledged, not refused")
    func receiveMaximumResend() async throws {
        let broker = makeBroker { $0.receiveMaximum = 2 }
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        for identifier in UInt16(1)...2 {
            try await client.send(
                .publish(.init(topicName: "t", payload: ByteBuffer(), qos: .exactlyOnce, packetIdentifier: identifier)))
            _ = try await client.receive()
        }
        try await client.send(
            .publish(
                .init(topicName: "t", payload: ByteBuffer(), qos: .exactlyOnce, duplicate: true, packetIdentifier: 2)))
        // Not routed again, so nothing to report: Success.
        #expect(try await client.receive() == .pubrec(.init(packetIdentifier: 2)))
        #expect(client.isActive)
    }

    @Test("topic aliases: a name sets the alias, an empty name uses it, an unknown alias is a protocol error")
    func topicAliases() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "s")
        _ = try await subscriber.subscribe("long/topic/name", qos: .atMostOnce)
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(
            .publish(
                .init(topicName: "long/topic/name", payload: ByteBuffer(string: "1"), properties: [.topicAlias(4)])))
        try await publisher.send(
            .publish(.init(topicName: "", payload: ByteBuffer(string: "2"), properties: [.topicAlias(4)])))
        for expected in ["1", "2"] {
            guard case .publish(let delivered) = try await subscriber.receive() else {
                throw TestFailure("expected PUBLISH")
            }
            #expect(delivered.topicName == "long/topic/name" && delivered.payload == ByteBuffer(string: expected))
            #expect(delivered.properties.topicAlias == nil)
        }
        try await publisher.send(.publish(.init(topicName: "", payload: ByteBuffer(), properties: [.topicAlias(5)])))
        #expect(try await publisher.receive() == .disconnect(.init(reasonCode: .protocolError)))
    }

    @Test("outbound topic aliases: the first topics take the client's aliases, later ones go in full")
    func outboundTopicAliases() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "s", properties: [.topicAliasMaximum(2)])
        _ = try await subscriber.subscribe("fleet/#", qos: .atLeastOnce)
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        let topics = ["fleet/a", "fleet/b", "fleet/c", "fleet/a", "fleet/b", "fleet/c"]
        for (index, topic) in topics.enumerated() {
            try await publisher.send(
                .publish(.init(topicName: topic, payload: ByteBuffer(string: "\(index)"), qos: .atMostOnce)))
        }
        var seen: [(topic: String, alias: UInt16?)] = []
        for _ in topics {
            guard case .publish(let delivered) = try await subscriber.receive() else {
                throw TestFailure("expected PUBLISH")
            }
            seen.append((delivered.topicName, delivered.properties.topicAlias))
        }
        #expect(seen.map(\.topic) == ["fleet/a", "fleet/b", "fleet/c", "", "", "fleet/c"])
        #expect(seen.map(\.alias) == [1, 2, nil, 1, 2, nil])

        // A client that announced no maximum never gets an alias.
        let plain = try await TestConnection(broker: broker)
        try await plain.connect(clientID: "plain")
        _ = try await plain.subscribe("fleet/#", qos: .atMostOnce)
        try await publisher.send(.publish(.init(topicName: "fleet/a", payload: ByteBuffer(string: "x"))))
        guard case .publish(let delivered) = try await plain.receive() else { throw TestFailure("expected PUBLISH") }
        #expect(delivered.topicName == "fleet/a" && delivered.properties.topicAlias == nil)
    }

    @Test("a topic alias above the announced maximum gets DISCONNECT 0x94")
    func topicAliasTooLarge() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "c")
        try await client.send(.publish(.init(topicName: "t", payload: ByteBuffer(), properties: [.topicAlias(11)])))
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .topicAliasInvalid)))
    }

    @Test("5.0 properties pass through; message expiry counts down; subscription identifiers are added")
    func propertiesPassThrough() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: "s")
        _ = try await subscriber.subscribe("p/#", qos: .atMostOnce, properties: [.subscriptionIdentifier(42)])
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        let properties: MQTTProperties = [
            .payloadFormatIndicator(1), .contentType("text/plain"), .responseTopic("r/1"), .correlationData([7]),
            .userProperty(name: "k", value: "v"), .messageExpiryInterval(60),
        ]
        try await publisher.send(
            .publish(.init(topicName: "p/x", payload: ByteBuffer(string: "é"), properties: properties)))
        guard case .publish(let delivered) = try await subscriber.receive() else {
            throw TestFailure("expected PUBLISH")
        }
        #expect(delivered.properties.payloadFormatIndicator == 1)
        #expect(delivered.properties.userProperties.map(\.value) == ["v"])
        #expect(delivered.properties.subscriptionIdentifiers == [42])
        #expect((59...60).contains(delivered.properties.messageExpiryInterval ?? 0))
        #expect(delivered.properties.items.contains(.correlationData([7])))
    }

    @Test("No Local: a client does not get its own message on such a subscription")
    func noLocal() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "me")
        try await client.send(
            .subscribe(
                .init(packetIdentifier: 1, subscriptions: [.init(topicFilter: "chat", options: .init(noLocal: true))])))
        _ = try await client.receive()
        try await client.send(.publish(.init(topicName: "chat", payload: ByteBuffer(string: "echo?"))))
        try await client.expectSilence()
    }

    @Test("a payload marked UTF-8 that is not gets 0x99")
    func payloadFormatInvalid() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "c")
        try await client.send(
            .publish(
                .init(
                    topicName: "t", payload: ByteBuffer(bytes: [0xFF]), qos: .atLeastOnce, packetIdentifier: 1,
                    properties: [.payloadFormatIndicator(1)])))
        #expect(try await client.receive() == .puback(.init(packetIdentifier: 1, reasonCode: .payloadFormatInvalid)))
    }

    @Test("keep-alive: no packet for 1.5 × the interval closes the connection with 0x8D")
    func keepAlive() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "c", keepAlive: 1)
        // The testing loop's clock: 1 s after CONNECT a packet re-arms the timer, so 2 s is not
        // yet too long; 1.5 s after that packet is.
        let loop = client.channel.testingEventLoop
        await loop.advanceTime(by: .seconds(1))
        try await client.send(.pingreq)
        #expect(try await client.receive() == .pingresp)
        await loop.advanceTime(by: .seconds(1))
        #expect(client.isActive)
        await loop.advanceTime(by: .milliseconds(400))
        #expect(client.isActive)
        await loop.advanceTime(by: .milliseconds(200))
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .keepAliveTimeout)))
        try await client.waitUntilClosed()
    }

    @Test("a malformed packet after CONNECT gets DISCONNECT with its reason code (5.0)")
    func malformedAfterConnect() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "c")
        _ = try? await client.sendBytes([0x30, 0x04, 0x00, 0x02, 0xC3, 0x28])  // invalid UTF-8 topic
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .malformedPacket)))
        try await client.waitUntilClosed()
    }

    @Test("the handler frames packets however the reads split them: byte by byte, several in one read")
    func framingAcrossReads() async throws {
        let broker = makeBroker()
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        let subscribe = try MQTTPacket.subscribe(
            .init(packetIdentifier: 7, subscriptions: [.init(topicFilter: "a/b", options: .init(qos: .atLeastOnce))])
        ).encoded(version: .v5)
        let ping = try MQTTPacket.pingreq.encoded(version: .v5)
        var stream = subscribe
        stream.writeImmutableBuffer(ping)
        stream.writeImmutableBuffer(ping)
        let bytes = Array(stream.readableBytesView)
        // The SUBSCRIBE one byte per read, then its last byte with both PINGREQs.
        for byte in bytes[..<(subscribe.readableBytes - 1)] { try await client.sendBytes([byte]) }
        try await client.sendBytes(Array(bytes[(subscribe.readableBytes - 1)...]))
        #expect(try await client.receive() == .suback(.init(packetIdentifier: 7, reasonCodes: [.grantedQoS1])))
        #expect(try await client.receive() == .pingresp)
        #expect(try await client.receive() == .pingresp)
        // Every byte counted once, however it arrived.
        #expect(broker.statistics.snapshot.bytesReceived == client.bytesSent)
    }

    @Test("an oversize packet is refused from its fixed header (0x95), none of it counted as framed")
    func oversizeFromHeader() async throws {
        let broker = makeBroker()
        let client = try await TestConnection(broker: broker, maximumPacketSize: 64)
        try await client.connect(clientID: "c")
        let connectBytes = client.bytesSent
        // PUBLISH announcing 1,000 bytes: refused before any of the body arrives.
        try await client.sendBytes([0x30, 0xE8, 0x07])
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .packetTooLarge)))
        // The connection has ended: a PINGREQ now gets no answer.
        _ = try? await client.sendBytes([0xC0, 0x00])
        try await client.expectSilence()
        #expect(broker.statistics.snapshot.bytesReceived == connectBytes)
    }

    @Test("a second CONNECT is a protocol error")
    func secondConnect() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "c")
        try await client.send(.connect(.init(protocolVersion: .v5, clientIdentifier: "c")))
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .protocolError)))
    }

    @Test("session expiry set on DISCONNECT cannot revive a session that was to end (0x82)")
    func disconnectExpiry() async throws {
        let client = try await TestConnection(broker: makeBroker())
        try await client.connect(clientID: "c")
        try await client.send(.disconnect(.init(properties: [.sessionExpiryInterval(30)])))
        #expect(try await client.receive() == .disconnect(.init(reasonCode: .protocolError)))
    }

    @Test("PINGREQ gets PINGRESP")
    func ping() async throws {
        let client = try await TestConnection(broker: makeBroker(), version: .v311)
        try await client.connect(clientID: "c")
        try await client.send(.pingreq)
        #expect(try await client.receive() == .pingresp)
    }

    @Test("a shared subscription delivers each message to one member in turn, 3.1.1 members too")
    func sharedSubscription() async throws {
        let broker = makeBroker()
        let first = try await TestConnection(broker: broker)
        try await first.connect(clientID: "w1")
        let second = try await TestConnection(broker: broker, version: .v311)
        try await second.connect(clientID: "w2")
        for member in [first, second] { _ = try await member.subscribe("$share/workers/jobs/#", qos: .atMostOnce) }
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        for index in 1...4 {
            try await publisher.send(
                .publish(.init(topicName: "jobs/\(index)", payload: ByteBuffer(string: "\(index)"))))
        }
        var received: [String] = []
        for member in [first, second] {
            for _ in 0..<2 {
                guard case .publish(let job) = try await member.receive() else { throw TestFailure("expected a job") }
                received.append(job.topicName)
            }
            try await member.expectSilence()
        }
        #expect(received.sorted() == ["jobs/1", "jobs/2", "jobs/3", "jobs/4"])
    }

    @Test("a new shared subscription gets no retained message; an ordinary one beside it does")
    func sharedSubscriptionNoRetained() async throws {
        let broker = makeBroker()
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(.publish(.init(topicName: "state", payload: ByteBuffer(string: "kept"), retain: true)))
        await publisher.channel.testingEventLoop.run()
        let member = try await TestConnection(broker: broker)
        try await member.connect(clientID: "m")
        _ = try await member.subscribe("$share/g/state", qos: .atMostOnce)
        try await member.expectSilence()
        _ = try await member.subscribe("state", qos: .atMostOnce, packetIdentifier: 2)
        guard case .publish(let retained) = try await member.receive() else { throw TestFailure("expected retained") }
        #expect(retained.retain)
        // Now both subscriptions match: one copy each. (5.0 §4.8.2)
        try await publisher.send(.publish(.init(topicName: "state", payload: ByteBuffer(string: "live"))))
        for _ in 0..<2 {
            guard case .publish(let copy) = try await member.receive() else { throw TestFailure("expected two copies") }
            #expect(copy.payload == ByteBuffer(string: "live"))
        }
        try await member.expectSilence()
    }

    @Test("a delayed Will waits out its delay, and is cancelled when the session is resumed in time")
    func willDelay() async throws {
        let broker = makeBroker()
        let watcher = try await TestConnection(broker: broker)
        try await watcher.connect(clientID: "w")
        _ = try await watcher.subscribe("status/#", qos: .atMostOnce)
        let delayed = MQTTPacket.Will(
            topic: "status/d", payload: ByteBuffer(string: "late"), properties: [.willDelayInterval(10)])
        let persistent: MQTTProperties = [.sessionExpiryInterval(60)]

        let dropped = try await TestConnection(broker: broker)
        try await dropped.connect(clientID: "d", cleanStart: false, will: delayed, properties: persistent)
        try await dropped.channel.close()
        await dropped.channel.testingEventLoop.advanceTime(by: .seconds(9))
        try await watcher.expectSilence()
        await dropped.channel.testingEventLoop.advanceTime(by: .seconds(1))
        guard case .publish(let will) = try await watcher.receive() else {
            throw TestFailure("expected the Will at 10 s")
        }
        #expect(will.payload == ByteBuffer(string: "late"))

        let resumed = try await TestConnection(broker: broker)
        try await resumed.connect(clientID: "r", cleanStart: false, will: delayed, properties: persistent)
        try await resumed.channel.close()
        let back = try await TestConnection(broker: broker)
        try await back.connect(clientID: "r", cleanStart: false, properties: persistent)
        await resumed.channel.testingEventLoop.advanceTime(by: .seconds(11))
        try await watcher.expectSilence()
    }

    @Test("a Will delayed beyond the session's expiry is sent when the session ends")
    func willDelayCappedBySessionExpiry() async throws {
        let broker = makeBroker()
        let watcher = try await TestConnection(broker: broker)
        try await watcher.connect(clientID: "w")
        _ = try await watcher.subscribe("status/#", qos: .atMostOnce)
        let client = try await TestConnection(broker: broker)
        try await client.connect(
            clientID: "c", cleanStart: false,
            will: .init(topic: "status/c", payload: ByteBuffer(string: "gone"), properties: [.willDelayInterval(300)]),
            properties: [.sessionExpiryInterval(5)])
        try await client.channel.close()
        await client.channel.testingEventLoop.advanceTime(by: .seconds(5))
        guard case .publish = try await watcher.receive() else { throw TestFailure("expected the Will at session end") }
        #expect(broker.session(clientID: "c") == nil)
    }

    @Test("$SYS topics count clients and messages, reach $SYS subscribers, and not '#'")
    func systemTopics() async throws {
        let broker = makeBroker()
        let everything = try await TestConnection(broker: broker)
        try await everything.connect(clientID: "all")
        _ = try await everything.subscribe("#", qos: .atMostOnce)
        let operations = try await TestConnection(broker: broker)
        try await operations.connect(clientID: "ops")
        _ = try await operations.subscribe("$SYS/broker/+", qos: .atMostOnce)
        _ = try await operations.subscribe("$SYS/broker/messages/+", qos: .atMostOnce, packetIdentifier: 2)
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(.publish(.init(topicName: "a", payload: ByteBuffer(string: "12345"))))
        guard case .publish = try await everything.receive() else { throw TestFailure("expected the message") }
        await publisher.channel.testingEventLoop.run()

        let counts = broker.statistics.snapshot
        #expect(counts.clientsConnected == 3)
        #expect(counts.messagesReceived == 1 && counts.messagesSent == 1)
        // Bytes on the wire: every packet, CONNECTs and SUBSCRIBEs included.
        let clients = [everything, operations, publisher]
        #expect(counts.bytesReceived == clients.map(\.bytesSent).reduce(0, +))
        #expect(counts.bytesSent == clients.map(\.bytesRead).reduce(0, +))
        #expect(counts.bytesReceived > 3 * 15 && counts.bytesSent > 3 * 5 + 5)

        broker.publishSystemTopics(version: "test")
        var seen: [String: String] = [:]
        while seen.count < 5 {  // version, uptime, messages/received|sent|dropped
            guard case .publish(let value) = try await operations.receive() else { throw TestFailure("expected $SYS") }
            seen[value.topicName] = String(buffer: value.payload)
        }
        #expect(seen["$SYS/broker/version"] == "gatehouse test")
        #expect(seen["$SYS/broker/messages/received"] == "1")
        #expect(seen["$SYS/broker/messages/sent"] == "1")
        try await operations.expectSilence()
        try await everything.expectSilence()  // '#' never matches $SYS [MQTT-4.7.2-1]

        try await publisher.channel.close()
        await publisher.channel.testingEventLoop.run()
        #expect(broker.statistics.snapshot.clientsConnected == 2)
    }

    @Test("limits: too many topic levels (0x90 / 0x8F) and too many subscriptions (0x97); 3.1.1 sees 0x80")
    func limits() async throws {
        let broker = makeBroker {
            $0.maximumTopicLevels = 3
            $0.maximumSubscriptionsPerClient = 2
        }
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        try await client.send(
            .publish(.init(topicName: "a/b/c/d", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 1)))
        #expect(try await client.receive() == .puback(.init(packetIdentifier: 1, reasonCode: .topicNameInvalid)))
        #expect(try await client.subscribe("a/b/c/#") == [.topicFilterInvalid])
        #expect(try await client.subscribe("a/b/c", packetIdentifier: 2) == [.grantedQoS1])
        #expect(try await client.subscribe("x", packetIdentifier: 3) == [.grantedQoS1])
        #expect(try await client.subscribe("y", packetIdentifier: 4) == [.quotaExceeded])
        // Renewing an existing subscription is not a new one.
        #expect(try await client.subscribe("x", packetIdentifier: 5) == [.grantedQoS1])

        let legacy = try await TestConnection(broker: broker, version: .v311)
        try await legacy.connect(clientID: "l")
        #expect(try await legacy.subscribe("a/b/c/d") == [.unspecifiedError])
    }

    @Test("overlapping subscriptions deliver one message at the highest granted QoS [MQTT-3.3.5-1]")
    func overlappingSubscriptions() async throws {
        let broker = makeBroker()
        let subscriber = try await TestConnection(broker: broker, version: .v311)
        try await subscriber.connect(clientID: "s")
        _ = try await subscriber.subscribe("a/+", qos: .atMostOnce)
        _ = try await subscriber.subscribe("a/#", qos: .exactlyOnce, packetIdentifier: 2)
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(
            .publish(
                .init(topicName: "a/b", payload: ByteBuffer(string: "once"), qos: .exactlyOnce, packetIdentifier: 1)))
        guard case .publish(let delivered) = try await subscriber.receive() else {
            throw TestFailure("expected PUBLISH")
        }
        #expect(delivered.qos == .exactlyOnce)
        try await subscriber.expectSilence()
    }

    @Test("fan-out shares one encoding per version; a subscription identifier still gets its own form")
    func fanOutForms() async throws {
        let broker = makeBroker()
        let legacy = try await TestConnection(broker: broker, version: .v311)
        try await legacy.connect(clientID: "legacy")
        _ = try await legacy.subscribe("f/#", qos: .atMostOnce)
        let plain = try await TestConnection(broker: broker)
        try await plain.connect(clientID: "plain")
        _ = try await plain.subscribe("f/#", qos: .atMostOnce)
        let identified = try await TestConnection(broker: broker)
        try await identified.connect(clientID: "identified")
        _ = try await identified.subscribe("f/#", qos: .atMostOnce, properties: [.subscriptionIdentifier(9)])
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        let property = MQTTProperty.userProperty(name: "k", value: "v")
        try await publisher.send(
            .publish(.init(topicName: "f/1", payload: ByteBuffer(string: "x"), properties: [property])))

        guard case .publish(let toLegacy) = try await legacy.receive(),
            case .publish(let toPlain) = try await plain.receive(),
            case .publish(let toIdentified) = try await identified.receive()
        else { throw TestFailure("expected three deliveries") }
        #expect(toLegacy.properties.isEmpty && toLegacy.payload == ByteBuffer(string: "x"))
        #expect(toPlain.properties == [property])
        #expect(toIdentified.properties.items == [property, .subscriptionIdentifier(9)])
    }

    @Test("a slow reader is bounded by its session queue: nothing is written while it is not writable")
    func slowConsumer() async throws {
        let broker = makeBroker { $0.maximumQueuedMessages = 10 }
        let slow = try await TestConnection(broker: broker)
        try await slow.connect(clientID: "slow")
        _ = try await slow.subscribe("t", qos: .atMostOnce)
        let channel = slow.channel
        channel.isWritable = false
        try await channel.testingEventLoop.executeInContext { channel.pipeline.fireChannelWritabilityChanged() }

        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        for index in 0..<50 {
            try await publisher.send(.publish(.init(topicName: "t", payload: ByteBuffer(string: "\(index)"))))
        }
        try await slow.expectSilence()
        let session = try #require(broker.session(clientID: "slow"))
        #expect(session.queuedCount == 10)
        #expect(session.droppedCount == 40)
        #expect(broker.statistics.snapshot.messagesDropped == 40)

        channel.isWritable = true
        try await channel.testingEventLoop.executeInContext { channel.pipeline.fireChannelWritabilityChanged() }
        var payloads: [String] = []
        for _ in 0..<10 {
            guard case .publish(let message) = try await slow.receive() else { throw TestFailure("expected PUBLISH") }
            payloads.append(String(buffer: message.payload))
        }
        #expect(payloads == (0..<10).map(String.init))
        try await slow.expectSilence()
    }

    @Test("a keep-alive above the broker's maximum is overridden by Server Keep Alive in CONNACK")
    func serverKeepAlive() async throws {
        let broker = makeBroker { $0.maximumKeepAlive = 30 }
        let long = try await TestConnection(broker: broker)
        #expect(
            try await long.connect(clientID: "long", keepAlive: 600).properties.items.contains(.serverKeepAlive(30)))
        let none = try await TestConnection(broker: broker)
        #expect(try await none.connect(clientID: "none", keepAlive: 0).properties.items.contains(.serverKeepAlive(30)))
        let short = try await TestConnection(broker: broker)
        let shortAck = try await short.connect(clientID: "short", keepAlive: 10)
        #expect(!shortAck.properties.items.contains { if case .serverKeepAlive = $0 { true } else { false } })
    }

    @Test("Retain As Published keeps the retain flag on live deliveries; without it the flag is cleared")
    func retainAsPublished() async throws {
        let broker = makeBroker()
        let keeps = try await TestConnection(broker: broker)
        try await keeps.connect(clientID: "keeps")
        try await keeps.send(
            .subscribe(
                .init(
                    packetIdentifier: 1,
                    subscriptions: [.init(topicFilter: "r", options: .init(retainAsPublished: true))])))
        _ = try await keeps.receive()
        let clears = try await TestConnection(broker: broker)
        try await clears.connect(clientID: "clears")
        _ = try await clears.subscribe("r", qos: .atMostOnce)
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(.publish(.init(topicName: "r", payload: ByteBuffer(string: "v"), retain: true)))
        guard case .publish(let kept) = try await keeps.receive(),
            case .publish(let cleared) = try await clears.receive()
        else { throw TestFailure("expected two deliveries") }
        #expect(kept.retain)
        #expect(!cleared.retain)
    }

    @Test("retain handling 1 sends retained messages only for a new subscription; 2 never does")
    func retainHandling() async throws {
        let broker = makeBroker()
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "p")
        try await publisher.send(.publish(.init(topicName: "h", payload: ByteBuffer(string: "kept"), retain: true)))
        await publisher.channel.testingEventLoop.run()
        let client = try await TestConnection(broker: broker)
        try await client.connect(clientID: "c")
        func subscribe(_ handling: MQTTPacket.RetainHandling, _ identifier: UInt16) async throws {
            try await client.send(
                .subscribe(
                    .init(
                        packetIdentifier: identifier,
                        subscriptions: [.init(topicFilter: "h", options: .init(retainHandling: handling))])))
            #expect(
                try await client.receive() == .suback(.init(packetIdentifier: identifier, reasonCodes: [.grantedQoS0])))
        }
        try await subscribe(.sendOnNewSubscription, 1)
        guard case .publish(let first) = try await client.receive() else { throw TestFailure("expected retained") }
        #expect(first.retain)
        try await subscribe(.sendOnNewSubscription, 2)  // the same subscription again: not new
        try await client.expectSilence()
        try await subscribe(.doNotSend, 3)
        try await client.expectSilence()
    }

    @Test("the Will is published when the keep-alive runs out")
    func willOnKeepAliveTimeout() async throws {
        let broker = makeBroker()
        let watcher = try await TestConnection(broker: broker)
        try await watcher.connect(clientID: "w")
        _ = try await watcher.subscribe("status/#", qos: .atMostOnce)
        let silent = try await TestConnection(broker: broker)
        try await silent.connect(
            clientID: "silent", will: .init(topic: "status/silent", payload: ByteBuffer(string: "timed out")),
            keepAlive: 1)
        await silent.channel.testingEventLoop.advanceTime(by: .milliseconds(1_500))
        #expect(try await silent.receive() == .disconnect(.init(reasonCode: .keepAliveTimeout)))
        guard case .publish(let will) = try await watcher.receive() else { throw TestFailure("expected the Will") }
        #expect(will.payload == ByteBuffer(string: "timed out"))
    }

    @Test("timers from an earlier disconnect neither end a resumed session nor send its next Will early")
    func staleTimers() async throws {
        let broker = makeBroker()
        let watcher = try await TestConnection(broker: broker)
        try await watcher.connect(clientID: "w")
        _ = try await watcher.subscribe("status/#", qos: .atMostOnce)
        let will = MQTTPacket.Will(
            topic: "status/s", payload: ByteBuffer(string: "gone"), properties: [.willDelayInterval(8)])
        let persistent: MQTTProperties = [.sessionExpiryInterval(10)]

        let first = try await TestConnection(broker: broker)
        try await first.connect(clientID: "s", cleanStart: false, will: will, properties: persistent)
        try await first.channel.close()
        await first.channel.testingEventLoop.advanceTime(by: .seconds(5))
        // Resumed and dropped again: its timers now run from this second disconnect.
        let second = try await TestConnection(broker: broker)
        try await second.connect(clientID: "s", cleanStart: false, will: will, properties: persistent)
        try await second.channel.close()
        await second.channel.testingEventLoop.run()
        // The first disconnect's timers come due (8 s Will, 10 s expiry) and must do nothing.
        await first.channel.testingEventLoop.advanceTime(by: .seconds(5))
        try await watcher.expectSilence()
        #expect(broker.session(clientID: "s") != nil)
        // The second disconnect's own timers still work.
        await second.channel.testingEventLoop.advanceTime(by: .seconds(10))
        guard case .publish = try await watcher.receive() else { throw TestFailure("expected the Will") }
        #expect(broker.session(clientID: "s") == nil)
    }
}
