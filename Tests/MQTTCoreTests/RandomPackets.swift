import MQTTCore
import NIOCore
import PropertyBased

/// Builds random but valid packets for one protocol version, so that the property
/// `decode(encode(p)) == p` can be checked over many shapes.
struct RandomPackets {
    let version: MQTTProtocolVersion

    // Multi-byte characters on purpose: lengths are in bytes, not characters.
    private static let alphabet: [Character] = Array("abcXYZ019-_ é€𪛔")

    static func generator(version: MQTTProtocolVersion) -> Generator<MQTTPacket, Shrink.None<MQTTPacket>> {
        Generator { rng in RandomPackets(version: version).packet(using: &rng) }
    }

    func packet(using rng: inout any SeededRandomNumberGenerator) -> MQTTPacket {
        let types = MQTTPacketType.allCases.filter { version == .v5 || $0 != .auth }
        switch types.randomElement(using: &rng) ?? .pingreq {
        case .connect: return .connect(connect(using: &rng))
        case .connack:
            let code: MQTTReasonCode =
                version == .v5
                ? MQTTReasonCode(rawValue: [0x00, 0x80, 0x86, 0x87, 0x9F].randomElement(using: &rng) ?? 0)
                : (MQTTConnectReturnCode.allCases.randomElement(using: &rng) ?? .accepted).reasonCode
            return .connack(
                .init(sessionPresent: .random(using: &rng), reasonCode: code, properties: properties(.connack, &rng)))
        case .publish: return .publish(publish(using: &rng))
        case .puback: return .puback(acknowledgement(.puback, [0x00, 0x10, 0x87, 0x97], &rng))
        case .pubrec: return .pubrec(acknowledgement(.pubrec, [0x00, 0x10, 0x80, 0x99], &rng))
        case .pubrel: return .pubrel(acknowledgement(.pubrel, [0x00, 0x92], &rng))
        case .pubcomp: return .pubcomp(acknowledgement(.pubcomp, [0x00, 0x92], &rng))
        case .subscribe:
            let subscriptions = (0..<Int.random(in: 1...4, using: &rng)).map { _ in
                MQTTPacket.Subscription(topicFilter: topicFilter(&rng), options: subscriptionOptions(&rng))
            }
            return .subscribe(
                .init(
                    packetIdentifier: packetIdentifier(&rng), subscriptions: subscriptions,
                    properties: properties(.subscribe, &rng)))
        case .suback:
            let choices: [UInt8] =
                version == .v5 ? [0x00, 0x01, 0x02, 0x80, 0x87, 0x8F, 0xA2] : [0x00, 0x01, 0x02, 0x80]
            let codes = (0..<Int.random(in: 1...4, using: &rng)).map { _ in
                MQTTReasonCode(rawValue: choices.randomElement(using: &rng) ?? 0)
            }
            return .suback(
                .init(
                    packetIdentifier: packetIdentifier(&rng), reasonCodes: codes, properties: properties(.suback, &rng))
            )
        case .unsubscribe:
            let filters = (0..<Int.random(in: 1...4, using: &rng)).map { _ in topicFilter(&rng) }
            return .unsubscribe(
                .init(
                    packetIdentifier: packetIdentifier(&rng), topicFilters: filters,
                    properties: properties(.unsubscribe, &rng)))
        case .unsuback:
            guard version == .v5 else { return .unsuback(.init(packetIdentifier: packetIdentifier(&rng))) }
            let codes = (0..<Int.random(in: 1...3, using: &rng)).map { _ in
                MQTTReasonCode(rawValue: [0x00, 0x11, 0x87].randomElement(using: &rng) ?? 0)
            }
            return .unsuback(
                .init(
                    packetIdentifier: packetIdentifier(&rng), reasonCodes: codes,
                    properties: properties(.unsuback, &rng)))
        case .pingreq: return .pingreq
        case .pingresp: return .pingresp
        case .disconnect:
            guard version == .v5 else { return .disconnect(.init()) }
            let code = MQTTReasonCode(rawValue: [0x00, 0x04, 0x81, 0x8E, 0x98].randomElement(using: &rng) ?? 0)
            return .disconnect(.init(reasonCode: code, properties: properties(.disconnect, &rng)))
        case .auth:
            let code = MQTTReasonCode(rawValue: [0x00, 0x18, 0x19].randomElement(using: &rng) ?? 0)
            return .auth(.init(reasonCode: code, properties: properties(.auth, &rng)))
        }
    }

