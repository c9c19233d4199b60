import Foundation
import GRDB
import NIOConcurrencyHelpers
import NIOPosix

/// The embedded identity store: one SQLite file (WAL), versioned migrations, an audit row for
/// every change. The CLI and the running broker open the same file; the broker follows the
/// audit sequence to notice what the CLI changed.
public final class IdentityStore: Sendable {
    public let path: String
    let database: DatabasePool
    /// The authenticators' in-memory view; nil after a write here, until the next use.
    let cachedSnapshot = NIOLockedValueBox<IdentitySnapshot?>(nil)
    /// Serials of revoked enrolled certificates, as of the latest snapshot: the TLS listeners
    /// ask it on every handshake, even while the snapshot is being replaced.
    let revokedCertificateSerials = NIOLockedValueBox<Set<String>>([])
    /// The `iss` of the JWTs this process signs, when configured (an https URL, as RFC 8414
    /// wants); `gatehouse` otherwise. Tokens with either are Gatehouse's own.
    private let configuredIssuer = NIOLockedValueBox<String?>(nil)

    /// Sets the issuer identifier the token endpoint signs with and publishes.
    public func setIssuerIdentifier(_ issuer: String?) { configuredIssuer.withLockedValue { $0 = issuer } }

    public var issuerIdentifier: String { configuredIssuer.withLockedValue { $0 } ?? JWTIssuer.issuerName }

    /// Whether a JWT's `iss` names Gatehouse itself.
    func isLocalIssuer(_ issuer: String) -> Bool {
        issuer == JWTIssuer.issuerName || issuer == configuredIssuer.withLockedValue({ $0 })
    }

    /// The signing key the token endpoint last read, and when.
    let currentSigningKey = NIOLockedValueBox<(kid: String, pem: String, read: ContinuousClock.Instant)?>(nil)

    /// The store's file in a data directory.
    public static func defaultPath(dataDirectory: String) -> String {
        (dataDirectory as NSString).appendingPathComponent("iam.sqlite")
    }

