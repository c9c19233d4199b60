import Crypto
import Foundation
public import GatehouseAuth
import SwiftASN1
import X509

/// Verifies a TLS client's certificate chain against the listener's client CAs (RFC 5280
/// path validation by swift-certificates) and its CRLs, and says why when it refuses.
public struct ClientCertificateVerifier: Sendable {
    public enum Outcome: Sendable, Equatable {
        case verified(ClientCertificate)
        /// The reason, for the broker's log only.
        case refused(String)
    }

    private let roots: CertificateStore
    private let revocations: RevocationList?
    private let liveRevocations: (any CertificateRevocationSource)?

    /// `authoritiesDER`: the client CA certificates; `liveRevocations`: what the running
    /// broker revoked since (enrolled certificates), asked after the chain verifies.
    public init(
        authoritiesDER: [[UInt8]], revocations: RevocationList?,
        liveRevocations: (any CertificateRevocationSource)? = nil
    ) throws {
        roots = CertificateStore(try authoritiesDER.map { try Certificate(derEncoded: $0) })
        self.revocations = revocations
        self.liveRevocations = liveRevocations
    }

    /// `chainDER`: the certificates the client sent, leaf first.
    public func verify(chainDER: [[UInt8]]) async -> Outcome {
        let now = Date()
        guard let leafDER = chainDER.first, let leaf = try? Certificate(derEncoded: leafDER) else {
            return .refused("client certificate unreadable")
        }
        if leaf.notValidAfter < now { return .refused("client certificate expired") }
        if leaf.notValidBefore > now { return .refused("client certificate not yet valid") }
        let intermediates = CertificateStore(chainDER.dropFirst().compactMap { try? Certificate(derEncoded: $0) })
        var verifier = Verifier(rootCertificates: roots) { RFC5280Policy() }
        switch await verifier.validate(leaf: leaf, intermediates: intermediates) {
        case .couldNotValidate(let failures):
            guard let failure = failures.first else { return .refused("client certificate not signed by a trusted CA") }
            return .refused("client certificate refused: \(failure.policyFailureReason)")
        case .validCertificate(let chain):
            guard var certificate = try? ClientCertificate(certificate: leaf, derBytes: leafDER) else {
                return .refused("client certificate unreadable")
            }
            if let issuer = chain.dropFirst().first {
                var serializer = DER.Serializer()
                if (try? serializer.serialize(issuer)) != nil {
                    certificate.issuerFingerprintSHA256 = hexString(SHA256.hash(data: serializer.serializedBytes))
                }
            }
            // The root is trusted as configured; the leaf and any intermediate may be revoked.
            if let revocations, let revoked = chain.dropLast().first(where: revocations.isRevoked) {
                let serial = revoked.serialNumber.bytes.drop { $0 == 0 }
                return .refused("client certificate revoked (serial \(hexString(serial)), issuer \(revoked.issuer))")
            }
            if let liveRevocations, liveRevocations.isRevoked(certificate) {
                return .refused("client certificate revoked (serial \(certificate.serialNumber))")
            }
            return .verified(certificate)
        }
    }
}

/// Certificates revoked while the broker runs, without a CRL file or a restart: the IAM's
/// revoked enrolled certificates. Asked on every handshake, so it answers from memory.
public protocol CertificateRevocationSource: Sendable {
    func isRevoked(_ certificate: ClientCertificate) -> Bool
}
