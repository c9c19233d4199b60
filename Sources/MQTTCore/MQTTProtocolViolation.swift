/// Everything the decoder refuses. Each case names the spec rule it enforces and maps to the
/// reason code a server sends before closing (Malformed Packet 0x81, Protocol Error 0x82, …).
public enum MQTTProtocolViolation: Error, Hashable, Sendable {
    /// Packet type 0, or 15 (AUTH) under 3.1.1. [MQTT-2.1.2]
    case reservedPacketType(UInt8)
    /// Flag bits other than those the packet type requires. [MQTT-2.1.3-1]
    case invalidFixedHeaderFlags(MQTTPacketType, flags: UInt8)
    /// More than four bytes, or not the minimum number of bytes. [MQTT-1.5.5-1]
    case malformedVariableByteInteger
    /// Larger than the receiver's maximum packet size (whole packet, fixed header included).
    case packetTooLarge(size: Int, maximum: Int)
    /// A field runs past the end the remaining length gives.
    case truncated(MQTTPacketType)
    /// Bytes left over after the last field.
    case trailingBytes(MQTTPacketType)
    /// A string that is not well-formed UTF-8. [MQTT-1.5.4-1]
    case malformedUTF8String
    /// A string containing U+0000. [MQTT-1.5.4-2]
    case nullCharacterInString
    /// QoS 3. [MQTT-3.3.1-4]
    case invalidQoS(UInt8)
    /// DUP set on a QoS 0 PUBLISH. [MQTT-3.3.1-2]
    case duplicateFlagOnQoS0
    /// A packet identifier of zero. [MQTT-2.2.1-3]
    case zeroPacketIdentifier(MQTTPacketType)
    /// A property identifier the spec does not define. [MQTT-2.2.2]
    case unknownProperty(identifier: UInt8)
    /// A property that this packet may not carry. [MQTT-2.2.2]
    case propertyNotAllowed(MQTTPropertyIdentifier, in: MQTTPropertyContext)
    /// A property given twice where only one is allowed.
    case duplicateProperty(MQTTPropertyIdentifier)
    /// A property value outside its range (e.g. Receive Maximum 0).
    case invalidPropertyValue(MQTTPropertyIdentifier)
    /// A reason code the packet type does not define.
    case invalidReasonCode(UInt8, in: MQTTPacketType)
    /// A protocol name other than "MQTT" (or "MQIsdp" with level 3). [MQTT-3.1.2-1]
    case invalidProtocolName
    /// A protocol level other than 4 or 5. [MQTT-3.1.2-2]
    case unsupportedProtocolVersion(UInt8)
    /// The reserved CONNECT flag is set. [MQTT-3.1.2-3]
    case reservedConnectFlag
    /// Will QoS or Will Retain set without the Will flag, or Will QoS 3. [MQTT-3.1.2-11..14]
    case invalidWillFlags
    /// The password flag without the user name flag, in 3.1.1. [MQTT-3.1.2-22]
    case passwordWithoutUsername
    /// Reserved bits set in the CONNACK acknowledge flags. [MQTT-3.2.2-1]
    case reservedConnackFlags
    /// SUBSCRIBE or UNSUBSCRIBE with no topic filter. [MQTT-3.8.3-3], [MQTT-3.10.3-2]
    case noTopicFilters(MQTTPacketType)
    /// Reserved bits or Retain Handling 3 in subscription options. [MQTT-3.8.3-5]
    case invalidSubscriptionOptions(UInt8)
    /// No Local on a shared subscription. [MQTT-3.8.3-4]
    case noLocalOnSharedSubscription
    /// SUBACK or UNSUBACK (5.0) with no reason code.
    case noReasonCodes(MQTTPacketType)
    /// A PUBLISH topic name with `+` or `#`. [MQTT-3.3.2-2]
    case wildcardInTopicName
    /// An empty PUBLISH topic name without a Topic Alias. [MQTT-3.3.2-1]
    case emptyTopicName
    /// A server connection whose first packet is not CONNECT. [MQTT-3.1.0-1]
    case firstPacketNotConnect(MQTTPacketType)

    /// The reason code a server sends for this violation (in CONNACK before the session
    /// exists, in DISCONNECT after; 3.1.1 clients are only disconnected).
    public var reasonCode: MQTTReasonCode {
        switch self {
        case .packetTooLarge: .packetTooLarge
        case .unsupportedProtocolVersion: .unsupportedProtocolVersion
        case .wildcardInTopicName: .topicNameInvalid
        case .invalidPropertyValue(.topicAlias): .topicAliasInvalid
        case .zeroPacketIdentifier, .duplicateProperty, .invalidPropertyValue, .invalidReasonCode,
            .invalidProtocolName, .passwordWithoutUsername, .noTopicFilters,
            .invalidSubscriptionOptions, .noLocalOnSharedSubscription, .noReasonCodes,
            .emptyTopicName, .firstPacketNotConnect:
            .protocolError
        case .reservedPacketType, .invalidFixedHeaderFlags, .malformedVariableByteInteger,
            .truncated, .trailingBytes, .malformedUTF8String, .nullCharacterInString, .invalidQoS,
            .duplicateFlagOnQoS0, .unknownProperty, .propertyNotAllowed, .reservedConnectFlag,
            .invalidWillFlags, .reservedConnackFlags:
            .malformedPacket
        }
    }
}

/// Raised when a value cannot be put on the wire (a string over 65,535 bytes, a packet over
/// the 268,435,455-byte limit of the remaining length).
public enum MQTTEncodingError: Error, Hashable, Sendable {
    case stringTooLong(Int)
    case binaryTooLong(Int)
    case packetTooLarge(Int)
    case variableByteIntegerOutOfRange(Int)
    /// A packet that does not exist in the protocol version asked for (AUTH in 3.1.1).
    case packetNotInVersion(MQTTPacketType, MQTTProtocolVersion)
}
