import GatehouseAuth
import MQTTCore
import NIOCore
import Testing

@testable import GatehouseBroker

/// The connection's protocol decisions, without a channel, a broker or a timer.
@Suite("connection protocol")
struct ConnectionProtocolTests {
    var limits: BrokerConfiguration {
        var limits = BrokerConfiguration()
        limits.topicAliasMaximum = 4
        limits.maximumTopicLevels = 3
        return limits
    }

    func connect(
        _ version: MQTTProtocolVersion = .v5, id: String = "c1", cleanStart: Bool = true, keepAlive: UInt16 = 60,
        username: String? = nil, password: String? = nil, will: MQTTPacket.Will? = nil,
        properties: MQTTProperties = []
    ) -> MQTTPacket {
        .connect(
            .init(
                protocolVersion: version, clientIdentifier: id, cleanStart: cleanStart, keepAlive: keepAlive,
                username: username, password: password.map { Array($0.utf8) }, will: will, properties: properties))
    }

    /// A protocol past CONNECT and authentication.
    func connected(_ packet: MQTTPacket) -> ConnectionProtocol {
        var connection = ConnectionProtocol(limits: limits)
        _ = connection.receive(packet)
        _ = connection.accepted(sessionPresent: false)
        return connection
    }

    func publish(_ topic: String, alias: UInt16? = nil, qos: MQTTQoS = .atMostOnce) -> MQTTPacket.Publish {
        .init(
            topicName: topic, payload: ByteBuffer(string: "x"), qos: qos, packetIdentifier: qos == .atMostOnce ? 0 : 7,
            properties: alias.map { [.topicAlias($0)] } ?? [])
    }

