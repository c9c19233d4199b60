import Crypto
import CryptoExtras
public import Foundation
import SwiftASN1
public import X509

/// A certificate signing request that passed the enrollment checks: its signature verifies
/// and its key is one a device may hold (P-256, P-384, Ed25519, RSA of 2048 bits or more).
public struct CheckedCertificateRequest: Sendable {
    public let publicKey: Certificate.PublicKey
    /// SHA-256 of the SubjectPublicKeyInfo (lowercase hex): what an enrollment token may pin,
    /// as `openssl pkey -pubin -outform DER | sha256sum` prints it.
    public let publicKeySHA256: String

    public struct Refusal: Error, CustomStringConvertible, Sendable {
        public let description: String
    }

    /// Reads a PEM `CERTIFICATE REQUEST`, or EST's base64 DER (RFC 7030 §4.2.1), or raw DER.
    public init(_ body: [UInt8]) throws(Refusal) {
        let der = Self.derBytes(body)
        let request: CertificateSigningRequest
        do { request = try CertificateSigningRequest(derEncoded: der) } catch {
            // swift-certificates refuses small RSA keys while parsing: say so rather than "unreadable".
            if let bits = Self.rsaModulusBits(der), bits < 2048 {
                throw Refusal(description: "an RSA key needs at least 2048 bits, not \(bits)")
            }
            throw Refusal(description: "not a PKCS#10 certificate signing request")
        }
        guard request.publicKey.isValidSignature(request.signature, for: request) else {
            throw Refusal(description: "the CSR's signature does not verify with its own key")
        }
        let key = request.publicKey
        if let rsa = _RSA.Signing.PublicKey(key) {
            guard rsa.keySizeInBits >= 2048 else {
                throw Refusal(description: "an RSA key needs at least 2048 bits, not \(rsa.keySizeInBits)")
            }
        } else {
            guard
                P256.Signing.PublicKey(key) != nil || P384.Signing.PublicKey(key) != nil
                    || Curve25519.Signing.PublicKey(key) != nil
            else { throw Refusal(description: "the key must be P-256, P-384, Ed25519 or RSA of 2048 bits or more") }
        }
        publicKey = key
        var info = DER.Serializer()
        do { try info.serialize(key) } catch { throw Refusal(description: "the CSR's public key cannot be encoded") }
        publicKeySHA256 = hexString(SHA256.hash(data: info.serializedBytes))
    }

    private static func derBytes(_ body: [UInt8]) -> [UInt8] {
        guard let text = String(validating: body, as: UTF8.self) else { return body }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if trimmed.hasPrefix("-----BEGIN"), let document = try? PEMDocument(pemString: trimmed) {
            return document.derBytes
        }
        if let der = Data(base64Encoded: trimmed, options: .ignoreUnknownCharacters), !der.isEmpty { return Array(der) }
        return body
    }

    /// The modulus size of an RSA key in a CSR: CertificationRequest → info → SPKI → RSAPublicKey.
    private static func rsaModulusBits(_ der: [UInt8]) -> Int? {
        guard let root = try? DER.parse(der), case .constructed(let request) = root.content,
            let info = request.first(where: { _ in true }), case .constructed(let infoFields) = info.content
        else { return nil }
        let fields = Array(infoFields)
        guard fields.count >= 3, case .constructed(let spki) = fields[2].content else { return nil }
        let parts = Array(spki)
        guard parts.count == 2, let bits = try? ASN1BitString(derEncoded: parts[1]),
            let key = try? DER.parse(Array(bits.bytes)), case .constructed(let numbers) = key.content,
            let modulus = numbers.first(where: { _ in true }), case .primitive(let bytes) = modulus.content
        else { return nil }
        let significant = bytes.drop { $0 == 0 }
        guard let first = significant.first else { return 0 }
        return (significant.count - 1) * 8 + (8 - first.leadingZeroBitCount)
    }
}

