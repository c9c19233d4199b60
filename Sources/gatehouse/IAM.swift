import ArgumentParser
import Foundation
import GatehouseAuth
import GatehouseCertificates
import GatehouseIAM

/// `gatehouse iam …`: the operator's tools for the identity store the broker uses.
struct IAM: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "iam",
        abstract: "Manage tenants, identities, groups, roles and credentials in the identity store.",
        discussion: """
            Works on DATA_DIR/iam.sqlite (or --database FILE), the same file a running broker \
            uses: changes reach connected sessions within a second. Every change is audited.
            """,
        subcommands: [
            TenantCommand.self, IdentityCommand.self, RoleCommand.self, GroupCommand.self, PasswordCommand.self,
            TokenCommand.self, CertificateCommand.self, IssuerCommand.self, JWTCommand.self, ClientCommand.self,
            AssertionIssuerCommand.self, ApplicationCommand.self, EnrollTokenCommand.self, EnrolledCommand.self,
            AuditCommand.self,
        ]
    )
}

/// Where the store is; shared by every `iam` command.
struct StoreOptions: ParsableArguments {
    @Option(help: dataDirectoryHelp)
    var dataDir: String?

    @Option(help: ArgumentHelp("The identity store file (default DATA_DIR/iam.sqlite).", valueName: "file"))
    var database: String?

    func open() throws -> IdentityStore {
        let directory = dataDirectory(dataDir)
        let path = database ?? IdentityStore.defaultPath(dataDirectory: directory)
        if database == nil {
            try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        return try IdentityStore(path: path)
    }

    /// Who the audit log says made the change.
    var actor: String { "cli:\(ProcessInfo.processInfo.environment["USER"] ?? "uid-\(getuid())")" }
}

/// "30d", "12h", "15m", "90s" (or plain seconds) as seconds.
func parseDuration(_ text: String, option: String) throws -> Int64 {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3_600, "d": 86_400]
    let (number, unit) =
        if let last = text.last, let unit = units[last] { (text.dropLast(), unit) } else { (Substring(text), 1) }
    guard let value = Int64(number), value > 0, value < 100 * 365 * 86_400 / unit else {
        throw ValidationError("\(option) must look like 30d, 12h, 15m or 90s, not '\(text)'")
    }
    return value * unit
}

func formatTime(_ seconds: Int64?) -> String {
    guard let seconds else { return "-" }
    return ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
}

/// Prints rows as aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    for row in [header] + rows {
        print(
            row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
    }
}

// MARK: Tenants

struct TenantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant", abstract: "Tenants: add, list, disable, enable.",
        subcommands: [Add.self, List.self, Disable.self, Enable.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a tenant.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().addTenant(name, actor: store.actor) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tenants.")
        @OptionGroup var store: StoreOptions
        func run() throws {
            printTable(
                ["TENANT", "ENABLED", "CREATED"],
                try store.open().tenants().map { [$0.name, $0.enabled ? "yes" : "no", formatTime($0.createdAt)] })
        }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable a tenant: its identities cannot connect.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().setTenantEnabled(name, false, actor: store.actor) }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a tenant again.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().setTenantEnabled(name, true, actor: store.actor) }
    }
}

// MARK: Identities and roles

