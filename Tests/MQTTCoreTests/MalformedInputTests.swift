import MQTTCore
import NIOCore
import Testing

/// One row per decoder rule: the bad bytes, the typed error, and the reason code a server
/// sends for it.
struct MalformedCase: CustomTestStringConvertible, Sendable {
    let name: String
    let hex: String
    /// nil: a server-side parser that expects CONNECT first.
    let version: MQTTProtocolVersion?
    let violation: MQTTProtocolViolation
    let reasonCode: MQTTReasonCode
    var testDescription: String { name }

    init(
        _ name: String, _ hex: String, _ version: MQTTProtocolVersion?, _ violation: MQTTProtocolViolation,
        _ reasonCode: MQTTReasonCode
    ) {
        self.name = name
        self.hex = hex
        self.version = version
        self.violation = violation
        self.reasonCode = reasonCode
    }
}

// Header of a 5.0 CONNECT up to the flags byte: "MQTT", level 5.
private let connect5Prefix = "00 04 4d 51 54 54 05"

let malformedCases: [MalformedCase] = [
    .init("packet type 0", "00 00", .v5, .reservedPacketType(0), .malformedPacket),
    .init("AUTH under 3.1.1", "f0 00", .v311, .reservedPacketType(15), .malformedPacket),
    .init(
        "PUBREL without flag bit 1", "60 02 00 01", .v5, .invalidFixedHeaderFlags(.pubrel, flags: 0), .malformedPacket),
    .init(
        "SUBSCRIBE with flags 0", "80 06 00 01 00 01 61 00", .v5, .invalidFixedHeaderFlags(.subscribe, flags: 0),
        .malformedPacket),
    .init("PINGREQ with a flag", "c1 00", .v5, .invalidFixedHeaderFlags(.pingreq, flags: 1), .malformedPacket),
    .init("CONNECT with a flag", "11 00", nil, .invalidFixedHeaderFlags(.connect, flags: 1), .malformedPacket),
    .init("remaining length of five bytes", "30 ff ff ff ff 01", .v5, .malformedVariableByteInteger, .malformedPacket),
    .init("remaining length not minimal", "c0 80 00", .v5, .malformedVariableByteInteger, .malformedPacket),
    .init(
        "property length not minimal", "30 06 00 01 61 80 00 00", .v5, .malformedVariableByteInteger, .malformedPacket),
    .init("topic runs past the packet", "30 05 00 0a 61 62 63", .v5, .truncated(.publish), .malformedPacket),
    .init("PUBACK too short", "40 01 00", .v5, .truncated(.puback), .malformedPacket),
    .init("property list runs past the packet", "30 05 00 01 61 09 01", .v5, .truncated(.publish), .malformedPacket),
    .init("PINGREQ with a body", "c0 01 00", .v5, .trailingBytes(.pingreq), .malformedPacket),
    .init("3.1.1 PUBACK with a reason code", "40 03 00 01 00", .v311, .trailingBytes(.puback), .malformedPacket),
    .init("3.1.1 DISCONNECT with a body", "e0 01 00", .v311, .trailingBytes(.disconnect), .malformedPacket),
    .init("invalid UTF-8 in a topic", "30 04 00 02 c3 28", .v5, .malformedUTF8String, .malformedPacket),
    .init("UTF-16 surrogate in a topic", "30 06 00 03 ed a0 80 00", .v5, .malformedUTF8String, .malformedPacket),
    .init("overlong UTF-8", "30 04 00 02 c0 af", .v311, .malformedUTF8String, .malformedPacket),
    .init("U+0000 in a topic", "30 05 00 03 61 00 62", .v311, .nullCharacterInString, .malformedPacket),
    .init(
        "U+0000 in a user property", "30 0a 00 01 61 06 26 00 01 00 00 00 ", .v5, .nullCharacterInString,
        .malformedPacket),
    .init("PUBLISH QoS 3", "36 05 00 01 61 00 01", .v5, .invalidQoS(3), .malformedPacket),
    .init("DUP on QoS 0", "38 03 00 01 61", .v311, .duplicateFlagOnQoS0, .malformedPacket),
    .init(
        "PUBLISH packet identifier 0", "32 05 00 01 61 00 00", .v311, .zeroPacketIdentifier(.publish), .protocolError),
    .init(
        "SUBSCRIBE packet identifier 0", "82 06 00 00 00 01 61 00", .v311, .zeroPacketIdentifier(.subscribe),
        .protocolError),
    .init("PUBACK packet identifier 0", "40 02 00 00", .v5, .zeroPacketIdentifier(.puback), .protocolError),
    .init("unknown property 0x05", "30 05 00 01 61 01 05", .v5, .unknownProperty(identifier: 5), .malformedPacket),
    .init(
        "Session Expiry in PUBLISH", "30 09 00 01 61 05 11 00 00 00 01", .v5,
        .propertyNotAllowed(.sessionExpiryInterval, in: .publish), .malformedPacket),
    .init(
        "Will Delay in CONNECT properties",
        "10 12 \(connect5Prefix) 02 00 0a 05 18 00 00 00 01 00 00", nil,
        .propertyNotAllowed(.willDelayInterval, in: .connect), .malformedPacket),
    .init(
        "Message Expiry twice", "30 0e 00 01 61 0a 02 00 00 00 01 02 00 00 00 02", .v5,
        .duplicateProperty(.messageExpiryInterval), .protocolError),
    .init(
        "Subscription Identifier twice in SUBSCRIBE", "82 0b 00 01 04 0b 01 0b 02 00 01 61 00", .v5,
        .duplicateProperty(.subscriptionIdentifier), .protocolError),
    .init(
        "Payload Format Indicator 2", "30 06 00 01 61 02 01 02", .v5, .invalidPropertyValue(.payloadFormatIndicator),
        .protocolError),
    .init("Topic Alias 0", "30 07 00 01 61 03 23 00 00", .v5, .invalidPropertyValue(.topicAlias), .topicAliasInvalid),
    .init(
        "Receive Maximum 0", "10 11 \(connect5Prefix) 02 00 0a 03 21 00 00 00 01 63", nil,
        .invalidPropertyValue(.receiveMaximum), .protocolError),
    .init(
        "Subscription Identifier 0", "82 09 00 01 02 0b 00 00 01 61 00", .v5,
        .invalidPropertyValue(.subscriptionIdentifier), .protocolError),
    .init("PUBACK reason 0x05", "40 03 00 01 05", .v5, .invalidReasonCode(5, in: .puback), .protocolError),
    .init("DISCONNECT reason 0x01", "e0 01 01", .v5, .invalidReasonCode(1, in: .disconnect), .protocolError),
    .init("3.1.1 CONNACK return code 6", "20 02 00 06", .v311, .invalidReasonCode(6, in: .connack), .protocolError),
    .init("3.1.1 SUBACK code 0x87", "90 03 00 01 87", .v311, .invalidReasonCode(0x87, in: .suback), .protocolError),
    .init("protocol name MQTX", "10 0c 00 04 4d 51 54 58 04 02 00 0a 00 00", nil, .invalidProtocolName, .protocolError),
    .init(
        "MQTT 3.1 (MQIsdp, level 3)", "10 0e 00 06 4d 51 49 73 64 70 03 02 00 0a 00 00", nil,
        .unsupportedProtocolVersion(3), .unsupportedProtocolVersion),
    .init(
        "protocol level 6", "10 0c 00 04 4d 51 54 54 06 02 00 0a 00 00", nil, .unsupportedProtocolVersion(6),
        .unsupportedProtocolVersion),
    .init(
        "reserved CONNECT flag", "10 0d \(connect5Prefix) 03 00 0a 00 00 00", nil, .reservedConnectFlag,
        .malformedPacket),
    .init(
        "Will QoS without Will flag", "10 0d \(connect5Prefix) 0a 00 0a 00 00 00", nil, .invalidWillFlags,
        .malformedPacket),
    .init(
        "Will Retain without Will flag", "10 0d \(connect5Prefix) 22 00 0a 00 00 00", nil, .invalidWillFlags,
        .malformedPacket),
    .init("Will QoS 3", "10 0d \(connect5Prefix) 1e 00 0a 00 00 00", nil, .invalidWillFlags, .malformedPacket),
    .init(
        "3.1.1 password without user name", "10 0f 00 04 4d 51 54 54 04 42 00 0a 00 00 00 01 70", nil,
        .passwordWithoutUsername, .protocolError),
    .init(
        "Will topic with a wildcard", "10 13 \(connect5Prefix) 06 00 0a 00 00 00 00 00 01 23 00 00", nil,
        .wildcardInTopicName, .topicNameInvalid),
    .init("CONNECT cut short", "10 08 \(connect5Prefix) 02", nil, .truncated(.connect), .malformedPacket),
    .init("CONNACK reserved flag", "20 03 02 00 00", .v5, .reservedConnackFlags, .malformedPacket),
    .init("SUBSCRIBE without filters", "82 02 00 01", .v311, .noTopicFilters(.subscribe), .protocolError),
    .init("UNSUBSCRIBE without filters", "a2 03 00 01 00", .v5, .noTopicFilters(.unsubscribe), .protocolError),
    .init(
        "3.1.1 subscription option bit 2", "82 06 00 01 00 01 61 04", .v311, .invalidSubscriptionOptions(4),
        .protocolError),
    .init("Retain Handling 3", "82 07 00 01 00 00 01 61 30", .v5, .invalidSubscriptionOptions(0x30), .protocolError),
    .init(
        "reserved option bit 6", "82 07 00 01 00 00 01 61 40", .v5, .invalidSubscriptionOptions(0x40), .protocolError),
    .init("subscription QoS 3", "82 07 00 01 00 00 01 61 03", .v5, .invalidQoS(3), .malformedPacket),
    .init(
        "No Local on a shared subscription", "82 10 00 01 00 00 0a 24 73 68 61 72 65 2f 67 2f 61 04", .v5,
        .noLocalOnSharedSubscription, .protocolError),
    .init("SUBACK without codes", "90 03 00 01 00", .v5, .noReasonCodes(.suback), .protocolError),
    .init("wildcard in a topic name", "30 05 00 03 61 2f 23", .v5, .wildcardInTopicName, .topicNameInvalid),
    .init("plus in a topic name", "30 05 00 03 2b 2f 61", .v311, .wildcardInTopicName, .topicNameInvalid),
    .init("empty topic without an alias (5.0)", "30 03 00 00 00", .v5, .emptyTopicName, .protocolError),
    .init("empty topic (3.1.1)", "30 02 00 00", .v311, .emptyTopicName, .protocolError),
    .init("first packet PINGREQ", "c0 00", nil, .firstPacketNotConnect(.pingreq), .protocolError),
    .init("first packet PUBLISH", "30 03 00 01 61", nil, .firstPacketNotConnect(.publish), .protocolError),
]

