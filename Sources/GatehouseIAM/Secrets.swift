import Crypto
import CryptoExtras
import Foundation

/// Password hashing with scrypt (swift-crypto has no argon2). Parameters are stored with each
/// hash, so raising them later affects new passwords while old ones still verify.
public struct PasswordHasher: Sendable {
    /// log2 of scrypt's N. 2^14 with r=8, p=1 is RFC 7914's interactive-login setting: 16 MiB
    /// and tens of milliseconds per attempt, so each guess costs an attacker the same. Fleets
    /// reconnect with tokens or certificates, which need no slow hash.
    public var costExponent: Int
    public var blockSize: Int
    public var parallelism: Int

    public init(costExponent: Int = 14, blockSize: Int = 8, parallelism: Int = 1) {
        self.costExponent = costExponent
        self.blockSize = blockSize
        self.parallelism = parallelism
    }

    /// The derived key and the text that records salt and parameters.
    func hash(_ password: String) throws -> (hash: [UInt8], kdf: String) {
        let salt = SymmetricKey(size: .bits128).withUnsafeBytes { Array($0) }
        let key = try derive(password, salt: salt)
        return (key, "scrypt$\(costExponent)$\(blockSize)$\(parallelism)$\(Data(salt).base64EncodedString())")
    }

    private func derive(_ password: String, salt: [UInt8]) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(
            from: Array(password.utf8), salt: salt, outputByteCount: 32, rounds: 1 << costExponent,
            blockSize: blockSize, parallelism: parallelism)
        return key.withUnsafeBytes { Array($0) }
    }

    /// Constant-time comparison of the derived key with the stored one.
    static func verify(_ password: [UInt8], hash: [UInt8], kdf: String) -> Bool {
        let parts = kdf.split(separator: "$")
        guard parts.count == 5, parts[0] == "scrypt", let exponent = Int(parts[1]), (10...20).contains(exponent),
            let blockSize = Int(parts[2]), let parallelism = Int(parts[3]),
            let salt = Data(base64Encoded: String(parts[4]))
        else { return false }
        guard
            let key = try? KDF.Scrypt.deriveKey(
                from: password, salt: Array(salt), outputByteCount: hash.count, rounds: 1 << exponent,
                blockSize: blockSize, parallelism: parallelism)
        else { return false }
        return key == SymmetricKey(data: hash)
    }
}

/// The prefixes of the secrets Gatehouse hands out, so that each is recognisable in a config
/// file or a log scrubber.
enum SecretPrefix {
    static let apiToken = "gth_"
    /// Hashed with scrypt like a password, not by SHA-256.
    static let clientSecret = "ghs_"
    static let refreshToken = "ghr_"
    static let bootstrapSecret = "ghb_"
    static let enrollmentToken = "ghe_"
}

/// Opaque secrets: a prefix and 256 random bits in base64url. Only SHA-256 of one is stored:
/// a leaked database reveals no usable secret, and verifying needs no slow hash.
enum APIToken {
    static let prefix = SecretPrefix.apiToken

    static func generate(prefix: String = prefix) -> String {
        prefix + base64URL(SymmetricKey(size: .bits256).withUnsafeBytes { Array($0) })
    }

    static func digest(_ token: some Sequence<UInt8>) -> [UInt8] {
        Array(SHA256.hash(data: Array(token)))
    }

    /// The digest as the store's columns hold it.
    static func storedDigest(_ secret: String) -> Data { Data(digest(secret.utf8)) }

    /// Whether a password looks like one of ours: saves a database read for everything else.
    static func looksLikeToken(_ password: [UInt8]) -> Bool {
        password.count == prefix.utf8.count + 43 && password.starts(with: prefix.utf8)
    }
}
