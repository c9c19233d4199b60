import Foundation
import GatehouseBroker
import MQTTCore
import NIOCore

/// A message as the store keeps it: its 5.0 PUBLISH bytes (topic, payload, QoS, retain flag and
/// the forwarded properties, in the codec every client already exercises) and, apart, its
/// expiry as seconds since 1970, since a monotonic deadline means nothing to the next process.
enum StoredMessageCoding {
    static func wire(_ message: RoutedMessage) throws -> [UInt8] {
        let publish = MQTTPacket.Publish(
            topicName: message.topic, payload: message.payload, qos: message.qos, retain: message.retain,
            duplicate: false, packetIdentifier: message.qos == .atMostOnce ? 0 : 1,
            properties: message.forwardedProperties)
        var bytes = try MQTTPacket.publish(publish).encoded(version: .v5)
        return bytes.readBytes(length: bytes.readableBytes) ?? []
    }

    static func message(wire: [UInt8], publisher: String?, expiresAt: Int64?, now: Now) throws -> RoutedMessage {
        var buffer = ByteBuffer(bytes: wire)
        var parser = MQTTPacketParser(protocolVersion: .v5)
        guard case .publish(let publish) = try parser.parse(from: &buffer) else {
            throw StoredMessageError()
        }
        return RoutedMessage(
            topic: publish.topicName, payload: publish.payload, qos: publish.qos, retain: publish.retain,
            forwardedProperties: publish.properties, publisherClientID: publisher,
            expiresAt: expiresAt.map { now.deadline + .seconds($0 - now.wallClock) })
    }

    /// Seconds since 1970 at which `message` expires, if it does.
    static func expiry(of message: RoutedMessage, now: Now) -> Int64? {
        message.expiresAt.map { now.wallClock + ($0 - now.deadline).nanoseconds / 1_000_000_000 }
    }

    /// One moment on both clocks, to convert between them.
    struct Now {
        var wallClock = Int64(Date().timeIntervalSince1970)
        var deadline = NIODeadline.now()
    }

    struct StoredMessageError: Error, CustomStringConvertible {
        var description: String { "a stored message is not a PUBLISH" }
    }

    /// Subscription identifiers as one column: "1,7".
    static func identifiers(_ list: [UInt32]) -> String? {
        list.isEmpty ? nil : list.map(String.init).joined(separator: ",")
    }

    static func identifiers(_ text: String?) -> [UInt32] {
        text?.split(separator: ",").compactMap { UInt32($0) } ?? []
    }
}
