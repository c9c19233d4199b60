import Crypto
import Foundation
import GRDB
public import GatehouseAuth
public import GatehouseCertificates
import NIOConcurrencyHelpers
import SwiftASN1
public import X509

/// An enrollment token's public side.
public struct EnrollmentToken: Sendable, Equatable {
    public var id: String
    public var identity: String
    public var publicKeySHA256: String?
    public var expiresAt: Int64
    public var usedAt: Int64?
    public var createdAt: Int64
}

/// A certificate the enrollment CA issued.
public struct EnrolledCertificate: Sendable, Equatable {
    /// Lowercase hex without leading zeros, as CRLs and `openssl x509 -serial` show it.
    public var serial: String
    public var identity: String
    public var fingerprint: String
    public var notAfter: Int64
    public var issuedAt: Int64
    public var revokedAt: Int64?
}

/// Why an enrollment, renewal or revocation was refused, with the HTTP status it maps to.
public struct EnrollmentRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var reason: String

    init(_ status: Int, _ reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { reason }
}

extension IdentityStore {
    /// Issues a one-time enrollment token for a device identity, optionally pinned to the
    /// SHA-256 of the public key (SubjectPublicKeyInfo) the CSR must carry. Returned once.
    public func createEnrollmentToken(
        for name: String, lifetime: Int64, publicKeySHA256: String? = nil, actor: String
    ) throws -> (token: EnrollmentToken, secret: String) {
        if let pin = publicKeySHA256 {
            guard pin.count == 64, pin.allSatisfy(\.isHexDigit) else {
                throw IAMError("--public-key-sha256 must be 64 hex digits (sha256 of the DER public key)")
            }
        }
        let secret = APIToken.generate(prefix: SecretPrefix.enrollmentToken)
        let id = randomID("enr")
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql: """
                    INSERT INTO enrollment_token (id, token_hash, identity_id, public_key_sha256, expires_at, created_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    id, APIToken.storedDigest(secret), identity.id, publicKeySHA256?.lowercased(),
                    now() + lifetime, now(),
                ])
            try Self.audit(
                db, actor: actor, action: "enroll-token.create", subject: name, identityID: identity.id,
                detail: "id=\(id) expires=\(now() + lifetime)" + (publicKeySHA256 == nil ? "" : " pinned"))
        }
        guard let token = try enrollmentTokens(identity: name).first(where: { $0.id == id }) else {
            throw IAMError("the new enrollment token vanished")
        }
        return (token, secret)
    }

    public func enrollmentTokens(identity name: String? = nil) throws -> [EnrollmentToken] {
        try read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT enrollment_token.*, identity.name FROM enrollment_token
                    JOIN identity ON identity.id = enrollment_token.identity_id
                    WHERE ? IS NULL OR identity.name = ? ORDER BY enrollment_token.created_at, enrollment_token.id
                    """,
                arguments: [name, name]
            ).map {
                EnrollmentToken(
                    id: $0["id"], identity: $0["name"], publicKeySHA256: $0["public_key_sha256"],
                    expiresAt: $0["expires_at"], usedAt: $0["used_at"], createdAt: $0["created_at"])
            }
        }
    }

    public func enrolledCertificates(identity name: String? = nil) throws -> [EnrolledCertificate] {
        try read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM enrolled_certificate WHERE ? IS NULL OR identity_name = ?
                    ORDER BY issued_at, serial
                    """,
                arguments: [name, name]
            ).map(Self.enrolledCertificate)
        }
    }

    static func enrolledCertificate(_ row: Row) -> EnrolledCertificate {
        EnrolledCertificate(
            serial: row["serial"], identity: row["identity_name"], fingerprint: row["fingerprint"],
            notAfter: row["not_after"], issuedAt: row["issued_at"], revokedAt: row["revoked_at"])
    }

    /// Revokes an enrolled certificate by serial: its binding goes, it joins the CRL, and the
    /// sessions it opened end. Returns the identity id.
    @discardableResult
    public func revokeEnrolledCertificate(serial: String, actor: String) throws -> String {
        // As openssl prints it (upper case, perhaps a 00 sign byte) or as stored.
        var normalized = serial.lowercased()
        while normalized.hasPrefix("00") { normalized.removeFirst(2) }
        return try write { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT * FROM enrolled_certificate WHERE serial = ? AND revoked_at IS NULL",
                    arguments: [normalized])
            else { throw IAMError("no unrevoked enrolled certificate with serial '\(serial)'", kind: .notFound) }
            let moment = now()
            try db.execute(
                sql: "UPDATE enrolled_certificate SET revoked_at = ? WHERE serial = ?",
                arguments: [moment, row["serial"]])
            try db.execute(
                sql: "UPDATE credential SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                arguments: [moment, row["credential_id"]])
            try Self.audit(
                db, actor: actor, action: "certificate.revoke", subject: row["identity_name"],
                identityID: row["identity_id"], detail: "serial=\(row["serial"] as String)")
            return row["identity_id"]
        }
    }

    /// The serials of revoked enrolled certificates, for the CRL and the TLS listeners.
    func revokedEnrolledCertificates() throws -> [(serial: String, revokedAt: Int64)] {
        try read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT serial, revoked_at FROM enrolled_certificate WHERE revoked_at IS NOT NULL ORDER BY serial"
            ).map { ($0["serial"], $0["revoked_at"]) }
        }
    }
}

/// Certificate enrollment from a CSR with a one-time token (seed 003): the enrollment CA signs
/// the CSR's key with a subject taken from the identity, binds the certificate to it, renews
/// over mTLS, revokes, and publishes the CRL. Store work runs on the store's threads.
public final class EnrollmentService: Sendable {
    public let store: IdentityStore
    public let authority: CertificateAuthority
    /// Seconds an issued certificate is valid.
    public let validity: Int64
    private let sessions: (any SessionControl)?

    public init(store: IdentityStore, authority: CertificateAuthority, validity: Int64, sessions: (any SessionControl)?)
    {
        self.store = store
        self.authority = authority
        self.validity = validity
        self.sessions = sessions
    }

    /// The CA chain a device trusts and presents with: the enrollment CA.
    public var chain: [Certificate] { [authority.certificate] }

    /// Exchanges a one-time token and a CSR for a certificate. The token is used up only by a
    /// successful enrollment.
    public func enroll(token: String, request body: [UInt8]) async -> Result<Certificate, EnrollmentRefusal> {
        let digest = APIToken.storedDigest(token)
        let found: (tokenID: String, identity: Identity, pin: String?)?
        do {
            found = try await store.offloaded { [store] in try store.usableEnrollmentToken(digest) }
        } catch { return .failure(.init(503, "the identity store failed")) }
        guard let found else {
            return .failure(.init(401, "the enrollment token is unknown, used, expired, or its identity disabled"))
        }
        let request: CheckedCertificateRequest
        do { request = try CheckedCertificateRequest(body) } catch { return .failure(.init(400, error.description)) }
        if let pin = found.pin, pin != request.publicKeySHA256 {
            return .failure(.init(403, "the CSR's public key is not the one the enrollment token is pinned to"))
        }
        return await issue(request, for: found.identity, consuming: found.tokenID)
    }

    /// Renews a certificate presented over mutual TLS: it must be one this CA enrolled, not
    /// revoked or expired, of an active identity.
    public func renew(presented: ClientCertificate, request body: [UInt8]) async -> Result<
        Certificate, EnrollmentRefusal
    > {
        let identity: Identity?
        do {
            identity = try await store.offloaded { [store] in
                try store.activeEnrolledIdentity(fingerprint: presented.fingerprintSHA256)
            }
        } catch { return .failure(.init(503, "the identity store failed")) }
        guard let identity else {
            return .failure(.init(403, "the presented certificate is not an enrolled, valid certificate"))
        }
        let request: CheckedCertificateRequest
        do { request = try CheckedCertificateRequest(body) } catch { return .failure(.init(400, error.description)) }
        return await issue(request, for: identity, consuming: nil)
    }

    /// Revokes by serial; with `presented`, only that certificate itself (a device revoking its
    /// own). `actor` is who the audit log names.
    public func revoke(serial: String?, presented: ClientCertificate?, actor: String) async -> Result<
        Void, EnrollmentRefusal
    > {
        let target: String
        if let presented {
            guard serial == nil || serial?.lowercased() == presented.serialNumber else {
                return .failure(.init(403, "a device may revoke only the certificate it presents"))
            }
            target = presented.serialNumber
        } else if let serial {
            target = serial
        } else {
            return .failure(.init(400, "'serial' is required"))
        }
        do {
            let identityID = try await store.offloaded { [store] in
                try store.revokeEnrolledCertificate(serial: target, actor: actor)
            }
            await sessions?.endInvalidSessions(identityID: identityID)
            return .success(())
        } catch let error as IAMError {
            return .failure(.init(error.kind == .notFound ? 404 : 400, error.description))
        } catch {
            return .failure(.init(503, "the identity store failed"))
        }
    }

    /// The CRL of every revoked enrolled certificate, DER, valid for a day.
    public func revocationList() async throws -> [UInt8] {
        let revoked = try await store.offloaded { [store] in try store.revokedEnrolledCertificates() }
        let entries = revoked.map { entry in
            (serial: hexBytes(entry.serial), at: Date(timeIntervalSince1970: TimeInterval(entry.revokedAt)))
        }
        let now = Date()
        return try authority.revocationList(
            revoked: entries, number: Int(now.timeIntervalSince1970), thisUpdate: now,
            nextUpdate: now.addingTimeInterval(86_400))
    }

    private func issue(_ request: CheckedCertificateRequest, for identity: Identity, consuming tokenID: String?) async
        -> Result<Certificate, EnrollmentRefusal>
    {
        let certificate: Certificate
        let der: [UInt8]
        do {
            certificate = try authority.issueEnrolled(
                request, commonName: identity.name, uri: "urn:gatehouse:\(identity.tenant):\(identity.name)",
                validity: TimeInterval(validity))
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            der = serializer.serializedBytes
        } catch { return .failure(.init(500, "the CA could not sign: \(error)")) }
        let record = EnrollmentRecord(
            serial: hexString(certificate.serialNumber.bytes.drop { $0 == 0 }),
            fingerprint: hexString(SHA256.hash(data: der)),
            notAfter: Int64(certificate.notValidAfter.timeIntervalSince1970),
            der: der)
        do {
            try await store.offloaded { [store] in
                try store.recordEnrollment(record, identity: identity, tokenID: tokenID)
            }
        } catch let error as IAMError {
            return .failure(.init(401, error.description))
        } catch {
            return .failure(.init(503, "the identity store failed"))
        }
        return .success(certificate)
    }
}

struct EnrollmentRecord: Sendable {
    var serial: String
    var fingerprint: String
    var notAfter: Int64
    var der: [UInt8]
}

extension IdentityStore {
    func usableEnrollmentToken(_ digest: Data) throws -> (tokenID: String, identity: Identity, pin: String?)? {
        try read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT id, identity_id, public_key_sha256 FROM enrollment_token
                        WHERE token_hash = ? AND used_at IS NULL AND expires_at > ?
                        """,
                    arguments: [digest, now()]),
                let identity = try Self.activeIdentity(db, id: row["identity_id"])
            else { return nil }
            return (row["id"], identity, row["public_key_sha256"])
        }
    }

    func activeEnrolledIdentity(fingerprint: String) throws -> Identity? {
        try read { db in
            guard
                let id = try String.fetchOne(
                    db,
                    sql: """
                        SELECT identity_id FROM enrolled_certificate
                        WHERE fingerprint = ? AND revoked_at IS NULL AND not_after > ?
                        """,
                    arguments: [fingerprint.lowercased(), now()])
            else { return nil }
            return try Self.activeIdentity(db, id: id)
        }
    }

    /// Uses the token up (only once, even against a concurrent request), binds the
    /// certificate to the identity by fingerprint and records it, in one transaction.
    func recordEnrollment(_ record: EnrollmentRecord, identity: Identity, tokenID: String?) throws {
        try write { db in
            if let tokenID {
                try db.execute(
                    sql: "UPDATE enrollment_token SET used_at = ? WHERE id = ? AND used_at IS NULL",
                    arguments: [now(), tokenID])
                guard db.changesCount == 1 else { throw IAMError("the enrollment token was used already") }
            }
            let credentialID = randomID("crt")
            try db.execute(
                sql: """
                    INSERT INTO credential (id, identity_id, kind, binding, created_at, expires_at, description)
                    VALUES (?, ?, 'certificate', ?, ?, ?, ?)
                    """,
                arguments: [
                    credentialID, identity.id, "sha256:\(record.fingerprint)", now(), record.notAfter,
                    "enrolled, serial \(record.serial)",
                ])
            try db.execute(
                sql: """
                    INSERT INTO enrolled_certificate (serial, identity_id, identity_name, credential_id, fingerprint,
                        not_after, issued_at, der)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    record.serial, identity.id, identity.name, credentialID, record.fingerprint, record.notAfter, now(),
                    Data(record.der),
                ])
            try Self.audit(
                db, actor: tokenID == nil ? "device:renew" : "device:enroll",
                action: tokenID == nil ? "certificate.renew" : "certificate.enroll", subject: identity.name,
                identityID: identity.id, detail: "serial=\(record.serial) token=\(tokenID ?? "-")")
        }
    }
}

/// Hex text to bytes (a serial number from the store).
func hexBytes(_ text: String) -> [UInt8] {
    let padded = text.count % 2 == 1 ? "0" + text : text
    var bytes: [UInt8] = []
    var index = padded.startIndex
    while index < padded.endIndex {
        let next = padded.index(index, offsetBy: 2)
        bytes.append(UInt8(padded[index..<next], radix: 16) ?? 0)
        index = next
    }
    return bytes
}

/// The IAM's revoked enrolled certificates, as the TLS listeners ask on every handshake:
/// answered from memory, refreshed whenever the identity store's snapshot is.
public final class EnrolledCertificateRevocations: CertificateRevocationSource {
    private let store: IdentityStore
    private let issuer: String

    public init(store: IdentityStore, authority: CertificateAuthority) {
        self.store = store
        self.issuer = authority.certificate.subject.description
    }

    public func isRevoked(_ certificate: ClientCertificate) -> Bool {
        certificate.issuer == issuer
            && store.revokedCertificateSerials.withLockedValue { $0.contains(certificate.serialNumber) }
    }
}
