/// The property identifiers of MQTT 5.0 (§2.2.2.2).
public enum MQTTPropertyIdentifier: UInt8, Sendable, Hashable, CaseIterable {
    case payloadFormatIndicator = 0x01
    case messageExpiryInterval = 0x02
    case contentType = 0x03
    case responseTopic = 0x08
    case correlationData = 0x09
    case subscriptionIdentifier = 0x0B
    case sessionExpiryInterval = 0x11
    case assignedClientIdentifier = 0x12
    case serverKeepAlive = 0x13
    case authenticationMethod = 0x15
    case authenticationData = 0x16
    case requestProblemInformation = 0x17
    case willDelayInterval = 0x18
    case requestResponseInformation = 0x19
    case responseInformation = 0x1A
    case serverReference = 0x1C
    case reasonString = 0x1F
    case receiveMaximum = 0x21
    case topicAliasMaximum = 0x22
    case topicAlias = 0x23
    case maximumQoS = 0x24
    case retainAvailable = 0x25
    case userProperty = 0x26
    case maximumPacketSize = 0x27
    case wildcardSubscriptionAvailable = 0x28
    case subscriptionIdentifierAvailable = 0x29
    case sharedSubscriptionAvailable = 0x2A

    /// Where the spec allows this property.
    public var allowedContexts: MQTTPropertyContext {
        switch self {
        case .payloadFormatIndicator, .messageExpiryInterval, .contentType, .responseTopic,
            .correlationData:
            [.publish, .will]
        case .subscriptionIdentifier: [.publish, .subscribe]
        case .sessionExpiryInterval: [.connect, .connack, .disconnect]
        case .assignedClientIdentifier, .serverKeepAlive, .responseInformation, .maximumQoS,
            .retainAvailable, .wildcardSubscriptionAvailable, .subscriptionIdentifierAvailable,
            .sharedSubscriptionAvailable:
            .connack
        case .authenticationMethod, .authenticationData: [.connect, .connack, .auth]
        case .requestProblemInformation, .requestResponseInformation: .connect
        case .willDelayInterval: .will
        case .serverReference: [.connack, .disconnect]
        case .reasonString:
            [.connack, .puback, .pubrec, .pubrel, .pubcomp, .suback, .unsuback, .disconnect, .auth]
        case .receiveMaximum, .topicAliasMaximum, .maximumPacketSize: [.connect, .connack]
        case .topicAlias: .publish
        case .userProperty: .all
        }
    }

    /// User Property may repeat anywhere, Subscription Identifier only in PUBLISH
    /// (one per matching subscription). Every other property appears at most once.
    func mayRepeat(in context: MQTTPropertyContext) -> Bool {
        switch self {
        case .userProperty: true
        case .subscriptionIdentifier: context == .publish
        default: false
        }
    }
}

/// The places a property may appear: the packets that carry properties, plus the Will
/// properties inside CONNECT.
public struct MQTTPropertyContext: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let connect = Self(rawValue: 1 << 0)
    public static let connack = Self(rawValue: 1 << 1)
    public static let publish = Self(rawValue: 1 << 2)
    public static let will = Self(rawValue: 1 << 3)
    public static let puback = Self(rawValue: 1 << 4)
    public static let pubrec = Self(rawValue: 1 << 5)
    public static let pubrel = Self(rawValue: 1 << 6)
    public static let pubcomp = Self(rawValue: 1 << 7)
    public static let subscribe = Self(rawValue: 1 << 8)
    public static let suback = Self(rawValue: 1 << 9)
    public static let unsubscribe = Self(rawValue: 1 << 10)
    public static let unsuback = Self(rawValue: 1 << 11)
    public static let disconnect = Self(rawValue: 1 << 12)
    public static let auth = Self(rawValue: 1 << 13)
    public static let all = Self(rawValue: (1 << 14) - 1)

    init(_ type: MQTTPacketType) {
        switch type {
        case .connect: self = .connect
        case .connack: self = .connack
        case .publish: self = .publish
        case .puback: self = .puback
        case .pubrec: self = .pubrec
        case .pubrel: self = .pubrel
        case .pubcomp: self = .pubcomp
        case .subscribe: self = .subscribe
        case .suback: self = .suback
        case .unsubscribe: self = .unsubscribe
        case .unsuback: self = .unsuback
        case .disconnect: self = .disconnect
        case .auth: self = .auth
        case .pingreq, .pingresp: self = []
        }
    }
}

