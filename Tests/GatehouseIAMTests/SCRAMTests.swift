import Crypto
import CryptoExtras
import Foundation
import GatehouseAuth
import Testing

@testable import GatehouseIAM

@Suite("SCRAM-SHA-256")
struct SCRAMTests {
    // RFC 7677 §3: user "user", password "pencil".
    let clientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    let serverNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    let serverFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    let clientFinal =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    let serverFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

    func exchange() throws -> SCRAMServerExchange {
        let salt = try #require(Data(base64Encoded: "W22ZaJ0SNY7soEsUEjb6gQ=="))
        let verifier = try SCRAMVerifier(password: "pencil", salt: Array(salt), iterations: 4096)
        let first = try #require(SCRAMServerExchange.ClientFirst(clientFirst))
        return SCRAMServerExchange(clientFirst: first, verifier: verifier, serverNonce: serverNonce)
    }

    @Test("RFC 7677's test vector: the server's messages are the RFC's, byte for byte")
    func testVector() throws {
        let exchange = try exchange()
        #expect(exchange.clientFirst.username == "user")
        #expect(exchange.serverFirst == serverFirst)
        #expect(exchange.finish(clientFinal) == serverFinal)
    }

    @Test("a tampered proof, another nonce, channel binding or a malformed message is refused")
    func refusals() throws {
        let exchange = try exchange()
        var proof = Array(clientFinal.utf8)
        proof[proof.count - 5] ^= 0x01  // one bit of the proof's base64
        #expect(exchange.finish(String(decoding: proof, as: UTF8.self)) == nil)
        #expect(exchange.finish(clientFinal.replacingOccurrences(of: "hNlF", with: "hNlG")) == nil)
        #expect(exchange.finish(clientFinal.replacingOccurrences(of: "c=biws", with: "c=eSws")) == nil)
        #expect(exchange.finish("c=biws,r=x") == nil)
        #expect(SCRAMServerExchange.ClientFirst("p=tls-server-end-point,,n=user,r=abc") == nil)
        #expect(SCRAMServerExchange.ClientFirst("n,,r=abc") == nil)
        #expect(SCRAMServerExchange.ClientFirst("n,,n=us=er,r=abc") == nil)
        #expect(SCRAMServerExchange.ClientFirst("n,,n=a=2Cb=3Dc,r=abc")?.username == "a,b=c")
    }

    @Test("a verifier is written in PostgreSQL's notation and read back; the keys are not the password's")
    func verifierText() throws {
        let verifier = try SCRAMVerifier.make(password: "correct horse battery")
        #expect(verifier.text.hasPrefix("SCRAM-SHA-256$4096:"))
        #expect(SCRAMVerifier(text: verifier.text) == verifier)
        #expect(SCRAMVerifier(text: "SCRAM-SHA-256$4096:abc") == nil)
        #expect(SCRAMVerifier(text: "scrypt$14$8$1$abc") == nil)
        #expect(try SCRAMVerifier.make(password: "correct horse battery").salt != verifier.salt)
    }

    /// The client's side, from RFC 5802 §3 with swift-crypto, apart from the server's code.
    func clientFinal(password: String, clientFirstBare: String, serverFirst: String) throws -> String {
        let fields = Dictionary(
            uniqueKeysWithValues: serverFirst.split(separator: ",").map { ($0.prefix(1), String($0.dropFirst(2))) })
        let salt = try #require(fields["s"].flatMap { Data(base64Encoded: $0) })
        let iterations = try #require(fields["i"].flatMap { Int($0) })
        let salted = try KDF.Insecure.PBKDF2.deriveKey(
            from: Array(password.utf8), salt: salt, using: .sha256, outputByteCount: 32,
            unsafeUncheckedRounds: iterations)
        let clientKey = Array(HMAC<SHA256>.authenticationCode(for: Array("Client Key".utf8), using: salted))
        let storedKey = SymmetricKey(data: Array(SHA256.hash(data: clientKey)))
        let withoutProof = "c=biws,r=\(fields["r"] ?? "")"
        let authMessage = "\(clientFirstBare),\(serverFirst),\(withoutProof)"
        let signature = Array(HMAC<SHA256>.authenticationCode(for: Array(authMessage.utf8), using: storedKey))
        let proof = Data(zip(clientKey, signature).map { $0 ^ $1 }).base64EncodedString()
        return "\(withoutProof),p=\(proof)"
    }

    func run(_ authenticator: SCRAMAuthenticator, user: String, password: String) async throws
        -> EnhancedAuthenticationStep
    {
        let bare = "n=\(user),r=fyko+d2lbbFgONRv9qkxdawL"
        guard
            case .challenge(let data, let next) = await authenticator.start(
                method: "SCRAM-SHA-256", data: Array("n,,\(bare)".utf8), credentials: credentials("dev-1"))
        else {
            Issue.record("every well-formed first message gets a challenge")
            return .rejected
        }
        let final = try clientFinal(
            password: password, clientFirstBare: bare, serverFirst: String(decoding: data, as: UTF8.self))
        return await next.respond(Array(final.utf8))
    }

    @Test("against the store: the right password is accepted; a wrong one and an unknown user get the same refusal")
    func againstTheStore() async throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        try temporary.store.setPassword("correct horse battery", for: "alice", actor: "t")
        let authenticator = SCRAMAuthenticator(store: temporary.store, logger: temporary.logger)
        guard
            case .accepted(let principal, let data) = try await run(
                authenticator, user: "alice", password: "correct horse battery")
        else {
            Issue.record("the right password is accepted")
            return
        }
        #expect(principal.username == "alice" && principal.roles.sorted() == ["operator", "viewer"])
        #expect(String(decoding: data ?? [], as: UTF8.self).hasPrefix("v="))
        guard case .rejected = try await run(authenticator, user: "alice", password: "wrong horse battery") else {
            Issue.record("a wrong password is refused")
            return
        }
        guard case .rejected = try await run(authenticator, user: "mallory", password: "correct horse battery")
        else {
            Issue.record("an unknown user is refused")
            return
        }
        // An unknown name's salt is as stable as a real one's: a prober cannot tell them apart.
        func salt(_ user: String) async -> String? {
            guard
                case .challenge(let data, _) = await authenticator.start(
                    method: "SCRAM-SHA-256", data: Array("n,,n=\(user),r=abc".utf8), credentials: credentials())
            else { return nil }
            return String(decoding: data, as: UTF8.self).split(separator: ",").first { $0.hasPrefix("s=") }
                .map(String.init)
        }
        #expect(await salt("mallory") == (await salt("mallory")))
        #expect(await salt("alice") == (await salt("alice")))
    }
}
