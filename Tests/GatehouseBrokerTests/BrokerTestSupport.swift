import GatehouseAuth
import GatehouseBroker
import Logging
import MQTTCore
import NIOCore
import NIOEmbedded
import Testing

/// Accepts any client whose password is "secret" (or every client without one, when open).
struct TestAuthenticator: Authenticator {
    var acceptsAnonymous = true
    func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        if credentials.password == nil && !acceptsAnonymous { return .rejected }
        if let password = credentials.password, password != Array("secret".utf8) { return .rejected }
        return .accepted(
            Principal(
                identityID: credentials.username ?? "anonymous", username: credentials.username ?? "anonymous",
                clientIdentifier: credentials.clientIdentifier, tenant: "t", roles: []))
    }
}

/// Refuses one topic to everyone, for the authorization paths.
struct TestAuthorizer: Authorizer {
    func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision {
        topic.hasPrefix("forbidden") ? .reject : .accept
    }
}

func makeBroker(
    store: (any BrokerStore)? = nil, configure: (inout BrokerConfiguration) -> Void = { _ in }
) -> Broker {
    var configuration = BrokerConfiguration()
    configure(&configuration)
    return Broker(
        configuration: configuration, authenticator: TestAuthenticator(), authorizer: TestAuthorizer(),
        store: store, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
}

/// A client connection through the broker's real handlers, on NIO's thread-safe testing
/// channel: bytes in as a client would send them, packets out as a client would read them.
final class TestConnection {
    let channel: NIOAsyncTestingChannel
    let version: MQTTProtocolVersion
    private var parser: MQTTPacketParser
    /// Written bytes not yet parsed: one write may hold several packets.
    private var unread = ByteBuffer()
    /// Bytes this client has sent, and read of what the broker wrote.
    private(set) var bytesSent = 0
    private(set) var bytesRead = 0

    init(
        broker: Broker, version: MQTTProtocolVersion = .v5, connectTimeout: TimeAmount = .seconds(10),
        maximumPacketSize: Int = MQTTFrameDecoder.protocolMaximumPacketSize
    ) async throws {
        let channel = NIOAsyncTestingChannel()
        self.channel = channel
        self.version = version
        self.parser = MQTTPacketParser(protocolVersion: version)
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(
                BrokerConnectionHandler(
                    broker: broker, eventLoop: channel.eventLoop, connectTimeout: connectTimeout,
                    maximumPacketSize: maximumPacketSize,
                    logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
                ))
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1883)).get()
    }

    func send(_ packet: MQTTPacket) async throws {
        let bytes = try packet.encoded(version: packet.type == .connect ? connectVersion(packet) : version)
        bytesSent += bytes.readableBytes
        try await channel.writeInbound(bytes)
    }

    func sendBytes(_ bytes: [UInt8]) async throws {
        bytesSent += bytes.count
        try await channel.writeInbound(ByteBuffer(bytes: bytes))
    }

    private func connectVersion(_ packet: MQTTPacket) -> MQTTProtocolVersion {
        if case .connect(let connect) = packet { return connect.protocolVersion }
        return version
    }

    /// The next packet the broker writes. Testing event loops run tasks only when asked, and
    /// wakes arrive from other connections' loops, so this polls: run, look, wait a little.
    /// The wait is long because authentication runs in a task, and on two cores the other
    /// suites' blocking work (scrypt, child processes) has kept the task pool busy for over 5 s.
    func receive(
        within timeout: Duration = .seconds(20),
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> MQTTPacket {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if let packet = try parser.parse(from: &unread) { return packet }
            await channel.testingEventLoop.run()
            if var bytes = try await channel.readOutbound(as: ByteBuffer.self) {
                bytesRead += bytes.readableBytes
                unread.writeBuffer(&bytes)
                continue
            }
            try await Task.sleep(for: .milliseconds(2))
        }
        throw TestFailure("no packet within \(timeout) (line \(sourceLocation.line))")
    }

    /// Nothing more is written while pending tasks everywhere get a chance to run.
    func expectSilence(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for _ in 0..<10 {
            await channel.testingEventLoop.run()
            try await Task.sleep(for: .milliseconds(5))
        }
        let extra = try await channel.readOutbound(as: ByteBuffer.self)
        #expect(
            extra == nil && unread.readableBytes == 0, "unexpected bytes: \(String(describing: extra)) \(unread)",
            sourceLocation: sourceLocation)
    }

    @discardableResult
    func connect(
        clientID: String,
        cleanStart: Bool = true,
        password: String? = nil,
        will: MQTTPacket.Will? = nil,
        properties: MQTTProperties = [],
        keepAlive: UInt16 = 0
    ) async throws -> MQTTPacket.ConnAck {
        try await send(
            .connect(
                .init(
                    protocolVersion: version, clientIdentifier: clientID, cleanStart: cleanStart, keepAlive: keepAlive,
                    username: password.map { _ in "user" }, password: password.map { Array($0.utf8) }, will: will,
                    properties: properties)))
        guard case .connack(let connack) = try await receive() else { throw TestFailure("expected CONNACK") }
        return connack
    }

    func subscribe(
        _ filter: String, qos: MQTTQoS = .atLeastOnce, packetIdentifier: UInt16 = 1, properties: MQTTProperties = []
    )
        async throws -> [MQTTReasonCode]
    {
        try await send(
            .subscribe(
                .init(
                    packetIdentifier: packetIdentifier,
                    subscriptions: [.init(topicFilter: filter, options: .init(qos: qos))],
                    properties: properties)))
        guard case .suback(let suback) = try await receive() else { throw TestFailure("expected SUBACK") }
        return suback.reasonCodes
    }

    var isActive: Bool { channel.isActive }

    /// Waits for the broker to close the connection.
    func waitUntilClosed(within timeout: Duration = .seconds(5)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while channel.isActive {
            guard clock.now < deadline else { throw TestFailure("still open after \(timeout)") }
            await channel.testingEventLoop.run()
            try await Task.sleep(for: .milliseconds(2))
        }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