/// One MQTT 5.0 property with its typed value.
public enum MQTTProperty: Hashable, Sendable {
    case payloadFormatIndicator(UInt8)
    case messageExpiryInterval(UInt32)
    case contentType(String)
    case responseTopic(String)
    case correlationData([UInt8])
    case subscriptionIdentifier(UInt32)
    case sessionExpiryInterval(UInt32)
    case assignedClientIdentifier(String)
    case serverKeepAlive(UInt16)
    case authenticationMethod(String)
    case authenticationData([UInt8])
    case requestProblemInformation(UInt8)
    case willDelayInterval(UInt32)
    case requestResponseInformation(UInt8)
    case responseInformation(String)
    case serverReference(String)
    case reasonString(String)
    case receiveMaximum(UInt16)
    case topicAliasMaximum(UInt16)
    case topicAlias(UInt16)
    case maximumQoS(UInt8)
    case retainAvailable(UInt8)
    case userProperty(name: String, value: String)
    case maximumPacketSize(UInt32)
    case wildcardSubscriptionAvailable(UInt8)
    case subscriptionIdentifierAvailable(UInt8)
    case sharedSubscriptionAvailable(UInt8)

    public var identifier: MQTTPropertyIdentifier {
        switch self {
        case .payloadFormatIndicator: .payloadFormatIndicator
        case .messageExpiryInterval: .messageExpiryInterval
        case .contentType: .contentType
        case .responseTopic: .responseTopic
        case .correlationData: .correlationData
        case .subscriptionIdentifier: .subscriptionIdentifier
        case .sessionExpiryInterval: .sessionExpiryInterval
        case .assignedClientIdentifier: .assignedClientIdentifier
        case .serverKeepAlive: .serverKeepAlive
        case .authenticationMethod: .authenticationMethod
        case .authenticationData: .authenticationData
        case .requestProblemInformation: .requestProblemInformation
        case .willDelayInterval: .willDelayInterval
        case .requestResponseInformation: .requestResponseInformation
        case .responseInformation: .responseInformation
        case .serverReference: .serverReference
        case .reasonString: .reasonString
        case .receiveMaximum: .receiveMaximum
        case .topicAliasMaximum: .topicAliasMaximum
        case .topicAlias: .topicAlias
        case .maximumQoS: .maximumQoS
        case .retainAvailable: .retainAvailable
        case .userProperty: .userProperty
        case .maximumPacketSize: .maximumPacketSize
        case .wildcardSubscriptionAvailable: .wildcardSubscriptionAvailable
        case .subscriptionIdentifierAvailable: .subscriptionIdentifierAvailable
        case .sharedSubscriptionAvailable: .sharedSubscriptionAvailable
        }
    }

    /// The value rules the spec states as Protocol Errors (a zero Receive Maximum, a
    /// boolean byte other than 0 or 1, …).
    var hasValidValue: Bool {
        switch self {
        case .payloadFormatIndicator(let byte), .requestProblemInformation(let byte),
            .requestResponseInformation(let byte), .maximumQoS(let byte), .retainAvailable(let byte),
            .wildcardSubscriptionAvailable(let byte), .subscriptionIdentifierAvailable(let byte),
            .sharedSubscriptionAvailable(let byte):
            byte <= 1
        case .subscriptionIdentifier(let value):
            value >= 1 && value <= UInt32(MQTTVariableByteInteger.maximum)
        case .receiveMaximum(let value), .topicAlias(let value):
            value != 0
        case .maximumPacketSize(let value):
            value != 0
        default:
            true
        }
    }
}
