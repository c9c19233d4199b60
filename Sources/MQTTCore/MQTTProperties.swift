public import NIOCore

/// The property list of one packet (or of a Will), in wire order. Order matters only for
/// repeated User Properties, which the spec asks receivers to keep in order. [MQTT-3.3.2-18]
public struct MQTTProperties: Hashable, Sendable, ExpressibleByArrayLiteral {
    public var items: [MQTTProperty]

    public init(_ items: [MQTTProperty] = []) { self.items = items }
    public init(arrayLiteral elements: MQTTProperty...) { self.items = elements }

    public var isEmpty: Bool { items.isEmpty }

    /// The first value of a property, for properties that appear at most once.
    public func first<Value>(_ extract: (MQTTProperty) -> Value?) -> Value? {
        for item in items {
            if let value = extract(item) { return value }
        }
        return nil
    }

    public var sessionExpiryInterval: UInt32? {
        first { if case .sessionExpiryInterval(let v) = $0 { v } else { nil } }
    }
    public var messageExpiryInterval: UInt32? {
        first { if case .messageExpiryInterval(let v) = $0 { v } else { nil } }
    }
    public var receiveMaximum: UInt16? {
        first { if case .receiveMaximum(let v) = $0 { v } else { nil } }
    }
    public var maximumPacketSize: UInt32? {
        first { if case .maximumPacketSize(let v) = $0 { v } else { nil } }
    }
    public var topicAliasMaximum: UInt16? {
        first { if case .topicAliasMaximum(let v) = $0 { v } else { nil } }
    }
    public var topicAlias: UInt16? {
        first { if case .topicAlias(let v) = $0 { v } else { nil } }
    }
    public var willDelayInterval: UInt32? {
        first { if case .willDelayInterval(let v) = $0 { v } else { nil } }
    }
    public var payloadFormatIndicator: UInt8? {
        first { if case .payloadFormatIndicator(let v) = $0 { v } else { nil } }
    }
    public var authenticationMethod: String? {
        first { if case .authenticationMethod(let v) = $0 { v } else { nil } }
    }
    public var authenticationData: [UInt8]? {
        first { if case .authenticationData(let v) = $0 { v } else { nil } }
    }
    public var subscriptionIdentifiers: [UInt32] {
        items.compactMap { if case .subscriptionIdentifier(let v) = $0 { v } else { nil } }
    }
    public var userProperties: [(name: String, value: String)] {
        items.compactMap { if case .userProperty(let n, let v) = $0 { (n, v) } else { nil } }
    }

    /// Bytes of the property list without its length prefix.
    var contentLength: Int {
        var length = 0
        for item in items { length += 1 + item.valueLength }
        return length
    }

    /// Bytes on the wire including the variable byte integer length prefix.
    var encodedLength: Int {
        let content = contentLength
        return MQTTVariableByteInteger.encodedLength(of: content) + content
    }

    func write(to buffer: inout ByteBuffer) throws(MQTTEncodingError) {
        try buffer.writeMQTTVariableByteInteger(contentLength)
        for item in items {
            try item.write(to: &buffer)
        }
    }

    /// Reads a length-prefixed property list and enforces where each property may appear,
    /// which may repeat, and each value's range.
    static func read(
        from reader: inout MQTTPacketReader,
        context: MQTTPropertyContext
    ) throws(MQTTProtocolViolation) -> MQTTProperties {
        let length = try reader.readVariableByteInteger()
        var block = try reader.readSubReader(length: length)
        var items: [MQTTProperty] = []
        var seen: UInt64 = 0
        while !block.isAtEnd {
            let property = try MQTTProperty.read(from: &block)
            let identifier = property.identifier
            guard identifier.allowedContexts.contains(context) else {
                throw .propertyNotAllowed(identifier, in: context)
            }
            let bit: UInt64 = 1 << identifier.rawValue
            if seen & bit != 0 && !identifier.mayRepeat(in: context) {
                throw .duplicateProperty(identifier)
            }
            seen |= bit
            guard property.hasValidValue else { throw .invalidPropertyValue(identifier) }
            items.append(property)
        }
        return MQTTProperties(items)
    }
}

extension MQTTProperty {
    var valueLength: Int {
        switch self {
        case .payloadFormatIndicator, .requestProblemInformation, .requestResponseInformation,
            .maximumQoS, .retainAvailable, .wildcardSubscriptionAvailable,
            .subscriptionIdentifierAvailable, .sharedSubscriptionAvailable:
            1
        case .serverKeepAlive, .receiveMaximum, .topicAliasMaximum, .topicAlias:
            2
        case .messageExpiryInterval, .sessionExpiryInterval, .willDelayInterval, .maximumPacketSize:
            4
        case .subscriptionIdentifier(let value):
            MQTTVariableByteInteger.encodedLength(of: Int(value))
        case .contentType(let string), .responseTopic(let string),
            .assignedClientIdentifier(let string), .authenticationMethod(let string),
            .responseInformation(let string), .serverReference(let string),
            .reasonString(let string):
            2 + string.utf8.count
        case .correlationData(let bytes), .authenticationData(let bytes):
            2 + bytes.count
        case .userProperty(let name, let value):
            4 + name.utf8.count + value.utf8.count
        }
    }

