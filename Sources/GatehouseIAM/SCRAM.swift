import Crypto
import CryptoExtras
import Foundation

/// What a SCRAM-SHA-256 server keeps of a password (RFC 5802 §3, RFC 7677): the salt, the
/// iteration count and two keys from which the password cannot be recovered without the
/// work of guessing it. Written beside the scrypt hash whenever a password is set.
public struct SCRAMVerifier: Sendable, Equatable {
    public var salt: [UInt8]
    public var iterations: Int
    public var storedKey: [UInt8]
    public var serverKey: [UInt8]

    /// RFC 7677's minimum, as Kafka and most clients use: a device derives the salted password
    /// once per connection, so more rounds cost every device as much as every guesser.
    public static let defaultIterations = 4_096

    public init(salt: [UInt8], iterations: Int, storedKey: [UInt8], serverKey: [UInt8]) {
        self.salt = salt
        self.iterations = iterations
        self.storedKey = storedKey
        self.serverKey = serverKey
    }

    /// Derives the verifier of `password` (SaltedPassword = Hi(password, salt, i)).
    public init(password: String, salt: [UInt8], iterations: Int = defaultIterations) throws {
        let salted = try SCRAM.saltedPassword(password, salt: salt, iterations: iterations)
        self.init(
            salt: salt, iterations: iterations, storedKey: Array(SHA256.hash(data: SCRAM.clientKey(salted))),
            serverKey: SCRAM.serverKey(salted))
    }

    /// A fresh random salt.
    public static func make(password: String, iterations: Int = defaultIterations) throws -> SCRAMVerifier {
        try SCRAMVerifier(
            password: password, salt: SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) },
            iterations: iterations)
    }

    /// PostgreSQL's notation: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    public var text: String {
        "SCRAM-SHA-256$\(iterations):\(Data(salt).base64EncodedString())$"
            + "\(Data(storedKey).base64EncodedString()):\(Data(serverKey).base64EncodedString())"
    }

    public init?(text: String) {
        let parts = text.split(separator: "$")
        guard parts.count == 3, parts[0] == "SCRAM-SHA-256" else { return nil }
        let salting = parts[1].split(separator: ":")
        let keys = parts[2].split(separator: ":")
        guard salting.count == 2, keys.count == 2, let iterations = Int(salting[0]), iterations > 0,
            let salt = Data(base64Encoded: String(salting[1])), let stored = Data(base64Encoded: String(keys[0])),
            let server = Data(base64Encoded: String(keys[1])), stored.count == 32, server.count == 32
        else { return nil }
        self.init(salt: Array(salt), iterations: iterations, storedKey: Array(stored), serverKey: Array(server))
    }
}

/// The primitives of RFC 5802 §3 with SHA-256.
enum SCRAM {
    static func saltedPassword(_ password: String, salt: [UInt8], iterations: Int) throws -> [UInt8] {
        // RFC 5802 asks for SASLprep; passwords are used as their UTF-8 bytes, as most clients do.
        try KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32,
            unsafeUncheckedRounds: iterations
        ).withUnsafeBytes { Array($0) }
    }

    static func hmac(_ key: [UInt8], _ text: String) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: Array(text.utf8), using: SymmetricKey(data: key)))
    }

    static func clientKey(_ salted: [UInt8]) -> [UInt8] { hmac(salted, "Client Key") }
    static func serverKey(_ salted: [UInt8]) -> [UInt8] { hmac(salted, "Server Key") }
}

/// The server's side of one SCRAM-SHA-256 exchange, as plain text in and out (RFC 5802 §5,
/// §7), channel binding `n` only.
struct SCRAMServerExchange: Sendable {
    /// What the client's first message says.
    struct ClientFirst: Sendable {
        var gs2Header: String
        var username: String
        var nonce: String
        var bare: String

        /// `n,,n=user,r=nonce`; `y` (the client could bind but thinks the server cannot) is
        /// accepted too, `p=` (binding required) is not offered.
        init?(_ text: String) {
            let fields = text.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, fields[0] == "n" || fields[0] == "y",
                fields[1].isEmpty || fields[1].hasPrefix("a=")
            else { return nil }
            gs2Header = "\(fields[0]),\(fields[1]),"
            bare = String(fields[2])
            let attributes = SCRAM.attributes(bare)
            guard let name = attributes.first, name.key == "n", let user = SCRAM.saslName(name.value),
                attributes.count >= 2, attributes[1].key == "r", !attributes[1].value.isEmpty
            else { return nil }
            username = user
            nonce = attributes[1].value
        }
    }

    let clientFirst: ClientFirst
    let verifier: SCRAMVerifier
    let serverFirst: String
    let combinedNonce: String

    init(clientFirst: ClientFirst, verifier: SCRAMVerifier, serverNonce: String) {
        self.clientFirst = clientFirst
        self.verifier = verifier
        combinedNonce = clientFirst.nonce + serverNonce
        serverFirst = "r=\(combinedNonce),s=\(Data(verifier.salt).base64EncodedString()),i=\(verifier.iterations)"
    }

    /// Checks `c=…,r=…,p=…`; returns the server's final message (`v=ServerSignature`) when
    /// the proof shows the client knows the password.
    func finish(_ clientFinal: String) -> String? {
        guard let proofStart = clientFinal.range(of: ",p=", options: .backwards) else { return nil }
        let withoutProof = String(clientFinal[..<proofStart.lowerBound])
        let attributes = SCRAM.attributes(withoutProof)
        guard attributes.count >= 2, attributes[0].key == "c", attributes[1].key == "r",
            attributes[0].value == Data(clientFirst.gs2Header.utf8).base64EncodedString(),
            attributes[1].value == combinedNonce,
            let proof = Data(base64Encoded: String(clientFinal[proofStart.upperBound...])), proof.count == 32
        else { return nil }
        let authMessage = clientFirst.bare + "," + serverFirst + "," + withoutProof
        let signature = SCRAM.hmac(verifier.storedKey, authMessage)
        let clientKey = zip(proof, signature).map { $0 ^ $1 }
        guard SCRAM.constantTimeEqual(Array(SHA256.hash(data: clientKey)), verifier.storedKey) else { return nil }
        return "v=" + Data(SCRAM.hmac(verifier.serverKey, authMessage)).base64EncodedString()
    }
}

extension SCRAM {
    /// `k=v,k=v` in order.
    static func attributes(_ text: String) -> [(key: String, value: String)] {
        text.split(separator: ",", omittingEmptySubsequences: false).compactMap { field in
            guard field.count >= 2, field.dropFirst().first == "=" else { return nil }
            return (String(field.prefix(1)), String(field.dropFirst(2)))
        }
    }

    /// A saslname: `=2C` is a comma and `=3D` an equals sign; any other `=` is malformed.
    static func saslName(_ text: String) -> String? {
        var name = ""
        var rest = Substring(text)
        while let equals = rest.firstIndex(of: "=") {
            name += rest[..<equals]
            let code = rest[equals...].prefix(3)
            switch code {
            case "=2C": name += ","
            case "=3D": name += "="
            default: return nil
            }
            rest = rest[equals...].dropFirst(3)
        }
        name += rest
        return name.isEmpty ? nil : name
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return zip(a, b).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// 18 random bytes as base64: printable, no comma.
    static func nonce() -> String {
        SymmetricKey(size: .init(bitCount: 144)).withUnsafeBytes { Data($0).base64EncodedString() }
    }
}
