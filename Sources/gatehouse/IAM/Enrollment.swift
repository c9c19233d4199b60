import ArgumentParser
import Foundation
import GatehouseIAM

/// `gatehouse iam enroll-token …`: one-time tokens with which a device enrolls its CSR.
struct EnrollTokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enroll-token",
        abstract: "One-time tokens for POST /enroll (or EST simpleenroll): a device's CSR becomes its certificate.",
        subcommands: [Create.self, List.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a one-time enrollment token for an identity and print it (only it, once).")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String
        @Option(help: "Lifetime such as 1h, 30m or 7d.") var expires = "1h"
        @Option(help: "Only a CSR whose public key has this SHA-256 (of its DER SubjectPublicKeyInfo) is accepted.")
        var publicKeySHA256: String?
        func run() throws {
            let created = try store.open().createEnrollmentToken(
                for: identity, lifetime: try parseDuration(expires, option: "--expires"),
                publicKeySHA256: publicKeySHA256, actor: store.actor)
            FileHandle.standardError.write(Data("enrollment token \(created.token.id) for \(identity)\n".utf8))
            print(created.secret)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List enrollment tokens (never the tokens).")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String?
        func run() throws {
            printTable(
                ["ID", "IDENTITY", "PINNED", "EXPIRES", "STATE"],
                try store.open().enrollmentTokens(identity: identity).map {
                    let state =
                        $0.usedAt != nil
                        ? "used" : $0.expiresAt <= Int64(Date().timeIntervalSince1970) ? "expired" : "open"
                    return [
                        $0.id, $0.identity, $0.publicKeySHA256 == nil ? "no" : "yes", formatTime($0.expiresAt), state,
                    ]
                })
        }
    }
}

/// `gatehouse iam enrolled …`: the certificates the enrollment CA issued.
struct EnrolledCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enrolled", abstract: "Certificates the enrollment CA issued.",
        subcommands: [List.self, Revoke.self])

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List enrolled certificates.")
        @OptionGroup var store: StoreOptions
        @Argument var identity: String?
        func run() throws {
            printTable(
                ["SERIAL", "IDENTITY", "NOT AFTER", "STATE"],
                try store.open().enrolledCertificates(identity: identity).map {
                    [$0.serial, $0.identity, formatTime($0.notAfter), $0.revokedAt == nil ? "valid" : "revoked"]
                })
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an enrolled certificate: its sessions end, and TLS handshakes with it fail.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The serial in hex, as 'enrolled list' or 'openssl x509 -serial' shows it.") var serial: String
        func run() throws { try store.open().revokeEnrolledCertificate(serial: serial, actor: store.actor) }
    }
}
