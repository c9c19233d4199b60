import ArgumentParser
import GatehouseCertificates

struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Certificates for TLS listeners.",
        subcommands: [Development.self]
    )

    struct Development: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dev",
            abstract: "Make a development CA, a server certificate and a client certificate.",
            discussion: """
                Writes into DIR: ca.pem and ca.key (kept if present, so that certificates it \
                signed stay valid), server.pem and server.key for localhost, 127.0.0.1 and ::1 \
                (kept if present), and client-NAME.pem and client-NAME.key for the identity \
                NAME (common name NAME). Private keys are written 0600. For development and \
                tests only; certs/README.md explains how to use real certificates.
                """
        )

        @Option(help: ArgumentHelp("The directory to write the files into.", valueName: "dir"))
        var out: String

        @Option(help: ArgumentHelp("The identity the client certificate names.", valueName: "name"))
        var client: String = "client"

        func validate() throws {
            let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
            guard !client.isEmpty, client.allSatisfy(allowed.contains), !client.hasPrefix(".") else {
                throw ValidationError("--client must be letters, digits, '-', '_' or '.', not starting with '.'")
            }
        }

        func run() throws {
            let certificates = DevelopmentCertificates(directory: out)
            let written: [String]
            do {
                written = try certificates.create(clientIdentity: client)
            } catch {
                throw ValidationError("cannot write development certificates to '\(out)': \(error)")
            }
            for file in written { print(file) }
        }
    }
}