    @Test("before CONNECT: any other packet closes without a word; an unknown level gets 3.1.1's CONNACK 0x84")
    func beforeConnect() {
        var silent = ConnectionProtocol(limits: limits)
        #expect(silent.receive(.pingreq) == .close(reason: nil))
        #expect(silent.violated(.truncated(.connect)) == .close(reason: nil))

        var unknown = ConnectionProtocol(limits: limits)
        #expect(
            unknown.violated(.unsupportedProtocolVersion(9))
                == .refuse(.connack(.init(reasonCode: .unsupportedProtocolVersion))))
        #expect(unknown.version == .v311 && unknown.phase == .closed)
        #expect(unknown.receive(connect()) == .ignore)
    }

    @Test("a CONNECT goes to authentication with its client id, session expiry and receive maximum decided")
    func connectRequest() throws {
        var empty = ConnectionProtocol(limits: limits)
        guard
            case .authenticate(let request) = empty.receive(
                connect(id: "", properties: [.sessionExpiryInterval(300), .receiveMaximum(5)]))
        else {
            Issue.record("a 5.0 CONNECT with an empty id is authenticated")
            return
        }
        #expect(request.clientID.hasPrefix("gatehouse-") && request.assignedIdentifier == request.clientID)
        #expect(request.sessionExpiryInterval == 300 && request.receiveMaximum == 5)
        #expect(empty.phase == .authenticating)

        var persistent = ConnectionProtocol(limits: limits)
        guard case .authenticate(let old) = persistent.receive(connect(.v311, cleanStart: false)) else {
            Issue.record("a 3.1.1 CONNECT is authenticated")
            return
        }
        // 3.1.1's persistent session never expires; its window is the broker's in-flight limit.
        #expect(old.assignedIdentifier == nil && old.sessionExpiryInterval == UInt32.max)
        #expect(old.receiveMaximum == limits.maximumInflightMessages)

        var refused = ConnectionProtocol(limits: limits)
        #expect(
            refused.receive(connect(.v311, id: "", cleanStart: false))
                == .refuse(.connack(.init(reasonCode: .clientIdentifierNotValid))))
        #expect(refused.phase == .closed)
    }

    @Test("packets during authentication wait, and come back in order with a CONNACK that states the limits")
    func acceptance() throws {
        var connection = ConnectionProtocol(limits: limits)
        guard case .authenticate(let request) = connection.receive(connect(id: "", cleanStart: false)) else {
            Issue.record("a CONNECT is authenticated")
            return
        }
        let early = MQTTPacket.publish(publish("a"))
        #expect(connection.receive(early) == .hold)
        #expect(connection.receive(.pingreq) == .hold)
        let accepted = connection.accepted(sessionPresent: true)
        #expect(accepted.pending == [early, .pingreq])
        guard case .connack(let connack) = accepted.connack else {
            Issue.record("accepted with a CONNACK")
            return
        }
        #expect(connack.sessionPresent && connack.reasonCode == .success)
        let assigned = try #require(request.assignedIdentifier)
        #expect(connack.properties.items.contains(.assignedClientIdentifier(assigned)))
        #expect(connack.properties.items.contains(.topicAliasMaximum(4)))
        #expect(connack.properties.items.contains(.receiveMaximum(limits.receiveMaximum)))
        #expect(connection.phase == .connected)
        #expect(connection.receive(.pingreq) == .reply(.pingresp))

        // Clean Start: never Session Present, whatever the broker had.
        var clean = ConnectionProtocol(limits: limits)
        _ = clean.receive(connect())
        guard case .connack(let fresh) = clean.accepted(sessionPresent: true).connack else { return }
        #expect(!fresh.sessionPresent)
    }

    @Test("a refused CONNECT: no credentials 0x87, wrong ones 0x86, a session of another identity 0x87")
    func refusals() {
        var anonymous = ConnectionProtocol(limits: limits)
        _ = anonymous.receive(connect())
        #expect(anonymous.authenticationRefused() == .connack(.init(reasonCode: .notAuthorized)))
        #expect(anonymous.phase == .closed)

        var wrong = ConnectionProtocol(limits: limits)
        _ = wrong.receive(connect(username: "u", password: "p"))
        _ = wrong.receive(.pingreq)
        #expect(wrong.authenticationRefused() == .connack(.init(reasonCode: .badUserNameOrPassword)))

        var taken = ConnectionProtocol(limits: limits)
        _ = taken.receive(connect(username: "u", password: "p"))
        #expect(taken.sessionRefused() == .connack(.init(reasonCode: .notAuthorized)))
    }

    @Test("keep-alive: the broker's maximum overrides a longer or disabled one, said in Server Keep Alive (5.0)")
    func keepAlive() {
        for (asked, expected) in [(UInt16(0), UInt16(30)), (90, 30), (10, 10)] {
            var connection = ConnectionProtocol(
                limits: {
                    var l = limits
                    l.maximumKeepAlive = 30
                    return l
                }())
            _ = connection.receive(connect(keepAlive: asked))
            let accepted = connection.accepted(sessionPresent: false)
            #expect(accepted.keepAlive == expected)
            guard case .connack(let connack) = accepted.connack else { continue }
            #expect(connack.properties.items.contains(.serverKeepAlive(30)) == (asked != expected))
        }
        var old = ConnectionProtocol(
            limits: {
                var l = limits
                l.maximumKeepAlive = 30
                return l
            }())
        _ = old.receive(connect(.v311, keepAlive: 0))
        let accepted = old.accepted(sessionPresent: false)
        #expect(accepted.keepAlive == 30 && accepted.connack == .connack(.init(reasonCode: .success)))
    }

    @Test("once connected: a second CONNECT, an AUTH or a server's packet is a protocol error (0x82)")
    func connectedProtocolErrors() {
        for packet: MQTTPacket in [connect(), .auth(.init()), .pingresp, .connack(.init(reasonCode: .success))] {
            var connection = connected(connect())
            #expect(connection.receive(packet) == .close(reason: .protocolError))
        }
        var connection = connected(connect())
        #expect(connection.violated(.malformedUTF8String) == .close(reason: .malformedPacket))
        #expect(connection.disconnectPacket(.keepAliveTimeout) == .disconnect(.init(reasonCode: .keepAliveTimeout)))
        #expect(connection.disconnectPacket(nil) == nil)
        let wasConnected = connection.end()
        #expect(wasConnected)
        let step = connection.receive(.pingreq)
        let endedAgain = connection.end()
        #expect(step == .ignore && !endedAgain)
        // 3.1.1 has no DISCONNECT from the server: its client is only disconnected.
        #expect(connected(connect(.v311)).disconnectPacket(.keepAliveTimeout) == nil)
    }

    @Test("inbound topic aliases: a name sets one, an empty name uses it; 0 or above the maximum is 0x94")
    func inboundTopicAliases() {
        var connection = connected(connect())
        #expect(
            connection.receive(.publish(publish("a/b", alias: 2))) == .publish(publish("a/b", alias: 2), topic: "a/b"))
        #expect(connection.receive(.publish(publish("", alias: 2))) == .publish(publish("", alias: 2), topic: "a/b"))
        #expect(connection.receive(.publish(publish("c", alias: 2))) == .publish(publish("c", alias: 2), topic: "c"))
        #expect(connection.receive(.publish(publish("", alias: 2))) == .publish(publish("", alias: 2), topic: "c"))
        #expect(connection.receive(.publish(publish("", alias: 3))) == .close(reason: .protocolError))
        for alias: UInt16 in [0, 5] {
            var fresh = connected(connect())
            #expect(fresh.receive(.publish(publish("a", alias: alias))) == .close(reason: .topicAliasInvalid))
        }
    }

    @Test("DISCONNECT: a normal one drops the Will, 0x04 keeps it; an expiry cannot be raised from 0 (0x82)")
    func disconnect() {
        let will = MQTTPacket.Will(topic: "w", payload: ByteBuffer(string: "gone"))
        var normal = connected(connect(will: will))
        #expect(normal.will == will)
        #expect(normal.receive(.disconnect(.init())) == .disconnect(sessionExpiryInterval: nil))
        #expect(normal.will == nil)

        var withWill = connected(connect(will: will, properties: [.sessionExpiryInterval(60)]))
        let keepWill = MQTTPacket.disconnect(
            .init(reasonCode: .disconnectWithWillMessage, properties: [.sessionExpiryInterval(0)]))
        #expect(withWill.receive(keepWill) == .disconnect(sessionExpiryInterval: 0))
        #expect(withWill.will == will && withWill.sessionExpiryInterval == 0)

        var ending = connected(connect())
        #expect(
            ending.receive(.disconnect(.init(properties: [.sessionExpiryInterval(60)])))
                == .close(reason: .protocolError))
    }

    @Test("acknowledgements: 5.0 carries the reason, 3.1.1 always a plain one, QoS 0 none; protocol refusals")
    func acknowledgements() {
        let five = connected(connect())
        let qos1 = publish("a", qos: .atLeastOnce)
        #expect(
            five.acknowledgement(of: qos1, code: .notAuthorized)
                == .puback(.init(packetIdentifier: 7, reasonCode: .notAuthorized)))
        #expect(
            five.acknowledgement(of: publish("a", qos: .exactlyOnce), code: .noMatchingSubscribers)
                == .pubrec(.init(packetIdentifier: 7, reasonCode: .noMatchingSubscribers)))
        #expect(five.acknowledgement(of: publish("a"), code: .success) == nil)
        let old = connected(connect(.v311))
        #expect(old.acknowledgement(of: qos1, code: .notAuthorized) == .puback(.init(packetIdentifier: 7)))
        #expect(
            old.unsubscribeAcknowledgement(.init(packetIdentifier: 3, topicFilters: ["a"]), codes: [.success])
                == .unsuback(.init(packetIdentifier: 3)))

        var notText = publish("a")
        notText.properties = [.payloadFormatIndicator(1)]
        notText.payload = ByteBuffer(bytes: [0xFF, 0xFE])
        #expect(five.refusal(of: notText, topic: TopicLevels("a")) == .payloadFormatInvalid)
        #expect(five.refusal(of: publish("a/b/c"), topic: TopicLevels("a/b/c")) == nil)
        #expect(five.refusal(of: publish("a/b/c/d"), topic: TopicLevels("a/b/c/d")) == .topicNameInvalid)
    }

    func auth(_ reason: MQTTReasonCode, method: String = "SCRAM-SHA-256", data: String = "x") -> MQTTPacket {
        .auth(
            .init(
                reasonCode: reason, properties: [.authenticationMethod(method), .authenticationData(Array(data.utf8))]))
    }

    @Test(
        "enhanced authentication: CONNECT's method and data, AUTH 0x18 only after a challenge, CONNACK with the method")
    func enhancedAuthentication() throws {
        var connection = ConnectionProtocol(limits: limits)
        let step = connection.receive(
            connect(properties: [.authenticationMethod("SCRAM-SHA-256"), .authenticationData(Array("n,,n=u".utf8))]))
        guard case .authenticate(let request) = step else {
            Issue.record("an enhanced CONNECT is authenticated")
            return
        }
        #expect(request.authenticationMethod == "SCRAM-SHA-256" && request.authenticationData == Array("n,,n=u".utf8))
        // No answer is due before a challenge went out.
        var early = connection
        #expect(early.receive(auth(.continueAuthentication)) == .refuse(.connack(.init(reasonCode: .protocolError))))
        #expect(
            connection.challenge(Array("r=1".utf8))
                == .auth(
                    .init(
                        reasonCode: .continueAuthentication,
                        properties: [.authenticationMethod("SCRAM-SHA-256"), .authenticationData(Array("r=1".utf8))])))
        #expect(
            connection.receive(auth(.continueAuthentication, data: "p=2"))
                == .continueAuthentication(data: Array("p=2".utf8)))
        let accepted = connection.accepted(sessionPresent: false, authenticationData: Array("v=3".utf8))
        guard case .connack(let connack) = accepted.connack else { return }
        #expect(connack.properties.items.contains(.authenticationMethod("SCRAM-SHA-256")))
        #expect(connack.properties.items.contains(.authenticationData(Array("v=3".utf8))))

        // Before CONNACK, only AUTH and DISCONNECT. [MQTT-3.1.2-30]
        var impatient = ConnectionProtocol(limits: limits)
        _ = impatient.receive(connect(properties: [.authenticationMethod("SCRAM-SHA-256")]))
        #expect(impatient.receive(.pingreq) == .refuse(.connack(.init(reasonCode: .protocolError))))

        var wrong = ConnectionProtocol(limits: limits)
        _ = wrong.receive(connect(username: "u", properties: [.authenticationMethod("SCRAM-SHA-256")]))
        #expect(wrong.authenticationRefused() == .connack(.init(reasonCode: .notAuthorized)))
        var unknown = ConnectionProtocol(limits: limits)
        _ = unknown.receive(connect(properties: [.authenticationMethod("KERBEROS")]))
        #expect(unknown.methodRefused() == .connack(.init(reasonCode: .badAuthenticationMethod)))
    }

    @Test("re-authentication: AUTH 0x19 with the CONNECT's method only, one at a time; without enhanced CONNECT, 0x82")
    func reauthentication() {
        var connection = connected(connect(properties: [.authenticationMethod("GH-JWT")]))
        #expect(
            connection.receive(auth(.reAuthenticate, method: "GH-JWT", data: "jwt"))
                == .reauthenticate(data: Array("jwt".utf8)))
        #expect(connection.reauthenticating)
        #expect(connection.receive(.pingreq) == .reply(.pingresp))  // the session goes on meanwhile
        #expect(
            connection.reauthenticated(data: nil)
                == .auth(.init(reasonCode: .success, properties: [.authenticationMethod("GH-JWT")])))
        #expect(!connection.reauthenticating)
        #expect(connection.receive(auth(.reAuthenticate, method: "GH-JWT")) == .reauthenticate(data: Array("x".utf8)))
        #expect(connection.receive(auth(.reAuthenticate, method: "GH-JWT")) == .close(reason: .protocolError))

        var otherMethod = connected(connect(properties: [.authenticationMethod("GH-JWT")]))
        #expect(otherMethod.receive(auth(.reAuthenticate, method: "GH-TOKEN")) == .close(reason: .protocolError))
        var unanswered = connected(connect(properties: [.authenticationMethod("GH-JWT")]))
        #expect(unanswered.receive(auth(.continueAuthentication, method: "GH-JWT")) == .close(reason: .protocolError))
        var plain = connected(connect())
        #expect(plain.receive(auth(.reAuthenticate)) == .close(reason: .protocolError))  // [MQTT-4.12.1-1]
    }
}
