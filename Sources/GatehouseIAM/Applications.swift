import Foundation
import GRDB

/// A third-party application (seed 000): registered once in a provider tenant with the roles
/// it requires; each tenant that subscribes to it gets a generated service user holding
/// exactly those roles. The application itself holds only bootstrap credentials, whose one
/// power is fetching the service users' credentials.
public struct Application: Sendable, Equatable {
    public var name: String
    /// The provider tenant, where the bootstrap user lives.
    public var tenant: String
    public var requiredRoles: [String]
    public var enabled: Bool
    /// The user name of the bootstrap credentials (HTTP Basic).
    public var bootstrapUser: String
    public var subscriptions: [ApplicationSubscription]
    public var createdAt: Int64
}

public struct ApplicationSubscription: Sendable, Equatable {
    public var tenant: String
    /// The generated service user's name, in the subscribing tenant.
    public var serviceUser: String
    public var createdAt: Int64
}

/// A service user's credentials as `GET /application/currentApplication/subscriptions`
/// returns them: the password is a fresh short-lived JWT, an MQTT password.
public struct ServiceUserCredentials: Sendable, Equatable {
    public var tenant: String
    public var name: String
    public var password: String
}

extension IdentityStore {
    static func bootstrapUserName(_ application: String) -> String { "servicebootstrap_\(application)" }
    static func serviceUserName(_ application: String, tenant: String) -> String { "service_\(application)@\(tenant)" }

    /// Registers an application and returns its bootstrap secret (shown once).
    public func createApplication(_ name: String, tenant: String, requiredRoles: [String], actor: String) throws -> (
        Application, secret: String
    ) {
        try Self.checkName(name, "application")
        for role in requiredRoles { try Self.checkName(role, "role") }
        let secret = APIToken.generate(prefix: SecretPrefix.bootstrapSecret)
        try write(conflict: "application '\(name)' already exists") { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM tenant WHERE name = ?", arguments: [tenant]) != nil else {
                throw IAMError("no tenant named '\(tenant)'", kind: .notFound)
            }
            let bootstrapID = randomID("id")
            try db.execute(
                sql: "INSERT INTO identity (id, name, tenant, kind, created_at) VALUES (?, ?, ?, 'application', ?)",
                arguments: [bootstrapID, Self.bootstrapUserName(name), tenant, now()])
            try db.execute(
                sql: """
                    INSERT INTO application (name, tenant, required_roles, bootstrap_identity_id, bootstrap_secret_hash,
                        created_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    name, tenant, Set(requiredRoles).sorted().joined(separator: ","), bootstrapID,
                    APIToken.storedDigest(secret), now(),
                ])
            try Self.audit(
                db, actor: actor, action: "application.create", subject: name,
                detail: "tenant=\(tenant) roles=\(requiredRoles.sorted().joined(separator: ","))")
        }
        return (try application(named: name), secret)
    }

    public func application(named name: String) throws -> Application {
        try read { db in
            guard let application = try Self.application(db, named: name) else {
                throw IAMError("no application named '\(name)'", kind: .notFound)
            }
            return application
        }
    }

    public func applications() throws -> [Application] {
        try read { db in
            try String.fetchAll(db, sql: "SELECT name FROM application ORDER BY name").compactMap {
                try Self.application(db, named: $0)
            }
        }
    }

    static func application(_ db: Database, named name: String) throws -> Application? {
        guard
            let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT application.*, identity.name AS bootstrap_user FROM application
                    JOIN identity ON identity.id = application.bootstrap_identity_id WHERE application.name = ?
                    """,
                arguments: [name])
        else { return nil }
        let subscriptions = try Row.fetchAll(
            db,
            sql: """
                SELECT application_subscription.tenant, application_subscription.created_at, identity.name
                FROM application_subscription JOIN identity ON identity.id = service_identity_id
                WHERE application = ? ORDER BY application_subscription.tenant
                """,
            arguments: [name]
        ).map { ApplicationSubscription(tenant: $0["tenant"], serviceUser: $0["name"], createdAt: $0["created_at"]) }
        let roles: String = row["required_roles"]
        return Application(
            name: name, tenant: row["tenant"], requiredRoles: roles.split(separator: ",").map(String.init),
            enabled: row["enabled"], bootstrapUser: row["bootstrap_user"], subscriptions: subscriptions,
            createdAt: row["created_at"])
    }

