import Foundation
import GatehouseCertificates

/// Certificates a test makes for itself: a CA, a server certificate for localhost, client
/// certificates (valid, expired, not yet valid), and a CRL made by `openssl ca`.
final class TestPKI {
    let directory: URL
    let authority: CertificateAuthority

    init(commonName: String = "Test CA \(UUID().uuidString.prefix(8))") throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        authority = try CertificateAuthority.create(commonName: commonName)
        try authority.certificatePEM.write(toFile: caFile, atomically: true, encoding: .utf8)
        try writeSecret(authority.privateKeyPEM, to: file("ca.key"))
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    var caFile: String { file("ca.pem") }

    func file(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Writes `NAME.pem` and `NAME.key`; returns their paths.
    @discardableResult
    func issue(
        _ name: String,
        usage: CertificateAuthority.Usage = .client,
        notValidBefore: Date = Date().addingTimeInterval(-3_600),
        notValidAfter: Date = Date().addingTimeInterval(86_400)
    ) throws -> (certificate: String, key: String) {
        let issued = try authority.issue(
            commonName: usage == .server ? "localhost" : name, usage: usage,
            dnsNames: usage == .server ? ["localhost"] : [], ipAddresses: usage == .server ? ["127.0.0.1"] : [],
            notValidBefore: notValidBefore, notValidAfter: notValidAfter)
        try issued.certificatePEM.write(toFile: file("\(name).pem"), atomically: true, encoding: .utf8)
        try writeSecret(issued.privateKeyPEM, to: file("\(name).key"))
        return (file("\(name).pem"), file("\(name).key"))
    }

    /// Revokes the certificate in `certificateFile` and writes `crl.pem` with `openssl ca`.
    func revoke(_ certificateFile: String) async throws -> String {
        let configuration = """
            [ca]
            default_ca = test
            [test]
            database = \(file("index.txt"))
            crlnumber = \(file("crlnumber"))
            default_md = sha256
            default_crl_days = 1
            """
        try configuration.write(toFile: file("ca.cnf"), atomically: true, encoding: .utf8)
        if !FileManager.default.fileExists(atPath: file("index.txt")) {
            try "".write(toFile: file("index.txt"), atomically: true, encoding: .utf8)
            try "01\n".write(toFile: file("crlnumber"), atomically: true, encoding: .utf8)
        }
        let common = ["-config", file("ca.cnf"), "-keyfile", file("ca.key"), "-cert", caFile]
        let revoked = try await runTool("openssl", ["ca"] + common + ["-revoke", certificateFile])
        guard revoked.status == 0 else { throw TestPKIError(output: revoked.output) }
        let generated = try await runTool("openssl", ["ca"] + common + ["-gencrl", "-out", file("crl.pem")])
        guard generated.status == 0 else { throw TestPKIError(output: generated.output) }
        return file("crl.pem")
    }
}

struct TestPKIError: Error {
    var output: String
}
