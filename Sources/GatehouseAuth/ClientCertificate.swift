/// The client certificate a TLS listener verified, as the authenticators see it: enough to map
/// a certificate to an identity by fingerprint, by subject or by a SAN under a trusted CA.
public struct ClientCertificate: Sendable, Hashable {
    /// The subject as RFC 4514 text, e.g. `CN=sensor-1,O=acme`.
    public var subject: String
    public var commonName: String?
    /// The issuer as RFC 4514 text.
    public var issuer: String
    /// Lowercase hex without separators or leading zero bytes.
    public var serialNumber: String
    /// Lowercase hex of SHA-256 over the DER bytes (what `openssl x509 -fingerprint -sha256` shows).
    public var fingerprintSHA256: String
    public var dnsNames: [String]
    public var uris: [String]
    public var emailAddresses: [String]
    /// Seconds since 1970.
    public var notValidBefore: Int64
    public var notValidAfter: Int64
    public var derBytes: [UInt8]
    /// SHA-256 (lowercase hex) of the CA certificate that signed this one in the verified
    /// chain, so that bindings by name can require a particular CA.
    public var issuerFingerprintSHA256: String?

    public init(
        subject: String,
        commonName: String?,
        issuer: String,
        serialNumber: String,
        fingerprintSHA256: String,
        dnsNames: [String] = [],
        uris: [String] = [],
        emailAddresses: [String] = [],
        notValidBefore: Int64,
        notValidAfter: Int64,
        derBytes: [UInt8],
        issuerFingerprintSHA256: String? = nil
    ) {
        self.subject = subject
        self.commonName = commonName
        self.issuer = issuer
        self.serialNumber = serialNumber
        self.fingerprintSHA256 = fingerprintSHA256
        self.dnsNames = dnsNames
        self.uris = uris
        self.emailAddresses = emailAddresses
        self.notValidBefore = notValidBefore
        self.notValidAfter = notValidAfter
        self.derBytes = derBytes
        self.issuerFingerprintSHA256 = issuerFingerprintSHA256
    }
}