    /// A new bootstrap secret; the old one stops working at once.
    public func rotateBootstrapSecret(_ name: String, actor: String) throws -> String {
        let secret = APIToken.generate(prefix: SecretPrefix.bootstrapSecret)
        try write { db in
            try db.execute(
                sql: "UPDATE application SET bootstrap_secret_hash = ? WHERE name = ?",
                arguments: [APIToken.storedDigest(secret), name])
            guard db.changesCount == 1 else { throw IAMError("no application named '\(name)'", kind: .notFound) }
            try Self.audit(db, actor: actor, action: "application.rotate-bootstrap", subject: name)
        }
        return secret
    }

    /// Subscribes `tenant`: creates its service user with exactly the application's roles.
    @discardableResult
    public func subscribe(_ name: String, tenant: String, actor: String) throws -> ApplicationSubscription {
        try write { db in
            guard let application = try Self.application(db, named: name) else {
                throw IAMError("no application named '\(name)'", kind: .notFound)
            }
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM tenant WHERE name = ?", arguments: [tenant]) != nil else {
                throw IAMError("no tenant named '\(tenant)'", kind: .notFound)
            }
            guard !application.subscriptions.contains(where: { $0.tenant == tenant }) else {
                throw IAMError("tenant '\(tenant)' is already subscribed to '\(name)'", kind: .conflict)
            }
            let serviceUser = Self.serviceUserName(name, tenant: tenant)
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM identity WHERE name = ?", arguments: [serviceUser]) == nil
            else { throw IAMError("an identity named '\(serviceUser)' already exists", kind: .conflict) }
            let id = randomID("id")
            try db.execute(
                sql:
                    "INSERT INTO identity (id, name, tenant, kind, enabled, created_at) VALUES (?, ?, ?, 'service', ?, ?)",
                arguments: [id, serviceUser, tenant, application.enabled, now()])
            for role in application.requiredRoles {
                try db.execute(
                    sql: "INSERT INTO identity_role (identity_id, role) VALUES (?, ?)", arguments: [id, role])
            }
            try db.execute(
                sql: """
                    INSERT INTO application_subscription (application, tenant, service_identity_id, created_at)
                    VALUES (?, ?, ?, ?)
                    """,
                arguments: [name, tenant, id, now()])
            try Self.audit(
                db, actor: actor, action: "application.subscribe", subject: name, identityID: id,
                detail: "tenant=\(tenant) service_user=\(serviceUser)")
            return ApplicationSubscription(tenant: tenant, serviceUser: serviceUser, createdAt: now())
        }
    }

    /// Unsubscribes `tenant`: deletes its service user with every credential it had; the
    /// broker ends its sessions on the audit row.
    public func unsubscribe(_ name: String, tenant: String, actor: String) throws {
        try write { db in
            guard
                let id = try String.fetchOne(
                    db,
                    sql:
                        "SELECT service_identity_id FROM application_subscription WHERE application = ? AND tenant = ?",
                    arguments: [name, tenant])
            else { throw IAMError("tenant '\(tenant)' is not subscribed to '\(name)'", kind: .notFound) }
            try db.execute(
                sql: "DELETE FROM application_subscription WHERE application = ? AND tenant = ?",
                arguments: [name, tenant])
            try Self.deleteIdentity(db, id: id)
            try Self.audit(
                db, actor: actor, action: "application.unsubscribe", subject: name, identityID: id,
                detail: "tenant=\(tenant)")
        }
    }

    /// Replaces the required roles, and with them every service user's roles.
    public func setRequiredRoles(_ name: String, _ roles: [String], actor: String) throws {
        for role in roles { try Self.checkName(role, "role") }
        try write { db in
            guard let application = try Self.application(db, named: name) else {
                throw IAMError("no application named '\(name)'", kind: .notFound)
            }
            try db.execute(
                sql: "UPDATE application SET required_roles = ? WHERE name = ?",
                arguments: [Set(roles).sorted().joined(separator: ","), name])
            for id in try Self.serviceIdentityIDs(db, application: name) {
                try db.execute(sql: "DELETE FROM identity_role WHERE identity_id = ?", arguments: [id])
                for role in Set(roles) {
                    try db.execute(
                        sql: "INSERT INTO identity_role (identity_id, role) VALUES (?, ?)", arguments: [id, role])
                }
                try Self.audit(
                    db, actor: actor, action: "application.roles", subject: name, identityID: id,
                    detail:
                        "from=\(application.requiredRoles.joined(separator: ",")) to=\(roles.sorted().joined(separator: ","))"
                )
            }
            if application.subscriptions.isEmpty {
                try Self.audit(db, actor: actor, action: "application.roles", subject: name)
            }
        }
    }

    /// Disabling an application disables its bootstrap user and every service user.
    public func setApplicationEnabled(_ name: String, _ enabled: Bool, actor: String) throws {
        try write { db in
            guard try Self.application(db, named: name) != nil else {
                throw IAMError("no application named '\(name)'", kind: .notFound)
            }
            try db.execute(sql: "UPDATE application SET enabled = ? WHERE name = ?", arguments: [enabled, name])
            for id in try Self.serviceIdentityIDs(db, application: name) {
                try db.execute(sql: "UPDATE identity SET enabled = ? WHERE id = ?", arguments: [enabled, id])
                try Self.audit(
                    db, actor: actor, action: enabled ? "application.enable" : "application.disable", subject: name,
                    identityID: id)
            }
            try Self.audit(
                db, actor: actor, action: enabled ? "application.enable" : "application.disable", subject: name)
        }
    }

    private static func serviceIdentityIDs(_ db: Database, application: String) throws -> [String] {
        try String.fetchAll(
            db, sql: "SELECT service_identity_id FROM application_subscription WHERE application = ?",
            arguments: [application])
    }

    /// The application whose bootstrap credentials these are; nil for anything else.
    public func application(bootstrapUser user: String, secret: String) async throws -> Application? {
        let digest = APIToken.storedDigest(secret)
        return try await offloaded { [self] in
            try read { db in
                guard
                    let name = try String.fetchOne(
                        db,
                        sql: """
                            SELECT application.name FROM application
                            JOIN identity ON identity.id = application.bootstrap_identity_id
                            JOIN tenant ON tenant.name = application.tenant
                            WHERE identity.name = ? AND application.enabled AND tenant.enabled
                                AND application.bootstrap_secret_hash = ?
                            """,
                        arguments: [user, digest])
                else { return nil }
                return try Self.application(db, named: name)
            }
        }
    }

    /// Fresh short-lived credentials of every enabled service user of `application`.
    public func serviceUserCredentials(for application: Application, lifetime: Int64) async throws
        -> [ServiceUserCredentials]
    {
        var result: [ServiceUserCredentials] = []
        for subscription in application.subscriptions {
            let identity = try await offloaded { [self] in
                try read { db in
                    try String.fetchOne(
                        db, sql: "SELECT id FROM identity WHERE name = ?", arguments: [subscription.serviceUser]
                    )
                    .flatMap { try Self.activeIdentity(db, id: $0) }
                }
            }
            guard let identity else { continue }
            let token = try await JWTIssuer(store: self).signAccessToken(
                identity: identity, roles: identity.roles, lifetime: lifetime, clientID: application.name, family: nil)
            try await offloaded { [self] in try write(keepsSnapshot: true) { db in try token.record(db) } }
            result.append(ServiceUserCredentials(tenant: identity.tenant, name: identity.name, password: token.token))
        }
        return result
    }

    /// Deletes an identity with everything it owns (credentials, roles, memberships, tokens);
    /// the sessions it opened end on the audit row.
    public func deleteIdentity(_ name: String, actor: String) throws {
        try write { db in
            let identity = try Self.identity(db, named: name)
            let owned = try Bool.fetchOne(
                db,
                sql: """
                    SELECT 1 FROM application WHERE bootstrap_identity_id = ?
                    UNION SELECT 1 FROM application_subscription WHERE service_identity_id = ?
                    """,
                arguments: [identity.id, identity.id])
            guard owned == nil else {
                throw IAMError(
                    "'\(name)' belongs to an application: unsubscribe its tenant instead", kind: .conflict)
            }
            try Self.deleteIdentity(db, id: identity.id)
            try Self.audit(db, actor: actor, action: "identity.delete", subject: name, identityID: identity.id)
        }
    }

    /// Credentials, roles, memberships, issued JWTs and refresh tokens go with it (cascade).
    static func deleteIdentity(_ db: Database, id: String) throws {
        // Its enrolled certificates stay on the CRL.
        try db.execute(
            sql: "UPDATE enrolled_certificate SET revoked_at = ? WHERE identity_id = ? AND revoked_at IS NULL",
            arguments: [now(), id])
        try db.execute(sql: "DELETE FROM identity WHERE id = ?", arguments: [id])
    }

    /// An identity by its id (the SCIM resource id).
    public func identity(id: String) throws -> Identity {
        try read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM identity WHERE id = ?", arguments: [id]) else {
                throw IAMError("no identity with id '\(id)'", kind: .notFound)
            }
            return try Self.identity(db, row: row)
        }
    }
}
