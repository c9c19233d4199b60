import Crypto
import Foundation
public import GatehouseAuth
import SwiftASN1
import X509

extension ClientCertificate {
    /// The fields the authenticators use, read from a DER certificate.
    public init(derBytes: [UInt8]) throws {
        try self.init(certificate: Certificate(derEncoded: derBytes), derBytes: derBytes)
    }

    /// The first certificate of a PEM text.
    public init(pemEncoded text: String) throws {
        try self.init(derBytes: PEMDocument(pemString: text).derBytes)
    }

    /// From a certificate already parsed (the verifier has), so it is not parsed twice.
    init(certificate: Certificate, derBytes: [UInt8]) throws {
        var dnsNames: [String] = []
        var uris: [String] = []
        var emailAddresses: [String] = []
        for name in try certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames() {
            switch name {
            case .dnsName(let value): dnsNames.append(value)
            case .uniformResourceIdentifier(let value): uris.append(value)
            case .rfc822Name(let value): emailAddresses.append(value)
            default: continue
            }
        }
        self.init(
            subject: certificate.subject.description,
            commonName: certificate.subject.commonName,
            issuer: certificate.issuer.description,
            serialNumber: hexString(certificate.serialNumber.bytes.drop { $0 == 0 }),
            fingerprintSHA256: hexString(SHA256.hash(data: derBytes)),
            dnsNames: dnsNames,
            uris: uris,
            emailAddresses: emailAddresses,
            notValidBefore: Int64(certificate.notValidBefore.timeIntervalSince1970),
            notValidAfter: Int64(certificate.notValidAfter.timeIntervalSince1970),
            derBytes: derBytes
        )
    }
}

extension DistinguishedName {
    /// The first common name, the usual place a device's name sits.
    var commonName: String? {
        for relativeName in self {
            for attribute in relativeName where attribute.type == .RDNAttributeType.commonName {
                return String(attribute.value)
            }
        }
        return nil
    }
}

/// Lowercase hex, two digits a byte: how fingerprints, serials and digests are written.
public func hexString(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text: [UInt8] = []
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: text, as: UTF8.self)
}

extension ClientCertificate {
    /// SHA-256 (lowercase hex) of the first certificate in a PEM text, as bindings record it.
    public static func fingerprint(pem: String) throws -> String {
        try ClientCertificate(pemEncoded: pem).fingerprintSHA256
    }
}
