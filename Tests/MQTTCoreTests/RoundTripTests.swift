import MQTTCore
import NIOCore
import PropertyBased
import Testing

@Suite("decode(encode(p)) == p")
struct RoundTripTests {
    @Test("random packets of every type", arguments: MQTTProtocolVersion.allCases)
    func randomPackets(version: MQTTProtocolVersion) async {
        await propertyCheck(count: 2_000, input: RandomPackets.generator(version: version)) { packet in
            let decoded = try roundTrip(packet, version: version)
            #expect(decoded == packet)
        }
    }

    /// Each packet that carries properties, with every property the spec allows in it, so no
    /// property's encoding goes untested whatever the random draw.
    @Test("every property in every packet that allows it")
    func everyProperty() throws {
        var rng: any SeededRandomNumberGenerator = Xoshiro(seed: (1, 2, 3, 4))
        func all(_ context: MQTTPropertyContext) -> MQTTProperties {
            let items = MQTTPropertyIdentifier.allCases.filter { $0.allowedContexts.contains(context) }.map {
                RandomPackets.sample($0, version: .v5, &rng)
            }
            return MQTTProperties(items + [.userProperty(name: "second", value: "kept in order")])
        }
        let payload = ByteBuffer(string: "payload")
        let packets: [MQTTPacket] = [
            .connect(
                .init(
                    protocolVersion: .v5, clientIdentifier: "c", username: "u", password: [1],
                    will: .init(topic: "w", payload: payload, qos: .exactlyOnce, retain: true, properties: all(.will)),
                    properties: all(.connect))),
            .connack(.init(sessionPresent: true, reasonCode: .success, properties: all(.connack))),
            .publish(
                .init(
                    topicName: "a/b", payload: payload, qos: .atLeastOnce, packetIdentifier: 9,
                    properties: all(.publish))),
            .puback(.init(packetIdentifier: 1, reasonCode: .noMatchingSubscribers, properties: all(.puback))),
            .pubrec(.init(packetIdentifier: 2, reasonCode: .success, properties: all(.pubrec))),
            .pubrel(.init(packetIdentifier: 3, reasonCode: .packetIdentifierNotFound, properties: all(.pubrel))),
            .pubcomp(.init(packetIdentifier: 4, properties: all(.pubcomp))),
            .subscribe(
                .init(packetIdentifier: 5, subscriptions: [.init(topicFilter: "a/#")], properties: all(.subscribe))),
            .suback(.init(packetIdentifier: 5, reasonCodes: [.grantedQoS1], properties: all(.suback))),
            .unsubscribe(.init(packetIdentifier: 6, topicFilters: ["a/#"], properties: all(.unsubscribe))),
            .unsuback(.init(packetIdentifier: 6, reasonCodes: [.success], properties: all(.unsuback))),
            .disconnect(.init(reasonCode: .serverShuttingDown, properties: all(.disconnect))),
            .auth(.init(reasonCode: .continueAuthentication, properties: all(.auth))),
        ]
        var covered = Set<MQTTPropertyIdentifier>()
        for packet in packets {
            #expect(try roundTrip(packet, version: .v5) == packet)
            if case .connect(let connect) = packet, let will = connect.will {
                covered.formUnion(will.properties.items.map(\.identifier))
            }
        }
        for context in [MQTTPropertyContext.connect, .connack, .publish, .subscribe, .disconnect, .auth] {
            covered.formUnion(all(context).items.map(\.identifier))
        }
        #expect(covered == Set(MQTTPropertyIdentifier.allCases))
    }

    @Test("5.0 acknowledgements leave off a Success code and empty properties")
    func shortAcknowledgements() throws {
        let short = MQTTPacket.puback(.init(packetIdentifier: 7))
        #expect(try short.encoded(version: .v5).hexString == "40020007")
        let withCode = MQTTPacket.pubrec(.init(packetIdentifier: 7, reasonCode: .noMatchingSubscribers))
        #expect(try withCode.encoded(version: .v5).hexString == "5003000710")
        #expect(try MQTTPacket.disconnect(.init()).encoded(version: .v5).hexString == "e000")
    }

    @Test("3.1.1 carries reason codes as its own return codes")
    func legacyReturnCodes() throws {
        let refused = MQTTPacket.connack(.init(reasonCode: .banned))
        #expect(try refused.encoded(version: .v311).hexString == "20020005")
        let suback = MQTTPacket.suback(.init(packetIdentifier: 1, reasonCodes: [.grantedQoS2, .notAuthorized]))
        #expect(try suback.encoded(version: .v311).hexString == "900400010280")
        #expect(throws: MQTTEncodingError.packetNotInVersion(.auth, .v311)) {
            try MQTTPacket.auth(.init()).encoded(version: .v311)
        }
    }

    @Test("encoding refuses values the wire cannot carry")
    func encodingLimits() {
        let longTopic = String(repeating: "a", count: 65_536)
        #expect(throws: MQTTEncodingError.stringTooLong(65_536)) {
            try MQTTPacket.publish(.init(topicName: longTopic, payload: ByteBuffer())).encoded(version: .v5)
        }
    }
}
