/// The protocol level carried in CONNECT: 4 is MQTT 3.1.1, 5 is MQTT 5.0.
public enum MQTTProtocolVersion: UInt8, Sendable, Hashable, CaseIterable {
    case v311 = 4
    case v5 = 5
}

/// Delivery guarantee of a PUBLISH or a subscription.
public enum MQTTQoS: UInt8, Sendable, Hashable, CaseIterable, Comparable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (lhs: MQTTQoS, rhs: MQTTQoS) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The control packet types of the fixed header (bits 7–4 of byte 1).
public enum MQTTPacketType: UInt8, Sendable, Hashable, CaseIterable {
    case connect = 1
    case connack = 2
    case publish = 3
    case puback = 4
    case pubrec = 5
    case pubrel = 6
    case pubcomp = 7
    case subscribe = 8
    case suback = 9
    case unsubscribe = 10
    case unsuback = 11
    case pingreq = 12
    case pingresp = 13
    case disconnect = 14
    case auth = 15

    /// The fixed-header flags every packet but PUBLISH must carry. [MQTT-2.1.3-1]
    public var requiredFlags: UInt8 {
        switch self {
        case .pubrel, .subscribe, .unsubscribe: 0b0010
        default: 0
        }
    }
}
