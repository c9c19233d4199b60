import Foundation
import GRDB
import GatehouseAuth
import NIOConcurrencyHelpers

/// What the token and JWT authenticators need, read from the store in one go and kept in
/// memory: a CONNECT with a token or JWT then costs a hash or a signature check and a
/// dictionary lookup, with no database read and no thread hop. Replaced whenever the audit
/// sequence moves (a write through this store, or `refreshIfChanged()` seeing the CLI's).
struct IdentitySnapshot: Sendable {
    var sequence: Int64
    /// Active tokens by the SHA-256 of the token; expiry is checked at use.
    var tokens: [Data: CredentialMatch]
    /// Every identity by name, for JWTs that Gatehouse issued.
    var identities: [String: CredentialMatch]
    var issuers: [String: TrustedIssuer]
    /// Active certificate bindings.
    var certificates: [CertificateBindingKey: CredentialMatch]
    /// The `jti` of revoked JWTs that Gatehouse issued and that have not expired yet.
    var revokedTokenIDs: Set<String>
    /// Serials of revoked certificates the enrollment CA issued.
    var revokedCertificateSerials: Set<String>

    static func load(_ db: Database) throws -> IdentitySnapshot {
        let sequence = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(sequence), 0) FROM audit") ?? 0
        var roles: [String: [String]] = [:]
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT identity_id, role FROM identity_role
                UNION
                SELECT group_member.identity_id, group_role.role FROM group_role
                JOIN group_member ON group_member.group_id = group_role.group_id
                ORDER BY 1, 2
                """)
        {
            roles[row["identity_id"], default: []].append(row["role"])
        }
        var identities: [String: CredentialMatch] = [:]
        var byID: [String: CredentialMatch] = [:]
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT identity.*, tenant.enabled AS tenant_enabled FROM identity
                JOIN tenant ON tenant.name = identity.tenant
                """)
        {
            let id: String = row["id"]
            let identity = Identity(
                id: id, name: row["name"], tenant: row["tenant"], kind: IdentityKind(rawValue: row["kind"]) ?? .device,
                enabled: row["enabled"], clientIDPattern: row["client_id_pattern"], createdAt: row["created_at"],
                roles: roles[id] ?? [])
            let match = CredentialMatch(identity: identity, tenantEnabled: row["tenant_enabled"], credentialID: "")
            identities[identity.name] = match
            byID[id] = match
        }
        var tokens: [Data: CredentialMatch] = [:]
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT id, identity_id, secret_hash, expires_at, roles FROM credential
                WHERE kind = 'token' AND revoked_at IS NULL
                """)
        {
            guard var match = byID[row["identity_id"]] else { continue }
            let limited: String? = row["roles"]
            match.credentialID = row["id"]
            match.expiresAt = row["expires_at"]
            match.limitedRoles = limited.map { $0.split(separator: ",").map(String.init) }
            tokens[row["secret_hash"]] = match
        }
        var certificates: [CertificateBindingKey: CredentialMatch] = [:]
        for row in try Row.fetchAll(
            db,
            sql: """
                SELECT id, identity_id, binding, ca_fingerprint FROM credential
                WHERE kind = 'certificate' AND revoked_at IS NULL
                """)
        {
            guard var match = byID[row["identity_id"]] else { continue }
            match.credentialID = row["id"]
            certificates[CertificateBindingKey(binding: row["binding"], issuer: row["ca_fingerprint"])] = match
        }
        var issuers: [String: TrustedIssuer] = [:]
        for issuer in try IdentityStore.trustedIssuers(db) { issuers[issuer.issuer] = issuer }
        let revoked = try String.fetchAll(
            db, sql: "SELECT jti FROM issued_jwt WHERE revoked_at IS NOT NULL AND expires_at > ?", arguments: [now()])
        let revokedCertificates = try String.fetchAll(
            db, sql: "SELECT serial FROM enrolled_certificate WHERE revoked_at IS NOT NULL")
        return IdentitySnapshot(
            sequence: sequence, tokens: tokens, identities: identities, issuers: issuers,
            certificates: certificates, revokedTokenIDs: Set(revoked),
            revokedCertificateSerials: Set(revokedCertificates))
    }
}

extension IdentityStore {
    /// The current snapshot, loaded on the store's threads when there is none.
    func snapshot() async throws -> IdentitySnapshot {
        if let current = cachedSnapshot.withLockedValue({ $0 }) { return current }
        let loaded = try await readAsync { db in try IdentitySnapshot.load(db) }
        cachedSnapshot.withLockedValue { current in
            if (current?.sequence ?? -1) < loaded.sequence { current = loaded }
        }
        revokedCertificateSerials.withLockedValue { $0 = loaded.revokedCertificateSerials }
        return loaded
    }

    /// Reloads the snapshot if another process (the CLI) changed the store. The broker calls it
    /// a few times a second; it costs one small read when nothing changed.
    @discardableResult
    public func refreshIfChanged() async throws -> Bool {
        let known = cachedSnapshot.withLockedValue { $0?.sequence }
        let database = self.database
        let latest = try await offloaded {
            try database.read { db in try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(sequence), 0) FROM audit") ?? 0 }
        }
        guard latest != known else { return false }
        cachedSnapshot.withLockedValue { $0 = nil }
        _ = try await snapshot()
        return true
    }
}

extension IdentityStore {
    /// The changes another process made after `seen`, bounded by the snapshot now in memory so
    /// that every check made next (which may read the snapshot) already sees them. Reading the
    /// audit past the snapshot would mark a change seen while the checks still judged on the
    /// state before it, and that change would never be enforced.
    public func changesToEnforce(after seen: Int64) async throws -> (latest: Int64, identityIDs: Set<String>) {
        _ = try await refreshIfChanged()
        let through = try await snapshot().sequence
        guard through > seen else { return (seen, []) }
        return try await offloaded { [self] in try identitiesChanged(after: seen, through: through) }
    }

    /// Decides on the in-memory snapshot; a refusal is decided again on a fresh snapshot if
    /// the store changed since (a token the CLI created a moment ago, an identity enabled
    /// again), so only refusals ever cost a database read.
    func decideWithFreshState(
        _ decide: (IdentitySnapshot) async -> Result<Principal, IAMError>
    ) async -> Result<Principal, IAMError> {
        let first: Result<Principal, IAMError>
        do { first = await decide(try await snapshot()) } catch {
            return .failure(IAMError("identity store unavailable: \(error)"))
        }
        guard case .failure = first, (try? await refreshIfChanged()) == true, let fresh = try? await snapshot() else {
            return first
        }
        return await decide(fresh)
    }
}