extension CertificateAuthority {
    /// A client certificate for an enrolled device: the subject and SAN come from its
    /// identity (never from the CSR), EKU clientAuth, valid from a minute ago for `validity`.
    public func issueEnrolled(
        _ request: CheckedCertificateRequest, commonName: String, uri: String, validity: TimeInterval
    ) throws -> Certificate {
        let now = Date()
        return try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: request.publicKey,
            notValidBefore: now.addingTimeInterval(-60),
            notValidAfter: now.addingTimeInterval(validity),
            issuer: certificate.subject,
            subject: try DistinguishedName { CommonName(commonName) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyAgreement: true))
                try ExtendedKeyUsage([.clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier(uri)])
            },
            issuerPrivateKey: Certificate.PrivateKey(privateKey))
    }

    /// An X.509 v2 CRL (RFC 5280 §5) of `revoked`, signed by this CA, as DER.
    public func revocationList(
        revoked: [(serial: [UInt8], at: Date)], number: Int, thisUpdate: Date, nextUpdate: Date
    ) throws -> [UInt8] {
        var toBeSigned = DER.Serializer()
        try toBeSigned.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(1)  // v2
            try Self.appendSignatureAlgorithm(&coder)
            try coder.serialize(certificate.subject)
            try coder.serialize(try UTCTime(thisUpdate))
            try coder.serialize(try UTCTime(nextUpdate))
            if !revoked.isEmpty {
                try coder.appendConstructedNode(identifier: .sequence) { list in
                    for entry in revoked {
                        try list.appendConstructedNode(identifier: .sequence) { item in
                            try item.serialize(ArraySlice(entry.serial.drop { $0 == 0 }))
                            try item.serialize(try UTCTime(entry.at))
                        }
                    }
                }
            }
            // crlExtensions [0]: the CRL number (RFC 5280 §5.2.3).
            try coder.appendConstructedNode(identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)) {
                extensions in
                try extensions.appendConstructedNode(identifier: .sequence) { list in
                    try list.appendConstructedNode(identifier: .sequence) { item in
                        try item.serialize(try ASN1ObjectIdentifier(elements: [2, 5, 29, 20]))
                        var encodedNumber = DER.Serializer()
                        try encodedNumber.serialize(number)
                        try item.serialize(ASN1OctetString(contentBytes: ArraySlice(encodedNumber.serializedBytes)))
                    }
                }
            }
        }
        return try signed(toBeSigned.serializedBytes)
    }

    private static func appendSignatureAlgorithm(_ coder: inout DER.Serializer) throws {
        try coder.appendConstructedNode(identifier: .sequence) { algorithm in
            // ecdsa-with-SHA256
            try algorithm.serialize(try ASN1ObjectIdentifier(elements: [1, 2, 840, 10045, 4, 3, 2]))
        }
    }

    /// SEQUENCE { toBeSigned, ecdsa-with-SHA256, BIT STRING signature }.
    private func signed(_ toBeSigned: [UInt8]) throws -> [UInt8] {
        let signature = try privateKey.signature(for: toBeSigned).derRepresentation
        var document = DER.Serializer()
        try document.appendConstructedNode(identifier: .sequence) { coder in
            coder.serializeRawBytes(toBeSigned)
            try Self.appendSignatureAlgorithm(&coder)
            try coder.serialize(ASN1BitString(bytes: ArraySlice(signature)))
        }
        return document.serializedBytes
    }
}

/// A degenerate PKCS#7 SignedData holding certificates only (RFC 2315, "certs-only"), the
/// form EST answers `cacerts` and `simpleenroll` in (RFC 7030 §4.1.3, §4.2.3).
public enum CertificatesOnlyPKCS7 {
    public static func encode(_ certificates: [Certificate]) throws -> [UInt8] {
        var document = DER.Serializer()
        try document.appendConstructedNode(identifier: .sequence) { contentInfo in
            try contentInfo.serialize(try ASN1ObjectIdentifier(elements: [1, 2, 840, 113_549, 1, 7, 2]))  // signedData
            try contentInfo.appendConstructedNode(
                identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)
            ) { explicit in
                try explicit.appendConstructedNode(identifier: .sequence) { signedData in
                    try signedData.serialize(1)  // version
                    try signedData.appendConstructedNode(identifier: .set) { _ in }  // digestAlgorithms
                    try signedData.appendConstructedNode(identifier: .sequence) { content in
                        // id-data
                        try content.serialize(try ASN1ObjectIdentifier(elements: [1, 2, 840, 113_549, 1, 7, 1]))
                    }
                    try signedData.appendConstructedNode(
                        identifier: ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific)
                    ) { list in
                        for certificate in certificates { try list.serialize(certificate) }
                    }
                    try signedData.appendConstructedNode(identifier: .set) { _ in }  // signerInfos
                }
            }
        }
        return document.serializedBytes
    }
}

extension UTCTime {
    /// UTCTime for dates in 1950–2049 (RFC 5280 §4.1.2.5.1), in UTC.
    init(_ date: Date) throws {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        let parts = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        try self.init(
            year: parts.year ?? 1970, month: parts.month ?? 1, day: parts.day ?? 1, hours: parts.hour ?? 0,
            minutes: parts.minute ?? 0, seconds: parts.second ?? 0)
    }
}