    func connect(using rng: inout any SeededRandomNumberGenerator) -> MQTTPacket.Connect {
        var will: MQTTPacket.Will?
        if Bool.random(using: &rng) {
            will = MQTTPacket.Will(
                topic: topicName(&rng),
                payload: payload(&rng),
                qos: MQTTQoS.allCases.randomElement(using: &rng) ?? .atMostOnce,
                retain: .random(using: &rng),
                properties: properties(.will, &rng)
            )
        }
        let username: String? = Bool.random(using: &rng) ? string(&rng) : nil
        // 3.1.1 forbids a password without a user name. [MQTT-3.1.2-22]
        let password: [UInt8]? =
            (username != nil || version == .v5) && Bool.random(using: &rng) ? bytes(&rng) : nil
        return MQTTPacket.Connect(
            protocolVersion: version,
            clientIdentifier: string(&rng),
            cleanStart: .random(using: &rng),
            keepAlive: .random(in: 0...UInt16.max, using: &rng),
            username: username,
            password: password,
            will: will,
            properties: properties(.connect, &rng)
        )
    }

    func publish(using rng: inout any SeededRandomNumberGenerator) -> MQTTPacket.Publish {
        let qos = MQTTQoS.allCases.randomElement(using: &rng) ?? .atMostOnce
        return MQTTPacket.Publish(
            topicName: topicName(&rng),
            payload: payload(&rng),
            qos: qos,
            retain: .random(using: &rng),
            duplicate: qos != .atMostOnce && .random(using: &rng),
            packetIdentifier: qos == .atMostOnce ? 0 : packetIdentifier(&rng),
            properties: properties(.publish, &rng)
        )
    }

    private func acknowledgement(
        _ context: MQTTPropertyContext,
        _ codes: [UInt8],
        _ rng: inout any SeededRandomNumberGenerator
    ) -> MQTTPacket.PublishAcknowledgement {
        guard version == .v5 else { return .init(packetIdentifier: packetIdentifier(&rng)) }
        return .init(
            packetIdentifier: packetIdentifier(&rng),
            reasonCode: MQTTReasonCode(rawValue: codes.randomElement(using: &rng) ?? 0),
            properties: properties(context, &rng)
        )
    }

    private func subscriptionOptions(_ rng: inout any SeededRandomNumberGenerator) -> MQTTPacket.SubscriptionOptions {
        let qos = MQTTQoS.allCases.randomElement(using: &rng) ?? .atMostOnce
        guard version == .v5 else { return .init(qos: qos) }
        return .init(
            qos: qos,
            noLocal: .random(using: &rng),
            retainAsPublished: .random(using: &rng),
            retainHandling: MQTTPacket.RetainHandling.allCases.randomElement(using: &rng) ?? .sendOnSubscribe
        )
    }

    /// A random subset of the properties allowed in `context`, each with a valid value.
    func properties(_ context: MQTTPropertyContext, _ rng: inout any SeededRandomNumberGenerator) -> MQTTProperties {
        guard version == .v5 else { return [] }
        let allowed = MQTTPropertyIdentifier.allCases.filter { $0.allowedContexts.contains(context) }
        var items: [MQTTProperty] = []
        for identifier in allowed where Int.random(in: 0..<3, using: &rng) == 0 {
            items.append(Self.sample(identifier, version: version, &rng))
            if identifier == .userProperty || (identifier == .subscriptionIdentifier && context == .publish) {
                items.append(Self.sample(identifier, version: version, &rng))
            }
        }
        items.shuffle(using: &rng)
        return MQTTProperties(items)
    }

