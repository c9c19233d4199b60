import ArgumentParser
import Foundation

@main
struct Gatehouse: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gatehouse",
        abstract: "A secure MQTT 3.1.1 and 5.0 broker for IoT fleets.",
        discussion: """
            Gatehouse is built to authenticate every CONNECT against an embedded identity store \
            and to authorize every PUBLISH and SUBSCRIBE with a role-based topic ACL. This build \
            has the broker over TCP, TLS and WebSocket, the identity store and the topic ACL.

            Run 'gatehouse serve' to start the broker with its defaults, and \
            'gatehouse certs dev' for development certificates.
            """,
        version: GatehouseVersion.current,
        subcommands: [Serve.self, IAM.self, ACL.self, Certs.self, Bench.self]
    )

    static func main() async {
        await main(Array(optionsAfterSubcommands(CommandLine.arguments.dropFirst())))
    }

    /// The options every `iam` and `acl` command takes, written before the subcommand as a
    /// first-time user tries (`gatehouse iam --data-dir D identity add …`), moved after it
    /// where the parser looks for them.
    static func optionsAfterSubcommands(_ arguments: ArraySlice<String>) -> [String] {
        guard let group = arguments.first, group == "iam" || group == "acl" else { return Array(arguments) }
        let shared = ["--data-dir", "--database"]
        var kept: [String] = []
        var moved: [String] = []
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            if argument == "--" {
                kept += moved + arguments[index...]
                return kept
            }
            if shared.contains(where: { argument == $0 || argument.hasPrefix($0 + "=") }) {
                moved.append(argument)
                if !argument.contains("="), index + 1 < arguments.endIndex {
                    index += 1
                    moved.append(arguments[index])
                }
            } else {
                kept.append(argument)
            }
            index += 1
        }
        return kept + moved
    }
}

/// The data directory: the flag's, else `$GATEHOUSE_DATA_DIR`, else `./data`.
func dataDirectory(_ flag: String?) -> String {
    flag ?? ProcessInfo.processInfo.environment["GATEHOUSE_DATA_DIR"] ?? "./data"
}

let dataDirectoryHelp = ArgumentHelp(
    "The broker's data directory (default: $GATEHOUSE_DATA_DIR, else ./data).", valueName: "dir")

enum GatehouseVersion {
    static let current = "0.1.0"
}