struct IdentityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "identity", abstract: "Identities (devices, users, services, applications).",
        subcommands: [Add.self, List.self, Show.self, Delete.self, Disable.self, Enable.self, ClientIDs.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add an identity to a tenant.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The identity's name: its MQTT user name.") var name: String
        @Option(help: "The tenant it belongs to.") var tenant: String
        @Option(help: "device, user, service or application.") var kind: String
        @Option(name: .customLong("role"), help: "A role to grant (repeat for several).") var roles: [String] = []
        @Option(
            name: .customLong("client-ids"),
            help: ArgumentHelp("Client ids it may use: %u is its name, a trailing * any suffix.", valueName: "pattern"))
        var clientIDs: String?
        func validate() throws {
            guard IdentityKind(rawValue: kind) != nil else {
                throw ValidationError("--kind must be device, user, service or application")
            }
        }

        func run() throws {
            try store.open().addIdentity(
                name, tenant: tenant, kind: IdentityKind(rawValue: kind) ?? .device, roles: roles,
                clientIDPattern: clientIDs, actor: store.actor)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List identities.")
        @OptionGroup var store: StoreOptions
        @Option(help: "Only this tenant's.") var tenant: String?
        func run() throws {
            printTable(
                ["IDENTITY", "TENANT", "KIND", "ENABLED", "ROLES", "ID"],
                try store.open().identities(tenant: tenant).map {
                    [
                        $0.name, $0.tenant, $0.kind.rawValue, $0.enabled ? "yes" : "no",
                        $0.roles.joined(separator: ","), $0.id,
                    ]
                })
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one identity and its credentials.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws {
            let opened = try store.open()
            let identity = try opened.identity(named: name)
            print("identity:   \(identity.name)")
            print("id:         \(identity.id)")
            print("tenant:     \(identity.tenant)")
            print("kind:       \(identity.kind.rawValue)")
            print("enabled:    \(identity.enabled ? "yes" : "no")")
            print("roles:      \(identity.roles.joined(separator: ","))")
            print("client ids: \(identity.clientIDPattern ?? "any")")
            for credential in try opened.credentials(identity: name) {
                let state = credential.revokedAt == nil ? "active" : "revoked"
                print(
                    "credential: \(credential.id) \(credential.kind.rawValue) \(state)"
                        + " expires=\(formatTime(credential.expiresAt))")
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete an identity with its credentials, roles and memberships: its sessions end at once.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().deleteIdentity(name, actor: store.actor) }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Disable an identity: its sessions end at once.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().setIdentityEnabled(name, false, actor: store.actor) }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable an identity again.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().setIdentityEnabled(name, true, actor: store.actor) }
    }

    struct ClientIDs: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "client-ids", abstract: "Restrict the client ids an identity may use ('any' lifts it).")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        @Argument(help: "A pattern such as %u or %u-*, or 'any'.") var pattern: String
        func run() throws {
            try store.open().setClientIDPattern(name, pattern == "any" ? nil : pattern, actor: store.actor)
        }
    }
}

struct RoleCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "role", abstract: "Grant and revoke an identity's own roles.",
        subcommands: [Grant.self, Revoke.self])

    struct Grant: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Grant a role to an identity.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Argument var role: String
        func run() throws { try store.open().grantRole(role, to: identity, actor: store.actor) }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a role: sessions that relied on it end within a second.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Argument var role: String
        func run() throws { try store.open().revokeRole(role, from: identity, actor: store.actor) }
    }
}

struct GroupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "group", abstract: "Groups: their members inherit their roles.",
        subcommands: [Add.self, List.self, AddMember.self, RemoveMember.self, Grant.self, Revoke.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a group to a tenant.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        @Option var tenant: String
        @Option(name: .customLong("role"), help: "A role the group grants (repeat for several).") var roles: [String] =
            []
        func run() throws { try store.open().addGroup(name, tenant: tenant, roles: roles, actor: store.actor) }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List groups.")
        @OptionGroup var store: StoreOptions
        @Option var tenant: String?
        func run() throws {
            printTable(
                ["GROUP", "TENANT", "ROLES", "MEMBERS"],
                try store.open().groups(tenant: tenant).map {
                    [$0.name, $0.tenant, $0.roles.joined(separator: ","), $0.members.joined(separator: ",")]
                })
        }
    }

    struct AddMember: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-member", abstract: "Add an identity to a group.")
        @OptionGroup var store: StoreOptions
        @Argument var group: String
        @Argument var identity: String
        func run() throws {
            try store.open().setMembership(group: group, identity: identity, member: true, actor: store.actor)
        }
    }

    struct RemoveMember: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove-member", abstract: "Remove an identity from a group.")
        @OptionGroup var store: StoreOptions
        @Argument var group: String
        @Argument var identity: String
        func run() throws {
            try store.open().setMembership(group: group, identity: identity, member: false, actor: store.actor)
        }
    }

    struct Grant: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Grant a role to a group.")
        @OptionGroup var store: StoreOptions
        @Argument var group: String
        @Argument var role: String
        @Option var tenant: String
        func run() throws {
            try store.open().setGroupRole(group: group, tenant: tenant, role: role, granted: true, actor: store.actor)
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a group's role.")
        @OptionGroup var store: StoreOptions
        @Argument var group: String
        @Argument var role: String
        @Option var tenant: String
        func run() throws {
            try store.open().setGroupRole(group: group, tenant: tenant, role: role, granted: false, actor: store.actor)
        }
    }
}

// MARK: Credentials

