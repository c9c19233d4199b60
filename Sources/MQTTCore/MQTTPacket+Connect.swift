public import NIOCore

extension MQTTPacket {
    /// CONNECT (§3.1): the first packet of every connection.
    public struct Connect: Equatable, Sendable {
        public var protocolVersion: MQTTProtocolVersion
        public var clientIdentifier: String
        /// Clean Session in 3.1.1, Clean Start in 5.0.
        public var cleanStart: Bool
        /// Seconds; 0 turns the keep-alive mechanism off.
        public var keepAlive: UInt16
        public var username: String?
        public var password: [UInt8]?
        public var will: Will?
        public var properties: MQTTProperties

        public init(
            protocolVersion: MQTTProtocolVersion,
            clientIdentifier: String,
            cleanStart: Bool = true,
            keepAlive: UInt16 = 60,
            username: String? = nil,
            password: [UInt8]? = nil,
            will: Will? = nil,
            properties: MQTTProperties = []
        ) {
            self.protocolVersion = protocolVersion
            self.clientIdentifier = clientIdentifier
            self.cleanStart = cleanStart
            self.keepAlive = keepAlive
            self.username = username
            self.password = password
            self.will = will
            self.properties = properties
        }
    }

    /// The Will Message a CONNECT registers.
    public struct Will: Equatable, Sendable {
        public var topic: String
        public var payload: ByteBuffer
        public var qos: MQTTQoS
        public var retain: Bool
        public var properties: MQTTProperties

        public init(
            topic: String,
            payload: ByteBuffer,
            qos: MQTTQoS = .atMostOnce,
            retain: Bool = false,
            properties: MQTTProperties = []
        ) {
            self.topic = topic
            self.payload = payload
            self.qos = qos
            self.retain = retain
            self.properties = properties
        }
    }
}

private enum ConnectFlag {
    static let reserved: UInt8 = 0x01
    static let cleanStart: UInt8 = 0x02
    static let will: UInt8 = 0x04
    static let willQoSShift: UInt8 = 3
    static let willQoSMask: UInt8 = 0x18
    static let willRetain: UInt8 = 0x20
    static let password: UInt8 = 0x40
    static let username: UInt8 = 0x80
}

extension MQTTPacket.Connect {
    var bodyLength: Int {
        let isV5 = protocolVersion == .v5
        var length = 6 + 1 + 1 + 2  // "MQTT" string, level, flags, keep alive
        if isV5 { length += properties.encodedLength }
        length += 2 + clientIdentifier.utf8.count
        if let will {
            if isV5 { length += will.properties.encodedLength }
            length += 2 + will.topic.utf8.count + 2 + will.payload.readableBytes
        }
        length += username.mqttEncodedLength
        if let password { length += 2 + password.count }
        return length
    }

    func writeBody(to buffer: inout ByteBuffer) throws(MQTTEncodingError) {
        try buffer.writeMQTTString("MQTT")
        buffer.writeInteger(protocolVersion.rawValue)
        var flags: UInt8 = 0
        if cleanStart { flags |= ConnectFlag.cleanStart }
        if let will {
            flags |= ConnectFlag.will | will.qos.rawValue << ConnectFlag.willQoSShift
            if will.retain { flags |= ConnectFlag.willRetain }
        }
        if password != nil { flags |= ConnectFlag.password }
        if username != nil { flags |= ConnectFlag.username }
        buffer.writeInteger(flags)
        buffer.writeInteger(keepAlive)
        if protocolVersion == .v5 { try properties.write(to: &buffer) }
        try buffer.writeMQTTString(clientIdentifier)
        if let will {
            if protocolVersion == .v5 { try will.properties.write(to: &buffer) }
            try buffer.writeMQTTString(will.topic)
            try buffer.writeMQTTBinary(will.payload)
        }
        if let username { try buffer.writeMQTTString(username) }
        if let password { try buffer.writeMQTTBinary(password) }
    }

    static func read(from reader: inout MQTTPacketReader) throws(MQTTProtocolViolation) -> Self {
        let protocolName = try reader.readString()
        let level = try reader.readByte()
        switch (protocolName, level) {
        case ("MQTT", MQTTProtocolVersion.v311.rawValue), ("MQTT", MQTTProtocolVersion.v5.rawValue):
            break
        case ("MQTT", _), ("MQIsdp", _):
            // MQTT 3.1 and unknown levels get CONNACK "unacceptable protocol version". [MQTT-3.1.2-2]
            throw .unsupportedProtocolVersion(level)
        default:
            throw .invalidProtocolName
        }
        let version = MQTTProtocolVersion(rawValue: level) ?? .v5
        let flags = try reader.readByte()
        guard flags & ConnectFlag.reserved == 0 else { throw .reservedConnectFlag }  // [MQTT-3.1.2-3]
        let hasWill = flags & ConnectFlag.will != 0
        let willQoSBits = (flags & ConnectFlag.willQoSMask) >> ConnectFlag.willQoSShift
        let willRetain = flags & ConnectFlag.willRetain != 0
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-14], [MQTT-3.1.2-15]
        guard hasWill || (willQoSBits == 0 && !willRetain), let willQoS = MQTTQoS(rawValue: willQoSBits)
        else { throw .invalidWillFlags }
        let hasUsername = flags & ConnectFlag.username != 0
        let hasPassword = flags & ConnectFlag.password != 0
        if version == .v311 && hasPassword && !hasUsername { throw .passwordWithoutUsername }

        let keepAlive = try reader.readUInt16()
        let properties: MQTTProperties =
            version == .v5 ? try MQTTProperties.read(from: &reader, context: .connect) : []
        let clientIdentifier = try reader.readString()
        var will: MQTTPacket.Will?
        if hasWill {
            let willProperties: MQTTProperties =
                version == .v5 ? try MQTTProperties.read(from: &reader, context: .will) : []
            let topic = try reader.readString()
            // The Will Topic is a topic name: no wildcards. [MQTT-3.1.3-11]
            guard MQTTTopic.isValidTopicName(topic) else { throw .wildcardInTopicName }
            let payload = try reader.readBinaryBuffer()
            will = MQTTPacket.Will(
                topic: topic, payload: payload, qos: willQoS, retain: willRetain, properties: willProperties
            )
        }
        let username = hasUsername ? try reader.readString() : nil
        let password = hasPassword ? try reader.readBinary() : nil
        try reader.expectEnd()
        return MQTTPacket.Connect(
            protocolVersion: version,
            clientIdentifier: clientIdentifier,
            cleanStart: flags & ConnectFlag.cleanStart != 0,
            keepAlive: keepAlive,
            username: username,
            password: password,
            will: will,
            properties: properties
        )
    }
}
