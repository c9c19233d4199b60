import Foundation

/// The development PKI in one directory: `ca.pem`/`ca.key`, `server.pem`/`server.key` for
/// localhost, 127.0.0.1 and ::1, and `client-NAME.pem`/`client-NAME.key` per identity.
/// Private keys are written 0600. For development and tests only: real deployments point the
/// TLS settings at their own files.
public struct DevelopmentCertificates: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public var caCertificateFile: String { path("ca.pem") }
    public var caKeyFile: String { path("ca.key") }
    public var serverCertificateFile: String { path("server.pem") }
    public var serverKeyFile: String { path("server.key") }
    public func clientCertificateFile(for identity: String) -> String { path("client-\(identity).pem") }
    public func clientKeyFile(for identity: String) -> String { path("client-\(identity).key") }

    /// Whether the files a TLS listener needs are all present.
    public var serverFilesExist: Bool {
        [caCertificateFile, serverCertificateFile, serverKeyFile].allSatisfy {
            FileManager.default.fileExists(atPath: $0)
        }
    }

    /// Creates what is missing: the CA (kept if present, so existing client certificates stay
    /// valid), the server certificate, and a client certificate for `clientIdentity` (replaced
    /// if present). Returns the files written.
    @discardableResult
    public func create(clientIdentity: String? = nil) throws -> [String] {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var written: [String] = []
        let authority: CertificateAuthority
        if FileManager.default.fileExists(atPath: caCertificateFile) {
            authority = try CertificateAuthority(
                certificatePEM: String(contentsOfFile: caCertificateFile, encoding: .utf8),
                privateKeyPEM: String(contentsOfFile: caKeyFile, encoding: .utf8))
        } else {
            authority = try CertificateAuthority.create()
            try writeSecret(authority.privateKeyPEM, to: caKeyFile)
            try authority.certificatePEM.write(toFile: caCertificateFile, atomically: true, encoding: .utf8)
            written += [caCertificateFile, caKeyFile]
        }
        if !FileManager.default.fileExists(atPath: serverCertificateFile)
            || !FileManager.default.fileExists(atPath: serverKeyFile)
        {
            let server = try authority.issue(
                commonName: "localhost", usage: .server, dnsNames: ["localhost"], ipAddresses: ["127.0.0.1", "::1"])
            try writeSecret(server.privateKeyPEM, to: serverKeyFile)
            try server.certificatePEM.write(toFile: serverCertificateFile, atomically: true, encoding: .utf8)
            written += [serverCertificateFile, serverKeyFile]
        }
        if let clientIdentity {
            let client = try authority.issue(commonName: clientIdentity, usage: .client)
            try writeSecret(client.privateKeyPEM, to: clientKeyFile(for: clientIdentity))
            try client.certificatePEM.write(
                toFile: clientCertificateFile(for: clientIdentity), atomically: true, encoding: .utf8)
            written += [clientCertificateFile(for: clientIdentity), clientKeyFile(for: clientIdentity)]
        }
        return written
    }

    private func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
}

/// Writes a file only its owner can read, never passing through a wider mode.
public func writeSecret(_ text: String, to path: String) throws {
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    defer { close(descriptor) }
    guard fchmod(descriptor, 0o600) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    let bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let count = bytes[offset...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        guard count > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        offset += count
    }
}
