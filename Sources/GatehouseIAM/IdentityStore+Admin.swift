import GRDB

/// The operations behind `gatehouse iam …`. Each one checks its input, changes the store in
/// one transaction and writes an audit row in the same transaction.
extension IdentityStore {
    /// Names of tenants, identities, groups and roles: safe as whole topic levels in ACL rules.
    static func checkName(_ name: String, _ what: String) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@:")
        guard !name.isEmpty, name.count <= 128, name.allSatisfy(allowed.contains) else {
            throw IAMError("\(what) '\(name)' must be 1-128 letters, digits or - _ . @ :")
        }
    }

    // MARK: Tenants

    public func addTenant(_ name: String, actor: String) throws {
        try Self.checkName(name, "tenant")
        try write(conflict: "tenant '\(name)' already exists") { db in
            try db.execute(sql: "INSERT INTO tenant (name, created_at) VALUES (?, ?)", arguments: [name, now()])
            try Self.audit(db, actor: actor, action: "tenant.add", subject: name)
        }
    }

    public func setTenantEnabled(_ name: String, _ enabled: Bool, actor: String) throws {
        try write { db in
            try db.execute(sql: "UPDATE tenant SET enabled = ? WHERE name = ?", arguments: [enabled, name])
            guard db.changesCount == 1 else { throw IAMError("no tenant named '\(name)'", kind: .notFound) }
            try Self.audit(
                db, actor: actor, action: enabled ? "tenant.enable" : "tenant.disable", subject: name, identityID: "*")
        }
    }

    public func tenants() throws -> [Tenant] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT name, enabled, created_at FROM tenant ORDER BY name").map {
                Tenant(name: $0["name"], enabled: $0["enabled"], createdAt: $0["created_at"])
            }
        }
    }

    // MARK: Identities

    @discardableResult
    public func addIdentity(
        _ name: String, tenant: String, kind: IdentityKind, roles: [String] = [], clientIDPattern: String? = nil,
        actor: String
    ) throws -> Identity {
        try Self.checkName(name, "identity")
        for role in roles { try Self.checkName(role, "role") }
        let id = randomID("id")
        try write(conflict: "identity '\(name)' already exists") { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM tenant WHERE name = ?", arguments: [tenant]) != nil else {
                throw IAMError("no tenant named '\(tenant)'", kind: .notFound)
            }
            try db.execute(
                sql: """
                    INSERT INTO identity (id, name, tenant, kind, client_id_pattern, created_at)
                    VALUES (?, ?, ?, ?, ?, ?)
                    """,
                arguments: [id, name, tenant, kind.rawValue, clientIDPattern, now()])
            for role in Set(roles) {
                try db.execute(
                    sql: "INSERT INTO identity_role (identity_id, role) VALUES (?, ?)", arguments: [id, role])
            }
            try Self.audit(
                db, actor: actor, action: "identity.add", subject: name, identityID: id,
                detail: "tenant=\(tenant) kind=\(kind.rawValue) roles=\(roles.sorted().joined(separator: ","))")
        }
        return try identity(named: name)
    }

    public func identity(named name: String) throws -> Identity {
        try read { db in try Self.identity(db, named: name) }
    }

    static func identity(_ db: Database, named name: String) throws -> Identity {
        guard
            let row = try Row.fetchOne(
                db, sql: "SELECT * FROM identity WHERE name = ?", arguments: [name])
        else { throw IAMError("no identity named '\(name)'", kind: .notFound) }
        return try identity(db, row: row)
    }

    static func identity(_ db: Database, row: Row) throws -> Identity {
        let id: String = row["id"]
        return Identity(
            id: id, name: row["name"], tenant: row["tenant"],
            kind: IdentityKind(rawValue: row["kind"]) ?? .device, enabled: row["enabled"],
            clientIDPattern: row["client_id_pattern"], createdAt: row["created_at"],
            roles: try effectiveRoles(db, identityID: id))
    }

    /// Roles granted directly and through groups.
    static func effectiveRoles(_ db: Database, identityID: String) throws -> [String] {
        let statement = try db.cachedStatement(
            sql: """
                SELECT role FROM identity_role WHERE identity_id = ?
                UNION
                SELECT group_role.role FROM group_role
                JOIN group_member ON group_member.group_id = group_role.group_id
                WHERE group_member.identity_id = ?
                ORDER BY 1
                """)
        return try String.fetchAll(statement, arguments: [identityID, identityID])
    }

    public func identities(tenant: String? = nil) throws -> [Identity] {
        try read { db in
            let rows =
                if let tenant {
                    try Row.fetchAll(
                        db, sql: "SELECT * FROM identity WHERE tenant = ? ORDER BY name", arguments: [tenant])
                } else {
                    try Row.fetchAll(db, sql: "SELECT * FROM identity ORDER BY tenant, name")
                }
            return try rows.map { try Self.identity(db, row: $0) }
        }
    }

    public func setIdentityEnabled(_ name: String, _ enabled: Bool, actor: String) throws {
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(sql: "UPDATE identity SET enabled = ? WHERE id = ?", arguments: [enabled, identity.id])
            try Self.audit(
                db, actor: actor, action: enabled ? "identity.enable" : "identity.disable", subject: name,
                identityID: identity.id)
        }
    }

    public func setClientIDPattern(_ name: String, _ pattern: String?, actor: String) throws {
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql: "UPDATE identity SET client_id_pattern = ? WHERE id = ?", arguments: [pattern, identity.id])
            try Self.audit(
                db, actor: actor, action: "identity.client-ids", subject: name, identityID: identity.id,
                detail: pattern ?? "any")
        }
    }

    public func grantRole(_ role: String, to name: String, actor: String) throws {
        try Self.checkName(role, "role")
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql: "INSERT OR IGNORE INTO identity_role (identity_id, role) VALUES (?, ?)",
                arguments: [identity.id, role])
            try Self.audit(db, actor: actor, action: "role.grant", subject: name, identityID: identity.id, detail: role)
        }
    }

    public func revokeRole(_ role: String, from name: String, actor: String) throws {
        try write { db in
            let identity = try Self.identity(db, named: name)
            try db.execute(
                sql: "DELETE FROM identity_role WHERE identity_id = ? AND role = ?", arguments: [identity.id, role])
            guard db.changesCount == 1 else { throw IAMError("'\(name)' has no role '\(role)' of its own") }
            try Self.audit(
                db, actor: actor, action: "role.revoke", subject: name, identityID: identity.id, detail: role)
        }
    }

    // MARK: Groups

    public func addGroup(_ name: String, tenant: String, roles: [String] = [], actor: String) throws {
        try Self.checkName(name, "group")
        for role in roles { try Self.checkName(role, "role") }
        try write(conflict: "group '\(name)' already exists in tenant '\(tenant)'") { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM tenant WHERE name = ?", arguments: [tenant]) != nil else {
                throw IAMError("no tenant named '\(tenant)'", kind: .notFound)
            }
            let id = randomID("grp")
            try db.execute(
                sql: "INSERT INTO \"group\" (id, tenant, name) VALUES (?, ?, ?)", arguments: [id, tenant, name])
            for role in Set(roles) {
                try db.execute(sql: "INSERT INTO group_role (group_id, role) VALUES (?, ?)", arguments: [id, role])
            }
            try Self.audit(
                db, actor: actor, action: "group.add", subject: "\(tenant)/\(name)",
                detail: "roles=\(roles.sorted().joined(separator: ","))")
        }
    }

    private static func groupID(_ db: Database, _ name: String, tenant: String) throws -> String {
        guard
            let id = try String.fetchOne(
                db, sql: "SELECT id FROM \"group\" WHERE tenant = ? AND name = ?", arguments: [tenant, name])
        else { throw IAMError("no group '\(name)' in tenant '\(tenant)'") }
        return id
    }

    /// Adds or removes a member; the identity must be in the group's tenant.
    public func setMembership(group: String, identity name: String, member: Bool, actor: String) throws {
        try write { db in
            let identity = try Self.identity(db, named: name)
            let group = try Self.groupID(db, group, tenant: identity.tenant)
            if member {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO group_member (group_id, identity_id) VALUES (?, ?)",
                    arguments: [group, identity.id])
            } else {
                try db.execute(
                    sql: "DELETE FROM group_member WHERE group_id = ? AND identity_id = ?",
                    arguments: [group, identity.id])
            }
            try Self.audit(
                db, actor: actor, action: member ? "group.add-member" : "group.remove-member", subject: name,
                identityID: identity.id, detail: group)
        }
    }

    /// Grants or revokes a group's role; every member's sessions are re-checked.
    public func setGroupRole(group: String, tenant: String, role: String, granted: Bool, actor: String) throws {
        try Self.checkName(role, "role")
        try write { db in
            let id = try Self.groupID(db, group, tenant: tenant)
            if granted {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO group_role (group_id, role) VALUES (?, ?)", arguments: [id, role])
            } else {
                try db.execute(sql: "DELETE FROM group_role WHERE group_id = ? AND role = ?", arguments: [id, role])
            }
            try Self.audit(
                db, actor: actor, action: granted ? "group.grant" : "group.revoke", subject: "\(tenant)/\(group)",
                identityID: "*", detail: role)
        }
    }

    public func groups(tenant: String? = nil) throws -> [Group] {
        try read { db in
            let rows = try Row.fetchAll(
                db, sql: "SELECT id, tenant, name FROM \"group\" WHERE ? IS NULL OR tenant = ? ORDER BY tenant, name",
                arguments: [tenant, tenant])
            return try rows.map { row in
                let id: String = row["id"]
                return Group(
                    name: row["name"], tenant: row["tenant"],
                    roles: try String.fetchAll(
                        db, sql: "SELECT role FROM group_role WHERE group_id = ? ORDER BY role", arguments: [id]),
                    members: try String.fetchAll(
                        db,
                        sql: """
                            SELECT identity.name FROM group_member JOIN identity ON identity.id = group_member.identity_id
                            WHERE group_member.group_id = ? ORDER BY identity.name
                            """,
                        arguments: [id]))
            }
        }
    }

    // MARK: Credentials

    /// Revokes a token, password or certificate binding by its id; sessions it opened end.
    public func revokeCredential(_ id: String, actor: String) throws {
        try write { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT identity_id, kind FROM credential WHERE id = ? AND revoked_at IS NULL",
                    arguments: [id])
            else { throw IAMError("no credential '\(id)' that is not already revoked") }
            try db.execute(sql: "UPDATE credential SET revoked_at = ? WHERE id = ?", arguments: [now(), id])
            let kind: String = row["kind"]
            try Self.audit(
                db, actor: actor, action: "\(kind).revoke", subject: id, identityID: row["identity_id"])
        }
    }

    /// Credentials of one identity, or of all; never secrets.
    public func credentials(identity name: String? = nil, kind: CredentialKind? = nil) throws -> [CredentialSummary] {
        try read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT credential.*, identity.name AS identity_name FROM credential
                    JOIN identity ON identity.id = credential.identity_id
                    WHERE (? IS NULL OR identity.name = ?) AND (? IS NULL OR credential.kind = ?)
                    ORDER BY credential.created_at, credential.id
                    """,
                arguments: [name, name, kind?.rawValue, kind?.rawValue])
            return rows.map { row in
                let roles: String? = row["roles"]
                return CredentialSummary(
                    id: row["id"], identity: row["identity_name"],
                    kind: CredentialKind(rawValue: row["kind"]) ?? .token, hint: row["hint"],
                    roles: roles.map { $0.split(separator: ",").map(String.init) }, binding: row["binding"],
                    expiresAt: row["expires_at"], revokedAt: row["revoked_at"], createdAt: row["created_at"],
                    description: row["description"])
            }
        }
    }
}