    /// Opens (creating if needed) and migrates the database at `path`.
    public init(path: String) throws {
        self.path = path
        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        // The CLI and the broker write to the same file: wait for each other's locks.
        configuration.busyMode = .timeout(5)
        do {
            database = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(database)
        } catch {
            throw IAMError("cannot open the identity store '\(path)': \(error)")
        }
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("1-identities") { db in
            try db.execute(
                sql: """
                    CREATE TABLE tenant (
                        name TEXT PRIMARY KEY NOT NULL,
                        enabled INTEGER NOT NULL DEFAULT 1,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE identity (
                        id TEXT PRIMARY KEY NOT NULL,
                        name TEXT NOT NULL UNIQUE,
                        tenant TEXT NOT NULL REFERENCES tenant(name),
                        kind TEXT NOT NULL CHECK (kind IN ('device', 'user', 'service', 'application')),
                        enabled INTEGER NOT NULL DEFAULT 1,
                        client_id_pattern TEXT,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE identity_role (
                        identity_id TEXT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        role TEXT NOT NULL,
                        PRIMARY KEY (identity_id, role)
                    );
                    CREATE TABLE "group" (
                        id TEXT PRIMARY KEY NOT NULL,
                        tenant TEXT NOT NULL REFERENCES tenant(name),
                        name TEXT NOT NULL,
                        UNIQUE (tenant, name)
                    );
                    CREATE TABLE group_role (
                        group_id TEXT NOT NULL REFERENCES "group"(id) ON DELETE CASCADE,
                        role TEXT NOT NULL,
                        PRIMARY KEY (group_id, role)
                    );
                    CREATE TABLE group_member (
                        group_id TEXT NOT NULL REFERENCES "group"(id) ON DELETE CASCADE,
                        identity_id TEXT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        PRIMARY KEY (group_id, identity_id)
                    );
                    CREATE TABLE credential (
                        id TEXT PRIMARY KEY NOT NULL,
                        identity_id TEXT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        kind TEXT NOT NULL CHECK (kind IN ('password', 'token', 'certificate')),
                        -- password: the KDF output; token: SHA-256 of the token
                        secret_hash BLOB,
                        -- password: salt and KDF parameters, so they can be raised later
                        kdf TEXT,
                        hint TEXT,
                        -- token: the roles it is limited to, comma-separated (NULL: all)
                        roles TEXT,
                        -- certificate: 'sha256:<hex>', 'cn:<name>' or 'uri:<uri>'
                        binding TEXT,
                        -- certificate bound by name: SHA-256 of the CA that must have issued it
                        ca_fingerprint TEXT,
                        expires_at INTEGER,
                        revoked_at INTEGER,
                        created_at INTEGER NOT NULL,
                        description TEXT
                    );
                    CREATE UNIQUE INDEX credential_token ON credential(secret_hash) WHERE kind = 'token';
                    CREATE INDEX credential_binding ON credential(binding) WHERE kind = 'certificate';
                    CREATE INDEX credential_identity ON credential(identity_id);
                    CREATE TABLE trusted_issuer (
                        issuer TEXT PRIMARY KEY NOT NULL,
                        audience TEXT NOT NULL,
                        jwks TEXT,
                        hmac_secret TEXT,
                        subject_claim TEXT NOT NULL,
                        tenant_claim TEXT NOT NULL,
                        roles_claim TEXT NOT NULL,
                        default_tenant TEXT,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE signing_key (
                        kid TEXT PRIMARY KEY NOT NULL,
                        private_key_pem TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        retired_at INTEGER
                    );
                    CREATE TABLE audit (
                        sequence INTEGER PRIMARY KEY AUTOINCREMENT,
                        at INTEGER NOT NULL,
                        actor TEXT NOT NULL,
                        action TEXT NOT NULL,
                        subject TEXT NOT NULL,
                        -- the identity whose sessions the change may end (NULL: none, '*': any)
                        identity_id TEXT,
                        detail TEXT
                    );
                    """)
        }
        migrator.registerMigration("2-issued-jwts") { db in
            // The JWTs Gatehouse signed, so that one can be listed and revoked before it expires.
            try db.execute(
                sql: """
                    CREATE TABLE issued_jwt (
                        jti TEXT PRIMARY KEY NOT NULL,
                        identity_id TEXT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        kid TEXT NOT NULL,
                        issued_at INTEGER NOT NULL,
                        expires_at INTEGER NOT NULL,
                        revoked_at INTEGER
                    );
                    """)
        }
        migrator.registerMigration("3-oauth") { db in
            // OAuth2 clients (an identity with grants and keys), assertion issuers for the
            // JWT-bearer grant, single-use assertion ids, and refresh tokens in families.
            try db.execute(
                sql: """
                    CREATE TABLE oauth_client (
                        identity_id TEXT PRIMARY KEY NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        -- comma-separated: client_credentials, jwt-bearer, refresh_token
                        grants TEXT NOT NULL,
                        -- comma-separated scopes it may ask for (NULL: every role the identity holds)
                        scopes TEXT,
                        secret_hash BLOB,
                        secret_kdf TEXT,
                        jwks TEXT,
                        jwks_uri TEXT,
                        enabled INTEGER NOT NULL DEFAULT 1,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE assertion_issuer (
                        issuer TEXT PRIMARY KEY NOT NULL,
                        jwks TEXT,
                        jwks_uri TEXT,
                        -- subjects are identities of this tenant (NULL: any tenant)
                        tenant TEXT REFERENCES tenant(name),
                        -- the subjects it may assert: '*', 'prefix*' or one name
                        subjects TEXT NOT NULL,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE seen_assertion (
                        issuer TEXT NOT NULL,
                        jti TEXT NOT NULL,
                        expires_at INTEGER NOT NULL,
                        PRIMARY KEY (issuer, jti)
                    );
                    CREATE TABLE refresh_token (
                        id TEXT PRIMARY KEY NOT NULL,
                        token_hash BLOB NOT NULL UNIQUE,
                        family TEXT NOT NULL,
                        identity_id TEXT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        client_id TEXT NOT NULL,
                        scope TEXT NOT NULL,
                        issued_at INTEGER NOT NULL,
                        expires_at INTEGER NOT NULL,
                        used_at INTEGER,
                        revoked_at INTEGER
                    );
                    CREATE INDEX refresh_token_family ON refresh_token(family);
                    ALTER TABLE issued_jwt ADD COLUMN family TEXT;
                    ALTER TABLE issued_jwt ADD COLUMN client_id TEXT;
                    CREATE INDEX issued_jwt_family ON issued_jwt(family) WHERE family IS NOT NULL;
                    """)
        }
        migrator.registerMigration("4-applications") { db in
            // Applications (seed 000): registered once in a provider tenant, subscribed by
            // tenants; each subscription owns a generated service user in the subscribing tenant.
            try db.execute(
                sql: """
                    CREATE TABLE application (
                        name TEXT PRIMARY KEY NOT NULL,
                        tenant TEXT NOT NULL REFERENCES tenant(name),
                        required_roles TEXT NOT NULL,
                        enabled INTEGER NOT NULL DEFAULT 1,
                        bootstrap_identity_id TEXT NOT NULL REFERENCES identity(id),
                        -- SHA-256 of the bootstrap secret: never a credential any authenticator reads
                        bootstrap_secret_hash BLOB NOT NULL,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE application_subscription (
                        application TEXT NOT NULL REFERENCES application(name) ON DELETE CASCADE,
                        tenant TEXT NOT NULL REFERENCES tenant(name),
                        service_identity_id TEXT NOT NULL REFERENCES identity(id),
                        created_at INTEGER NOT NULL,
                        PRIMARY KEY (application, tenant)
                    );
                    """)
        }
        migrator.registerMigration("5-enrollment") { db in
            // Enrollment (seed 003): one-time tokens, and every certificate the enrollment CA
            // issued. Certificates keep their row after their identity is deleted, so that the
            // CRL still lists them.
            try db.execute(
                sql: """
                    CREATE TABLE enrollment_token (
                        id TEXT PRIMARY KEY NOT NULL,
                        token_hash BLOB NOT NULL UNIQUE,
                        identity_id TEXT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
                        public_key_sha256 TEXT,
                        expires_at INTEGER NOT NULL,
                        used_at INTEGER,
                        created_at INTEGER NOT NULL
                    );
                    CREATE TABLE enrolled_certificate (
                        serial TEXT PRIMARY KEY NOT NULL,
                        identity_id TEXT NOT NULL,
                        identity_name TEXT NOT NULL,
                        credential_id TEXT NOT NULL,
                        fingerprint TEXT NOT NULL,
                        not_after INTEGER NOT NULL,
                        issued_at INTEGER NOT NULL,
                        revoked_at INTEGER,
                        der BLOB NOT NULL
                    );
                    CREATE INDEX enrolled_certificate_fingerprint ON enrolled_certificate(fingerprint);
                    """)
        }
        migrator.registerMigration("6-scram") { db in
            // The SCRAM-SHA-256 verifier beside a password's scrypt hash (PostgreSQL's notation).
            // Passwords set before it have none: SCRAM refuses them until they are set again.
            try db.execute(sql: "ALTER TABLE credential ADD COLUMN scram TEXT")
        }
        return migrator
    }