    func write(to buffer: inout ByteBuffer) throws(MQTTEncodingError) {
        buffer.writeInteger(identifier.rawValue)
        switch self {
        case .payloadFormatIndicator(let byte), .requestProblemInformation(let byte),
            .requestResponseInformation(let byte), .maximumQoS(let byte), .retainAvailable(let byte),
            .wildcardSubscriptionAvailable(let byte), .subscriptionIdentifierAvailable(let byte),
            .sharedSubscriptionAvailable(let byte):
            buffer.writeInteger(byte)
        case .serverKeepAlive(let value), .receiveMaximum(let value),
            .topicAliasMaximum(let value), .topicAlias(let value):
            buffer.writeInteger(value)
        case .messageExpiryInterval(let value), .sessionExpiryInterval(let value),
            .willDelayInterval(let value), .maximumPacketSize(let value):
            buffer.writeInteger(value)
        case .subscriptionIdentifier(let value):
            try buffer.writeMQTTVariableByteInteger(Int(value))
        case .contentType(let string), .responseTopic(let string),
            .assignedClientIdentifier(let string), .authenticationMethod(let string),
            .responseInformation(let string), .serverReference(let string),
            .reasonString(let string):
            try buffer.writeMQTTString(string)
        case .correlationData(let bytes), .authenticationData(let bytes):
            try buffer.writeMQTTBinary(bytes)
        case .userProperty(let name, let value):
            try buffer.writeMQTTString(name)
            try buffer.writeMQTTString(value)
        }
    }

    static func read(from reader: inout MQTTPacketReader) throws(MQTTProtocolViolation) -> MQTTProperty {
        // Every defined identifier is below 128, so it is a one-byte variable byte integer.
        let rawIdentifier = try reader.readVariableByteInteger()
        guard rawIdentifier < 128, let identifier = MQTTPropertyIdentifier(rawValue: UInt8(rawIdentifier))
        else {
            throw .unknownProperty(identifier: UInt8(truncatingIfNeeded: rawIdentifier))
        }
        switch identifier {
        case .payloadFormatIndicator: return .payloadFormatIndicator(try reader.readByte())
        case .messageExpiryInterval: return .messageExpiryInterval(try reader.readUInt32())
        case .contentType: return .contentType(try reader.readString())
        case .responseTopic: return .responseTopic(try reader.readString())
        case .correlationData: return .correlationData(try reader.readBinary())
        case .subscriptionIdentifier:
            return .subscriptionIdentifier(UInt32(try reader.readVariableByteInteger()))
        case .sessionExpiryInterval: return .sessionExpiryInterval(try reader.readUInt32())
        case .assignedClientIdentifier: return .assignedClientIdentifier(try reader.readString())
        case .serverKeepAlive: return .serverKeepAlive(try reader.readUInt16())
        case .authenticationMethod: return .authenticationMethod(try reader.readString())
        case .authenticationData: return .authenticationData(try reader.readBinary())
        case .requestProblemInformation: return .requestProblemInformation(try reader.readByte())
        case .willDelayInterval: return .willDelayInterval(try reader.readUInt32())
        case .requestResponseInformation: return .requestResponseInformation(try reader.readByte())
        case .responseInformation: return .responseInformation(try reader.readString())
        case .serverReference: return .serverReference(try reader.readString())
        case .reasonString: return .reasonString(try reader.readString())
        case .receiveMaximum: return .receiveMaximum(try reader.readUInt16())
        case .topicAliasMaximum: return .topicAliasMaximum(try reader.readUInt16())
        case .topicAlias: return .topicAlias(try reader.readUInt16())
        case .maximumQoS: return .maximumQoS(try reader.readByte())
        case .retainAvailable: return .retainAvailable(try reader.readByte())
        case .userProperty:
            let name = try reader.readString()
            return .userProperty(name: name, value: try reader.readString())
        case .maximumPacketSize: return .maximumPacketSize(try reader.readUInt32())
        case .wildcardSubscriptionAvailable: return .wildcardSubscriptionAvailable(try reader.readByte())
        case .subscriptionIdentifierAvailable:
            return .subscriptionIdentifierAvailable(try reader.readByte())
        case .sharedSubscriptionAvailable: return .sharedSubscriptionAvailable(try reader.readByte())
        }
    }
}