@Suite("malformed input")
struct MalformedInputTests {
    @Test("each rule gives its typed error and reason code", arguments: malformedCases)
    func rejected(_ rule: MalformedCase) {
        #expect(throws: rule.violation) { try parseAll(rule.hex, version: rule.version) }
        #expect(rule.violation.reasonCode == rule.reasonCode)
    }

    @Test("a packet over the maximum size is refused from its fixed header alone")
    func oversizeRefusedEarly() {
        // Only the fixed header has arrived: 1 + 3 bytes announcing 16,384 bytes of body.
        #expect(throws: MQTTProtocolViolation.packetTooLarge(size: 16_388, maximum: 1_024)) {
            try parseAll("30 80 80 01", version: .v5, maximumPacketSize: 1_024)
        }
        #expect(MQTTProtocolViolation.packetTooLarge(size: 2, maximum: 1).reasonCode == .packetTooLarge)
    }

    @Test("repeated Subscription Identifiers and User Properties are allowed in PUBLISH")
    func allowedRepeats() throws {
        let packets = try parseAll("30 0f 00 01 61 0a 0b 01 0b 02 26 00 01 6b 00 00 62", version: .v5)
        guard case .publish(let publish) = packets.first else {
            Issue.record("expected a PUBLISH")
            return
        }
        #expect(publish.properties.subscriptionIdentifiers == [1, 2])
        #expect(publish.properties.userProperties.map(\.name) == ["k"])
        #expect(publish.payload == ByteBuffer(string: "b"))
    }

    @Test("an empty topic with a Topic Alias is a valid 5.0 PUBLISH")
    func emptyTopicWithAlias() throws {
        let packets = try parseAll("30 06 00 00 03 23 00 01", version: .v5)
        #expect(packets == [.publish(.init(topicName: "", payload: ByteBuffer(), properties: [.topicAlias(1)]))])
    }
}