    /// Runs `body` in one write transaction; `conflict` is the message when it would duplicate
    /// a unique name.
    func write<T>(conflict: String? = nil, keepsSnapshot: Bool = false, _ body: (Database) throws -> T) throws -> T {
        // Writes that change nothing an authenticator reads (an issued token's record, a used
        // assertion id) keep the snapshot: the token endpoint must not reload it per request.
        defer { if !keepsSnapshot { cachedSnapshot.withLockedValue { $0 = nil } } }
        do {
            return try database.write(body)
        } catch let error as IAMError {
            throw error
        } catch let error as OAuthError {
            throw error
        } catch let error as DatabaseError
            where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE
            || error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY
        {
            throw IAMError(conflict ?? "that already exists (\(error.message ?? "unique constraint"))", kind: .conflict)
        } catch {
            throw IAMError("the identity store failed: \(error)")
        }
    }

    func read<T>(_ body: (Database) throws -> T) throws -> T {
        do {
            return try database.read(body)
        } catch let error as IAMError {
            throw error
        } catch {
            throw IAMError("the identity store failed: \(error)")
        }
    }

    /// Threads for database work from async code. SQLite calls block, and GRDB's pool waits on
    /// a semaphore for a free reader: on Swift's cooperative threads (two on a 2-core machine)
    /// a burst of CONNECTs would block them all and deadlock.
    private static let databaseThreads: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 4)
        pool.start()
        return pool
    }()

    /// Runs blocking store work on the store's own threads.
    public func offloaded<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await Self.databaseThreads.runIfActive(body)
    }

    /// A read for the authenticators, on the store's threads.
    func readAsync<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        let database = self.database
        return try await offloaded { try database.read(body) }
    }

    static func audit(
        _ db: Database, actor: String, action: String, subject: String, identityID: String? = nil,
        detail: String? = nil
    ) throws {
        try db.execute(
            sql: "INSERT INTO audit (at, actor, action, subject, identity_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
            arguments: [now(), actor, action, subject, identityID, detail])
    }

    /// The latest audit sequence number: the broker polls it to notice changes.
    public func latestChange() throws -> Int64 {
        try read { db in try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(sequence), 0) FROM audit") ?? 0 }
    }

    /// Identities touched by changes after `sequence` and up to `last` ('*' when a change may
    /// affect anyone).
    public func identitiesChanged(
        after sequence: Int64, through last: Int64 = .max
    ) throws -> (latest: Int64, identityIDs: Set<String>) {
        try read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT sequence, identity_id FROM audit WHERE sequence > ? AND sequence <= ? ORDER BY sequence",
                arguments: [sequence, last])
            var latest = sequence
            var identities = Set<String>()
            for row in rows {
                latest = max(latest, row["sequence"])
                if let identity: String = row["identity_id"] { identities.insert(identity) }
            }
            return (latest, identities)
        }
    }

    public func auditLog(limit: Int = 100) throws -> [AuditEntry] {
        try read { db in
            try Row.fetchAll(
                db,
                sql: "SELECT sequence, at, actor, action, subject, detail FROM audit ORDER BY sequence DESC LIMIT ?",
                arguments: [limit]
            ).reversed().map { row in
                AuditEntry(
                    sequence: row["sequence"], at: row["at"], actor: row["actor"], action: row["action"],
                    subject: row["subject"], detail: row["detail"])
            }
        }
    }
}

func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

/// A random identifier with a readable prefix: `tok_3f9c2a1b7d4e`.
func randomID(_ prefix: String) -> String {
    var generator = SystemRandomNumberGenerator()
    let digits = Array("0123456789abcdef")
    return prefix + "_" + String((0..<12).map { _ in digits[Int(generator.next() % 16)] })
}