struct PasswordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "password", abstract: "Set an identity's password.", subcommands: [Set.self])

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set a password, read from standard input (never from the command line).",
            discussion: "At a terminal it asks without echo; otherwise it reads the first line of standard input.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        func run() throws {
            let password: String?
            if isatty(STDIN_FILENO) == 1 {
                password = getpass("password for \(identity): ").map { String(cString: $0) }
            } else {
                password = readLine(strippingNewline: true)
            }
            guard let password, !password.isEmpty else { throw ValidationError("no password on standard input") }
            try store.open().setPassword(password, for: identity, actor: store.actor)
        }
    }
}

struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Opaque API tokens: the MQTT password of devices and agents.",
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a token and print it (only it, once: it is not stored).")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Option(help: "Lifetime such as 30d, 12h or 15m (default: no expiry).") var expires: String?
        @Option(name: .customLong("role"), help: "Limit the token to these of the identity's roles.")
        var roles: [String] = []
        @Option(help: "A note for the token list.") var description: String?
        func run() throws {
            let expiresAt = try expires.map {
                Int64(Date().timeIntervalSince1970) + (try parseDuration($0, option: "--expires"))
            }
            let created = try store.open().createToken(
                for: identity, expiresAt: expiresAt, roles: roles.isEmpty ? nil : roles, description: description,
                actor: store.actor)
            FileHandle.standardError.write(Data("token \(created.credential.id) for \(identity)\n".utf8))
            print(created.token)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tokens (never the tokens themselves).")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String?
        func run() throws {
            printTable(
                ["ID", "IDENTITY", "STARTS", "ROLES", "EXPIRES", "STATE", "DESCRIPTION"],
                try store.open().credentials(identity: identity, kind: .token).map {
                    [
                        $0.id, $0.identity, ($0.hint ?? "") + "…", $0.roles?.joined(separator: ",") ?? "all",
                        formatTime($0.expiresAt), $0.revokedAt == nil ? "active" : "revoked", $0.description ?? "",
                    ]
                })
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token: sessions it opened end at once.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The token's id (tok_…), as 'token list' shows.") var id: String
        func run() throws { try store.open().revokeCredential(id, actor: store.actor) }
    }
}

struct CertificateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert", abstract: "Bind client certificates to identities.",
        subcommands: [Bind.self, List.self, Unbind.self])

    struct Bind: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Bind a certificate (--pem), or every certificate a CA issues with a name (--cn or --uri with --ca).")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Option(help: ArgumentHelp("This exact certificate, by its SHA-256 fingerprint.", valueName: "file"))
        var pem: String?
        @Option(help: "Certificates whose subject common name is this.") var cn: String?
        @Option(help: "Certificates with this SAN URI.") var uri: String?
        @Option(help: ArgumentHelp("The CA that must have issued them (with --cn or --uri).", valueName: "file"))
        var ca: String?

        func validate() throws {
            guard [pem, cn, uri].compactMap({ $0 }).count == 1 else {
                throw ValidationError("give exactly one of --pem, --cn or --uri")
            }
            guard (ca != nil) == (pem == nil) else {
                throw ValidationError(
                    pem == nil ? "--cn and --uri need --ca" : "--ca goes with --cn or --uri, not --pem")
            }
        }

        func run() throws {
            let binding: IdentityStore.CertificateBinding
            if let pem {
                binding = .fingerprint(try Self.fingerprint(of: pem))
            } else {
                let issuer = try Self.fingerprint(of: ca ?? "")
                binding =
                    if let cn { .commonName(cn, issuerFingerprint: issuer) } else {
                        .uri(uri ?? "", issuerFingerprint: issuer)
                    }
            }
            print(try store.open().bindCertificate(binding, to: identity, actor: store.actor))
        }

        static func fingerprint(of file: String) throws -> String {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read '\(file)'")
            }
            do { return try ClientCertificate.fingerprint(pem: text) } catch {
                throw ValidationError("'\(file)' is not a PEM certificate")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List certificate bindings.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String?
        func run() throws {
            printTable(
                ["ID", "IDENTITY", "BINDING", "STATE"],
                try store.open().credentials(identity: identity, kind: .certificate).map {
                    [$0.id, $0.identity, $0.binding ?? "", $0.revokedAt == nil ? "active" : "revoked"]
                })
        }
    }

    struct Unbind: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Unbind a certificate: its sessions end at once.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The binding's id (crt_…).") var id: String
        func run() throws { try store.open().revokeCredential(id, actor: store.actor) }
    }
}

