import ArgumentParser
import Foundation
import GatehouseIAM

/// `gatehouse iam application …`: third-party applications and the tenants subscribed to them.
struct ApplicationCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "application",
        abstract: "Applications that reach subscribed tenants through generated service users.",
        discussion: """
            An application holds only bootstrap credentials (printed once by 'create' and \
            'rotate-bootstrap'), which fetch its service users' credentials from \
            GET /application/currentApplication/subscriptions. Subscribing a tenant creates a \
            service user there with exactly the required roles; unsubscribing deletes it and \
            ends its sessions.
            """,
        subcommands: [
            Create.self, List.self, Show.self, Subscribe.self, Unsubscribe.self, Roles.self, Disable.self,
            Enable.self, RotateBootstrap.self,
        ])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register an application; prints its bootstrap user and secret (once).")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        @Option(help: "The provider tenant, where its bootstrap user lives.") var tenant: String
        @Option(name: .customLong("role"), help: "A role every service user gets (repeat for several).")
        var roles: [String] = []
        func run() throws {
            let (application, secret) = try store.open().createApplication(
                name, tenant: tenant, requiredRoles: roles, actor: store.actor)
            print("\(application.bootstrapUser):\(secret)")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List applications.")
        @OptionGroup var store: StoreOptions
        func run() throws {
            printTable(
                ["APPLICATION", "TENANT", "REQUIRED ROLES", "SUBSCRIBED", "STATE"],
                try store.open().applications().map {
                    [
                        $0.name, $0.tenant, $0.requiredRoles.joined(separator: ","),
                        $0.subscriptions.map(\.tenant).joined(separator: ","), $0.enabled ? "enabled" : "disabled",
                    ]
                })
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an application and its service users.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws {
            let application = try store.open().application(named: name)
            print("application:    \(application.name)")
            print("tenant:         \(application.tenant)")
            print("required roles: \(application.requiredRoles.joined(separator: " "))")
            print("bootstrap user: \(application.bootstrapUser)")
            print("state:          \(application.enabled ? "enabled" : "disabled")")
            for subscription in application.subscriptions {
                print("subscribed:     \(subscription.tenant) (service user \(subscription.serviceUser))")
            }
        }
    }

    struct Subscribe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Subscribe a tenant: creates its service user; prints the user's name.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        @Argument var tenant: String
        func run() throws { print(try store.open().subscribe(name, tenant: tenant, actor: store.actor).serviceUser) }
    }

    struct Unsubscribe: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Unsubscribe a tenant: deletes its service user; its sessions end within a second.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        @Argument var tenant: String
        func run() throws { try store.open().unsubscribe(name, tenant: tenant, actor: store.actor) }
    }

    struct Roles: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the required roles, and with them every service user's roles.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        @Option(name: .customLong("role")) var roles: [String] = []
        func run() throws { try store.open().setRequiredRoles(name, roles, actor: store.actor) }
    }

    struct Disable: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable an application, its bootstrap credentials and every service user.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().setApplicationEnabled(name, false, actor: store.actor) }
    }

    struct Enable: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Enable a disabled application again.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws { try store.open().setApplicationEnabled(name, true, actor: store.actor) }
    }

    struct RotateBootstrap: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rotate-bootstrap", abstract: "Replace the bootstrap secret and print the new credentials.")
        @OptionGroup var store: StoreOptions
        @Argument var name: String
        func run() throws {
            let opened = try store.open()
            let secret = try opened.rotateBootstrapSecret(name, actor: store.actor)
            print("\(try opened.application(named: name).bootstrapUser):\(secret)")
        }
    }
}
