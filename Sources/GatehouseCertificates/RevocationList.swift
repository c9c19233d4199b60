public import GatehouseAuth
import SwiftASN1
import X509

/// The serial numbers that certificate revocation lists (RFC 5280 §5) revoke, per issuer.
/// BoringSSL as swift-nio-ssl configures it does not check CRLs, so the TLS listener asks
/// this table once the handshake has verified the chain. The file is the operator's, trusted
/// like the CA bundle beside it; its signature is not checked again here.
public struct RevocationList: Sendable, Equatable {
    /// Issuer (RFC 4514 text) to revoked serials (lowercase hex, no leading zero bytes).
    private var revokedByIssuer: [String: Set<String>] = [:]

    public struct ParseError: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    public init() {}

    /// Reads one or more CRLs, PEM (`X509 CRL` blocks) or a single DER document.
    public init(fileContents bytes: [UInt8]) throws(ParseError) {
        let documents: [[UInt8]]
        if let text = String(validating: bytes, as: UTF8.self), text.contains("-----BEGIN") {
            do {
                documents = try PEMDocument.parseMultiple(pemString: text)
                    .filter { $0.discriminator == "X509 CRL" }
                    .map(\.derBytes)
            } catch {
                throw ParseError(description: "not a PEM file: \(error)")
            }
            guard !documents.isEmpty else { throw ParseError(description: "no 'X509 CRL' block in the file") }
        } else {
            documents = [bytes]
        }
        for der in documents {
            do { try add(der: der) } catch {
                throw ParseError(description: "not a certificate revocation list: \(error)")
            }
        }
    }

    public var revokedCount: Int { revokedByIssuer.values.reduce(0) { $0 + $1.count } }

    public func isRevoked(_ certificate: ClientCertificate) -> Bool {
        revokedByIssuer[certificate.issuer]?.contains(certificate.serialNumber) ?? false
    }

    func isRevoked(_ certificate: Certificate) -> Bool {
        let serial = hexString(certificate.serialNumber.bytes.drop { $0 == 0 })
        return revokedByIssuer[certificate.issuer.description]?.contains(serial) ?? false
    }

    private mutating func add(der: [UInt8]) throws {
        let root = try DER.parse(der)
        let (issuer, serials) = try DER.sequence(root, identifier: .sequence) { certificateList in
            guard let toBeSigned = certificateList.next() else {
                throw ASN1Error.invalidASN1Object(reason: "empty CertificateList")
            }
            _ = certificateList.next()  // signatureAlgorithm
            _ = certificateList.next()  // signatureValue
            return try Self.parseToBeSigned(toBeSigned)
        }
        revokedByIssuer[issuer.description, default: []].formUnion(serials)
    }

    /// TBSCertList: version?, signature, issuer, thisUpdate, nextUpdate?, revokedCertificates?, [0] extensions?
    private static func parseToBeSigned(_ node: ASN1Node) throws -> (DistinguishedName, [String]) {
        guard case .constructed(let fields) = node.content else {
            throw ASN1Error.invalidASN1Object(reason: "TBSCertList is not a SEQUENCE")
        }
        var remaining = Array(fields)[...]
        if remaining.first?.identifier == .integer { remaining.removeFirst() }  // version
        guard remaining.count >= 3 else { throw ASN1Error.invalidASN1Object(reason: "TBSCertList is too short") }
        remaining.removeFirst()  // signature algorithm
        let issuer = try DistinguishedName(derEncoded: remaining.removeFirst())
        remaining.removeFirst()  // thisUpdate
        if let next = remaining.first, next.identifier == .utcTime || next.identifier == .generalizedTime {
            remaining.removeFirst()  // nextUpdate
        }
        var serials: [String] = []
        if let entries = remaining.first, entries.identifier == .sequence {
            guard case .constructed(let revoked) = entries.content else { return (issuer, serials) }
            for entry in revoked {
                guard case .constructed(let entryFields) = entry.content,
                    let serial = entryFields.first(where: { _ in true }),
                    serial.identifier == .integer, case .primitive(let serialBytes) = serial.content
                else { throw ASN1Error.invalidASN1Object(reason: "malformed revoked certificate entry") }
                serials.append(hexString(serialBytes.drop { $0 == 0 }))
            }
        }
        return (issuer, serials)
    }
}