struct IssuerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "issuer", abstract: "Trusted external JWT issuers.",
        subcommands: [Add.self, List.self, Remove.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Trust JWTs from an issuer.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The issuer, exactly as its tokens' 'iss' claim says.") var issuer: String
        @Option(help: "The audience its tokens must name in 'aud'.") var audience: String
        @Option(help: ArgumentHelp("A JWKS file with its public keys.", valueName: "file")) var jwksFile: String?
        @Option(help: ArgumentHelp("A file holding an HS256 shared secret (explicit opt-in).", valueName: "file"))
        var hs256SecretFile: String?
        @Option var subjectClaim = "sub"
        @Option var tenantClaim = "tenant"
        @Option var rolesClaim = "roles"
        @Option(help: "Tenant for tokens that carry none.") var defaultTenant: String?

        func validate() throws {
            guard (jwksFile == nil) != (hs256SecretFile == nil) else {
                throw ValidationError("give exactly one of --jwks-file or --hs256-secret-file")
            }
        }

        func run() async throws {
            func read(_ file: String?) throws -> String? {
                guard let file else { return nil }
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                    throw ValidationError("cannot read '\(file)'")
                }
                return text.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let trusted = TrustedIssuer(
                issuer: issuer, audience: audience, jwks: try read(jwksFile), hmacSecret: try read(hs256SecretFile),
                subjectClaim: subjectClaim, tenantClaim: tenantClaim, rolesClaim: rolesClaim,
                defaultTenant: defaultTenant)
            try await trusted.validateKeys()
            try store.open().addIssuer(trusted, actor: store.actor)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List trusted issuers.")
        @OptionGroup var store: StoreOptions
        func run() throws {
            printTable(
                ["ISSUER", "AUDIENCE", "KEYS", "CLAIMS (subject tenant roles)"],
                try store.open().issuers().map {
                    [
                        $0.issuer, $0.audience, $0.jwks != nil ? "jwks" : "hs256",
                        "\($0.subjectClaim) \($0.tenantClaim) \($0.rolesClaim)",
                    ]
                })
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop trusting an issuer: its sessions end.")
        @OptionGroup var store: StoreOptions
        @Argument var issuer: String
        func run() throws { try store.open().removeIssuer(issuer, actor: store.actor) }
    }
}

struct JWTCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "jwt", abstract: "JWTs that Gatehouse itself issues (ES256).",
        subcommands: [Issue.self, List.self, Revoke.self, RotateKey.self])

    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Issue a JWT for an identity and print it.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Option(help: "Lifetime such as 1h or 15m.") var ttl: String = "1h"
        @Option(name: .customLong("role"), help: "Limit the token to these of the identity's roles.")
        var roles: [String] = []
        func run() async throws {
            let lifetime = try parseDuration(ttl, option: "--ttl")
            let issuer = JWTIssuer(store: try store.open())
            print(
                try await issuer.issue(
                    for: identity, lifetime: lifetime, roles: roles.isEmpty ? nil : roles, actor: store.actor))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the JWTs issued to an identity, newest first.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        func run() throws {
            printTable(
                ["JTI", "ISSUED", "EXPIRES", "STATE"],
                try JWTIssuer.issued(to: identity, in: store.open()).map {
                    [
                        $0.id, formatTime($0.issuedAt), formatTime($0.expiresAt),
                        $0.revokedAt == nil ? "active" : "revoked",
                    ]
                })
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an issued JWT: it is refused from now on and sessions it opened end at once.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The token's jti (jwt_…), as 'jwt list' shows.") var id: String
        func run() throws { try JWTIssuer.revoke(id, in: store.open(), actor: store.actor) }
    }

    struct RotateKey: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-key",
            abstract: "Make a new signing key; tokens signed with the previous one stay valid.")
        @OptionGroup var store: StoreOptions
        func run() async throws {
            print(try JWTIssuer.rotateKey(in: try store.open(), actor: store.actor))
        }
    }
}

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Show the audit log, oldest first.")
    @OptionGroup var store: StoreOptions
    @Option(help: "How many of the latest entries.") var limit = 100
    func run() throws {
        printTable(
            ["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "DETAIL"],
            try store.open().auditLog(limit: limit).map {
                [String($0.sequence), formatTime($0.at), $0.actor, $0.action, $0.subject, $0.detail ?? ""]
            })
    }
}
