import ArgumentParser
import Foundation
import GatehouseACL
import GatehouseAuth

/// `gatehouse acl …`: check ACL files before the broker reloads them.
struct ACL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "acl",
        abstract: "Lint and try out topic ACL files; make the running broker reload its ACL.",
        subcommands: [Lint.self, Check.self, Reload.self]
    )

    struct Lint: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Report every error of an ACL file and its includes, as FILE:LINE:COLUMN: message.")
        @Argument(help: "The ACL file.") var file: String

        func run() throws {
            do {
                let table = try ACLTable.load(file: file)
                print("\(file): ok, \(table.ruleCount) rules in \(table.files.count) file(s)")
            } catch {
                for problem in error.errors { print(problem.description) }
                throw ExitCode.failure
            }
        }
    }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print accept or reject for one request, and the rule that decided (exit 0 or 1).")
        @Argument(help: "The ACL file.") var file: String
        @Option(name: .customLong("role"), help: "A role of the client (repeat for several).") var roles: [String] = []
        @Option(help: "The client's tenant (%t).") var tenant = "default"
        @Option(help: "The client id (%c).") var client = "client"
        @Option(help: "The user name (%u).") var user = "user"
        @Option(help: "The identity id (%i).") var identity = "identity"
        @Argument(help: "publish, subscribe or read.") var action: String
        @Argument(help: "The topic (for subscribe, the filter).") var topic: String

        func validate() throws {
            guard ["publish", "subscribe", "read"].contains(action) else {
                throw ValidationError("the action must be publish, subscribe or read")
            }
        }

        func run() throws {
            let table: ACLTable
            do { table = try ACLTable.load(file: file) } catch {
                for problem in error.errors { print(problem.description) }
                throw ExitCode(2)
            }
            let principal = Principal(
                identityID: identity, username: user, clientIdentifier: client, tenant: tenant, roles: roles)
            let kind: Action = action == "publish" ? .publish : action == "subscribe" ? .subscribe : .read
            let (decision, rule) = table.decide(principal, kind, topic: topic)
            print(decision == .accept ? "accept" : "reject")
            print("  by \(rule.map(\.description) ?? "default deny (no rule of these roles allows it)")")
            if decision == .reject { throw ExitCode.failure }
        }
    }

    struct Reload: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send SIGHUP to the broker whose pid file is in the data directory (ACL and TLS files).")
        @Option(help: dataDirectoryHelp) var dataDir: String?

        func run() throws {
            let dataDir = dataDirectory(dataDir)
            let file = (dataDir as NSString).appendingPathComponent("gatehouse.pid")
            guard let text = try? String(contentsOfFile: file, encoding: .utf8),
                let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
            else {
                throw ValidationError("no broker pid in '\(file)': is the broker running with --data-dir \(dataDir)?")
            }
            guard kill(pid, SIGHUP) == 0 else {
                throw ValidationError("cannot signal process \(pid): \(String(cString: strerror(errno)))")
            }
            print("sent SIGHUP to \(pid); the broker's log says whether the ACL was reloaded")
        }
    }
}
