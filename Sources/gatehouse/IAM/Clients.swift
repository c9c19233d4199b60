import ArgumentParser
import Foundation
import GatehouseIAM

/// A JWKS given inline (`{"keys": …}`) or as a file holding one.
private func readJWKS(_ value: String?) throws -> String? {
    guard let value else { return nil }
    if value.trimmingCharacters(in: .whitespaces).hasPrefix("{") { return value }
    guard let text = try? String(contentsOfFile: value, encoding: .utf8) else {
        throw ValidationError("cannot read the JWKS file '\(value)'")
    }
    return text.trimmingCharacters(in: .whitespacesAndNewlines)
}

/// `gatehouse iam client …`: OAuth2 clients of the token endpoint.
struct ClientCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "client",
        abstract: "OAuth2 clients: identities that get access tokens at POST /oauth/token.",
        subcommands: [
            Create.self, Show.self, List.self, RotateSecret.self, AddKey.self, RemoveKey.self, Disable.self,
            Enable.self,
        ])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make an application, service or device identity an OAuth2 client.",
            discussion: "With --secret the client secret is printed (only it, once: it is stored hashed).")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The identity; its name is the client id.") var identity: String
        @Option(
            name: .customLong("grant"),
            help: "A grant it may use: client_credentials, jwt-bearer, refresh_token (repeat for several).")
        var grants: [String] = []
        @Option(name: .customLong("scope"), help: "Limit the scopes it may ask for (default: all its roles).")
        var scopes: [String] = []
        @Flag(help: "Generate a client secret (client_secret_basic / client_secret_post).") var secret = false
        @Option(help: ArgumentHelp("Its public keys: a JWKS, inline or as a file.", valueName: "jwks"))
        var jwks: String?
        @Option(help: ArgumentHelp("An https:// URL serving its JWKS, fetched and cached.", valueName: "url"))
        var jwksURI: String?

        func run() throws {
            let grants = try self.grants.map { name in
                guard let grant = OAuthGrant(rawValue: name) else {
                    throw ValidationError(
                        "--grant '\(name)' is not one of client_credentials, jwt-bearer, refresh_token")
                }
                return grant
            }
            let generated = try store.open().createClient(
                identity, grants: grants, scopes: scopes.isEmpty ? nil : scopes, secret: secret,
                keys: PublicKeySource(jwks: try readJWKS(jwks), jwksURI: jwksURI), actor: store.actor)
            if let generated { print(generated) }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a client's settings (never its secret).")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        func run() throws {
            let client = try store.open().client(named: identity)
            print("client id:  \(client.clientID)")
            print("tenant:     \(client.identity.tenant)")
            print("kind:       \(client.identity.kind.rawValue)")
            print("grants:     \(client.grants.map(\.rawValue).joined(separator: " "))")
            print("scopes:     \(client.scopes?.joined(separator: " ") ?? "all of its roles")")
            print("secret:     \(client.hasSecret ? "yes" : "no")")
            print("jwks:       \(client.keys.jwks ?? "-")")
            print("jwks_uri:   \(client.keys.jwksURI ?? "-")")
            print("state:      \(client.enabled ? "enabled" : "disabled")")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List OAuth2 clients.")
        @OptionGroup var store: StoreOptions
        func run() throws {
            printTable(
                ["CLIENT", "TENANT", "GRANTS", "AUTHENTICATION", "STATE"],
                try store.open().clients().map { client in
                    let methods =
                        (client.hasSecret ? ["secret"] : [])
                        + (client.keys.jwks != nil ? ["jwks"] : []) + (client.keys.jwksURI != nil ? ["jwks_uri"] : [])
                    return [
                        client.clientID, client.identity.tenant, client.grants.map(\.rawValue).joined(separator: ","),
                        methods.joined(separator: ","), client.enabled ? "enabled" : "disabled",
                    ]
                })
        }
    }

    struct RotateSecret: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-secret", abstract: "Replace the client secret and print the new one.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        func run() throws { print(try store.open().rotateClientSecret(identity, actor: store.actor)) }
    }

    struct AddKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add-key", abstract: "Add a public key (one JWK with a 'kid') to the client's stored JWKS.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Argument(help: "The JWK, inline or as a file.") var jwk: String
        func run() throws {
            try store.open().changeClientKey(identity, adding: try readJWKS(jwk), actor: store.actor)
        }
    }

    struct RemoveKey: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove-key", abstract: "Remove a stored public key by its 'kid'.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Argument var kid: String
        func run() throws { try store.open().changeClientKey(identity, removing: kid, actor: store.actor) }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Refuse the client at the token endpoint; its refresh tokens are revoked.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        func run() throws { try store.open().setClientEnabled(identity, false, actor: store.actor) }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Accept a disabled client again.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        func run() throws { try store.open().setClientEnabled(identity, true, actor: store.actor) }
    }
}

/// `gatehouse iam assertion-issuer …`: who may sign JWT-bearer assertions for whom.
struct AssertionIssuerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assertion-issuer",
        abstract: "Trusted issuers of JWT-bearer assertions (RFC 7523) for identities in the store.",
        subcommands: [Add.self, List.self, Remove.self])

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Trust assertions signed by an issuer.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The issuer, as its assertions' 'iss' says.") var issuer: String
        @Option(help: ArgumentHelp("Its public keys: a JWKS, inline or as a file.", valueName: "jwks"))
        var jwks: String?
        @Option(help: ArgumentHelp("An https:// URL serving its JWKS.", valueName: "url")) var jwksURI: String?
        @Option(help: "The subjects it may assert: '*', 'prefix*' or one identity name.") var subjects: String
        @Option(help: "Look subjects up in this tenant only.") var tenant: String?
        func run() throws {
            try store.open().addAssertionIssuer(
                AssertionIssuer(
                    issuer: issuer, keys: PublicKeySource(jwks: try readJWKS(jwks), jwksURI: jwksURI), tenant: tenant,
                    subjects: subjects),
                actor: store.actor)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List assertion issuers.")
        @OptionGroup var store: StoreOptions
        func run() throws {
            printTable(
                ["ISSUER", "SUBJECTS", "TENANT", "KEYS"],
                try store.open().assertionIssuers().map {
                    [$0.issuer, $0.subjects, $0.tenant ?? "any", $0.keys.jwksURI ?? "jwks"]
                })
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stop trusting an assertion issuer.")
        @OptionGroup var store: StoreOptions
        @Argument var issuer: String
        func run() throws { try store.open().removeAssertionIssuer(issuer, actor: store.actor) }
    }
}
