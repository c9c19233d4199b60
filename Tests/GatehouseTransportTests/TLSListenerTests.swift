import Crypto
import Foundation
import GatehouseAuth
import GatehouseBroker
import GatehouseCertificates
import GatehouseTransport
import Logging
import MQTTCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import Testing

/// Records what each CONNECT presented, and refuses it.
private final class RecordingAuthenticator: Authenticator {
    let presented = NIOLockedValueBox<[ConnectCredentials]>([])

    func authenticate(_ credentials: ConnectCredentials) async -> AuthenticationOutcome {
        presented.withLockedValue { $0.append(credentials) }
        return .rejected
    }

    func firstCredentials(timeout: Duration = .seconds(10)) async throws -> ConnectCredentials {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let first = presented.withLockedValue({ $0.first }) { return first }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw CancellationError()
    }
}

/// A TLS listener pipeline on a real loopback socket, with a NIOSSL client holding a
/// certificate from a CA the test makes.
@Suite("TLS listener", .timeLimit(.minutes(1)))
struct TLSListenerTests {
    private let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test("the verified client certificate reaches the authenticators in ConnectCredentials")
    func clientCertificateReachesAuthenticators() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let authority = try CertificateAuthority.create(commonName: "Fleet CA")
        let server = try authority.issue(
            commonName: "localhost", usage: .server, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1"])
        let client = try authority.issue(
            commonName: "sensor-7", usage: .client, dnsNames: ["sensor-7.acme.example"], uris: ["urn:acme:sensor-7"])
        try authority.certificatePEM.write(toFile: "\(directory)/ca.pem", atomically: true, encoding: .utf8)
        try server.certificatePEM.write(toFile: "\(directory)/server.pem", atomically: true, encoding: .utf8)
        try writeSecret(server.privateKeyPEM, to: "\(directory)/server.key")

        let tls = try TLSServerContext.load(
            TLSSettings(
                certificateFile: "\(directory)/server.pem", keyFile: "\(directory)/server.key",
                clientCAFile: "\(directory)/ca.pem", clientCertificates: .required))
        let recorder = RecordingAuthenticator()
        let broker = Broker(
            configuration: BrokerConfiguration(), authenticator: recorder, authorizer: AllowAllAuthorizer(),
            logger: logger)
        let logger = self.logger
        let listener = ListenAddress(kind: .tls, host: "127.0.0.1", port: 0)
        let serverChannel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureListenerPipeline(
                        channel: channel, listener: listener, tls: tls, broker: broker,
                        limits: MQTTConnectionLimits(), logger: logger)
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { serverChannel.close(promise: nil) }

        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates([
            try NIOSSLCertificate(bytes: Array(try authority.certificatePEM.utf8), format: .pem)
        ])
        configuration.certificateChain = [
            .certificate(try NIOSSLCertificate(bytes: Array(client.certificatePEM.utf8), format: .pem))
        ]
        configuration.privateKey = .privateKey(
            try NIOSSLPrivateKey(bytes: Array(client.privateKeyPEM.utf8), format: .pem))
        let clientContext = try NIOSSLContext(configuration: configuration)
        let clientChannel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        NIOSSLClientHandler(context: clientContext, serverHostname: "localhost"))
                }
            }
            .connect(host: "127.0.0.1", port: serverChannel.localAddress?.port ?? 0).get()
        defer { clientChannel.close(promise: nil) }
        let connect = MQTTPacket.connect(.init(protocolVersion: .v5, clientIdentifier: "sensor-7"))
        try await clientChannel.writeAndFlush(try connect.encoded(version: .v5))

        let presented = try await recorder.firstCredentials()
        let certificate = try #require(presented.clientCertificate)
        let der = try NIOSSLCertificate(bytes: Array(client.certificatePEM.utf8), format: .pem).toDERBytes()
        #expect(certificate.commonName == "sensor-7")
        #expect(certificate.subject == "CN=sensor-7")
        #expect(certificate.issuer.contains("CN=Fleet CA"))
        #expect(certificate.dnsNames == ["sensor-7.acme.example"])
        #expect(certificate.uris == ["urn:acme:sensor-7"])
        #expect(certificate.fingerprintSHA256 == SHA256.hash(data: der).map { String(format: "%02x", $0) }.joined())
        #expect(certificate.derBytes == der)
        #expect(certificate.notValidAfter > Int64(Date().timeIntervalSince1970) + 86_400)
        #expect(!certificate.serialNumber.isEmpty && !certificate.serialNumber.hasPrefix("00"))
        #expect(presented.clientIdentifier == "sensor-7")
    }

    @Test("an encrypted key loads with its password and is refused without it")
    func encryptedKey() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let server = try CertificateAuthority.create().issue(commonName: "localhost", usage: .server)
        try server.certificatePEM.write(toFile: "\(directory)/s.pem", atomically: true, encoding: .utf8)
        try writeSecret(server.privateKeyPEM, to: "\(directory)/plain.key")
        // openssl encrypts it as an operator would (PKCS#8, AES-256).
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        openssl.arguments = [
            "openssl", "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", "\(directory)/plain.key",
            "-out", "\(directory)/encrypted.key", "-passout", "pass:open sesame",
        ]
        try openssl.run()
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)
        var settings = TLSSettings(
            certificateFile: "\(directory)/s.pem", keyFile: "\(directory)/encrypted.key", keyPassword: "open sesame",
            clientCertificates: .none)
        _ = try TLSServerContext.load(settings)
        settings.keyPassword = "wrong"
        #expect(throws: TLSSetupError.self) { try TLSServerContext.load(settings) }
    }

    @Test("a broken or mismatched file is refused with its name; a good reload replaces the context")
    func loadErrors() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let authority = try CertificateAuthority.create()
        let first = try authority.issue(commonName: "localhost", usage: .server)
        let second = try authority.issue(commonName: "localhost", usage: .server)
        try first.certificatePEM.write(toFile: "\(directory)/s.pem", atomically: true, encoding: .utf8)
        try writeSecret(first.privateKeyPEM, to: "\(directory)/s.key")
        try writeSecret(second.privateKeyPEM, to: "\(directory)/other.key")
        let good = TLSSettings(
            certificateFile: "\(directory)/s.pem", keyFile: "\(directory)/s.key", clientCertificates: .none)
        let holder = TLSContextHolder(try TLSServerContext.load(good))

        func message(_ settings: TLSSettings) -> String {
            do {
                _ = try TLSServerContext.load(settings)
                return "loaded"
            } catch { return error.description }
        }
        var mismatched = good
        mismatched.keyFile = "\(directory)/other.key"
        #expect(message(mismatched).contains("does not match certificate"))
        var missing = good
        missing.certificateFile = "\(directory)/nope.pem"
        #expect(message(missing).hasPrefix("cannot read certificate '\(directory)/nope.pem'"))
        var noCA = good
        noCA.clientCertificates = .required
        #expect(message(noCA).contains("needs a client_ca file"))
        var badCRL = good
        badCRL.crlFile = "\(directory)/s.pem"
        #expect(message(badCRL).contains("no 'X509 CRL' block"))

        try "garbage".write(toFile: "\(directory)/s.pem", atomically: true, encoding: .utf8)
        guard case .failure = holder.reload() else {
            Issue.record("a garbage certificate reloaded")
            return
        }
        try second.certificatePEM.write(toFile: "\(directory)/s.pem", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: "\(directory)/s.key")
        try writeSecret(second.privateKeyPEM, to: "\(directory)/s.key")
        guard case .success = holder.reload() else {
            Issue.record("a good certificate did not reload")
            return
        }
    }
}