    static func sample(
        _ identifier: MQTTPropertyIdentifier,
        version: MQTTProtocolVersion,
        _ rng: inout any SeededRandomNumberGenerator
    ) -> MQTTProperty {
        let factory = RandomPackets(version: version)
        let flag = UInt8.random(in: 0...1, using: &rng)
        let u32 = UInt32.random(in: 0...UInt32.max, using: &rng)
        let nonZero16 = UInt16.random(in: 1...UInt16.max, using: &rng)
        switch identifier {
        case .payloadFormatIndicator: return .payloadFormatIndicator(flag)
        case .messageExpiryInterval: return .messageExpiryInterval(u32)
        case .contentType: return .contentType(factory.string(&rng))
        case .responseTopic: return .responseTopic(factory.topicName(&rng))
        case .correlationData: return .correlationData(factory.bytes(&rng))
        case .subscriptionIdentifier: return .subscriptionIdentifier(.random(in: 1...268_435_455, using: &rng))
        case .sessionExpiryInterval: return .sessionExpiryInterval(u32)
        case .assignedClientIdentifier: return .assignedClientIdentifier(factory.string(&rng))
        case .serverKeepAlive: return .serverKeepAlive(.random(in: 0...UInt16.max, using: &rng))
        case .authenticationMethod: return .authenticationMethod(factory.string(&rng))
        case .authenticationData: return .authenticationData(factory.bytes(&rng))
        case .requestProblemInformation: return .requestProblemInformation(flag)
        case .willDelayInterval: return .willDelayInterval(u32)
        case .requestResponseInformation: return .requestResponseInformation(flag)
        case .responseInformation: return .responseInformation(factory.string(&rng))
        case .serverReference: return .serverReference(factory.string(&rng))
        case .reasonString: return .reasonString(factory.string(&rng))
        case .receiveMaximum: return .receiveMaximum(nonZero16)
        case .topicAliasMaximum: return .topicAliasMaximum(.random(in: 0...UInt16.max, using: &rng))
        case .topicAlias: return .topicAlias(nonZero16)
        case .maximumQoS: return .maximumQoS(flag)
        case .retainAvailable: return .retainAvailable(flag)
        case .userProperty: return .userProperty(name: factory.string(&rng), value: factory.string(&rng))
        case .maximumPacketSize: return .maximumPacketSize(.random(in: 1...UInt32.max, using: &rng))
        case .wildcardSubscriptionAvailable: return .wildcardSubscriptionAvailable(flag)
        case .subscriptionIdentifierAvailable: return .subscriptionIdentifierAvailable(flag)
        case .sharedSubscriptionAvailable: return .sharedSubscriptionAvailable(flag)
        }
    }

    func string(_ rng: inout any SeededRandomNumberGenerator) -> String {
        String((0..<Int.random(in: 0...12, using: &rng)).compactMap { _ in Self.alphabet.randomElement(using: &rng) })
    }

    func topicName(_ rng: inout any SeededRandomNumberGenerator) -> String {
        let levels = (0..<Int.random(in: 1...4, using: &rng)).map { _ in string(&rng).replacingSlashes() }
        let name = levels.joined(separator: "/")
        return name.isEmpty ? "t" : name
    }

    func topicFilter(_ rng: inout any SeededRandomNumberGenerator) -> String {
        var levels = (0..<Int.random(in: 1...4, using: &rng)).map { _ in
            Int.random(in: 0..<4, using: &rng) == 0 ? "+" : string(&rng).replacingSlashes()
        }
        if Bool.random(using: &rng) { levels.append("#") }
        let filter = levels.joined(separator: "/")
        return filter.isEmpty ? "f" : filter
    }

    func bytes(_ rng: inout any SeededRandomNumberGenerator) -> [UInt8] {
        (0..<Int.random(in: 0...16, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    func payload(_ rng: inout any SeededRandomNumberGenerator) -> ByteBuffer {
        // Now and then a payload long enough for a multi-byte remaining length.
        let length =
            Int.random(in: 0..<8, using: &rng) == 0
            ? Int.random(in: 128...20_000, using: &rng) : Int.random(in: 0...32, using: &rng)
        return ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    private func packetIdentifier(_ rng: inout any SeededRandomNumberGenerator) -> UInt16 {
        .random(in: 1...UInt16.max, using: &rng)
    }
}

extension String {
    fileprivate func replacingSlashes() -> String {
        String(map { $0 == "/" ? "_" : $0 })
    }
}
