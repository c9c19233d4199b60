public import NIOCore

/// Variable byte integers (§1.5.5): 7 bits a byte, at most four bytes.
public enum MQTTVariableByteInteger {
    public static let maximum = 268_435_455

    public static func encodedLength(of value: Int) -> Int {
        switch value {
        case ..<128: 1
        case ..<16_384: 2
        case ..<2_097_152: 3
        default: 4
        }
    }

    /// Decodes a variable byte integer at the start of `bytes` without consuming it.
    /// Returns nil when more bytes are needed.
    public static func peek(
        in buffer: ByteBuffer,
        at offset: Int
    ) throws(MQTTProtocolViolation) -> (value: Int, length: Int)? {
        var value = 0
        var multiplier = 1
        for index in 0..<4 {
            guard let byte = buffer.getInteger(at: offset + index, as: UInt8.self) else { return nil }
            value += Int(byte & 0x7F) * multiplier
            if byte & 0x80 == 0 {
                // A zero final byte after the first means a longer encoding than needed.
                if index > 0 && byte == 0 { throw .malformedVariableByteInteger }  // [MQTT-1.5.5-1]
                return (value, index + 1)
            }
            multiplier *= 128
        }
        throw .malformedVariableByteInteger
    }
}

extension ByteBuffer {
    mutating func writeMQTTVariableByteInteger(_ value: Int) throws(MQTTEncodingError) {
        guard value >= 0 && value <= MQTTVariableByteInteger.maximum else {
            throw .variableByteIntegerOutOfRange(value)
        }
        var remaining = value
        repeat {
            var byte = UInt8(remaining & 0x7F)
            remaining >>= 7
            if remaining > 0 { byte |= 0x80 }
            writeInteger(byte)
        } while remaining > 0
    }

    mutating func writeMQTTString(_ string: String) throws(MQTTEncodingError) {
        let length = string.utf8.count
        guard length <= Int(UInt16.max) else { throw .stringTooLong(length) }
        writeInteger(UInt16(length))
        writeString(string)
    }

    mutating func writeMQTTBinary(_ bytes: [UInt8]) throws(MQTTEncodingError) {
        guard bytes.count <= Int(UInt16.max) else { throw .binaryTooLong(bytes.count) }
        writeInteger(UInt16(bytes.count))
        writeBytes(bytes)
    }

    mutating func writeMQTTBinary(_ bytes: ByteBuffer) throws(MQTTEncodingError) {
        guard bytes.readableBytes <= Int(UInt16.max) else { throw .binaryTooLong(bytes.readableBytes) }
        writeInteger(UInt16(bytes.readableBytes))
        writeImmutableBuffer(bytes)
    }
}

/// Reads the fields of one packet body. Every read is bounded by the remaining length and
/// reports a shortfall as `.truncated(packetType)` rather than returning nil.
struct MQTTPacketReader {
    private(set) var buffer: ByteBuffer
    let packetType: MQTTPacketType

    init(_ buffer: ByteBuffer, packetType: MQTTPacketType) {
        self.buffer = buffer
        self.packetType = packetType
    }

    var isAtEnd: Bool { buffer.readableBytes == 0 }
    var remaining: Int { buffer.readableBytes }

    mutating func readByte() throws(MQTTProtocolViolation) -> UInt8 {
        guard let value = buffer.readInteger(as: UInt8.self) else { throw .truncated(packetType) }
        return value
    }

    mutating func readUInt16() throws(MQTTProtocolViolation) -> UInt16 {
        guard let value = buffer.readInteger(as: UInt16.self) else { throw .truncated(packetType) }
        return value
    }

    mutating func readUInt32() throws(MQTTProtocolViolation) -> UInt32 {
        guard let value = buffer.readInteger(as: UInt32.self) else { throw .truncated(packetType) }
        return value
    }

    mutating func readVariableByteInteger() throws(MQTTProtocolViolation) -> Int {
        guard let (value, length) = try MQTTVariableByteInteger.peek(in: buffer, at: buffer.readerIndex)
        else { throw .truncated(packetType) }
        buffer.moveReaderIndex(forwardBy: length)
        return value
    }

    mutating func readPacketIdentifier() throws(MQTTProtocolViolation) -> UInt16 {
        let identifier = try readUInt16()
        guard identifier != 0 else { throw .zeroPacketIdentifier(packetType) }  // [MQTT-2.2.1-3]
        return identifier
    }

    mutating func readSlice(length: Int) throws(MQTTProtocolViolation) -> ByteBuffer {
        guard let slice = buffer.readSlice(length: length) else { throw .truncated(packetType) }
        return slice
    }

    mutating func readSubReader(length: Int) throws(MQTTProtocolViolation) -> MQTTPacketReader {
        MQTTPacketReader(try readSlice(length: length), packetType: packetType)
    }

    /// A UTF-8 encoded string: well-formed and free of U+0000. [MQTT-1.5.4-1], [MQTT-1.5.4-2]
    mutating func readString() throws(MQTTProtocolViolation) -> String {
        let length = Int(try readUInt16())
        let bytes = try readSlice(length: length)
        return try MQTTPacketReader.validatedString(bytes)
    }

    static func validatedString(_ bytes: ByteBuffer) throws(MQTTProtocolViolation) -> String {
        let outcome: Result<String, MQTTProtocolViolation> = bytes.withUnsafeReadableBytes { raw in
            // A zero byte is never part of a multi-byte sequence, so this finds exactly U+0000.
            if raw.contains(0) { return .failure(.nullCharacterInString) }
            guard let string = String(validating: raw, as: UTF8.self) else {
                return .failure(.malformedUTF8String)
            }
            return .success(string)
        }
        return try outcome.get()
    }

    mutating func readBinary() throws(MQTTProtocolViolation) -> [UInt8] {
        let length = Int(try readUInt16())
        guard let bytes = buffer.readBytes(length: length) else { throw .truncated(packetType) }
        return bytes
    }

    mutating func readBinaryBuffer() throws(MQTTProtocolViolation) -> ByteBuffer {
        let length = Int(try readUInt16())
        return try readSlice(length: length)
    }

    mutating func readRest() -> ByteBuffer {
        buffer.readSlice(length: buffer.readableBytes) ?? ByteBuffer()
    }

    func expectEnd() throws(MQTTProtocolViolation) {
        guard isAtEnd else { throw .trailingBytes(packetType) }
    }
}
