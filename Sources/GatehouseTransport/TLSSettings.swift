import Foundation
public import GatehouseCertificates
import NIOConcurrencyHelpers
public import NIOSSL

/// The TLS side of one mqtts:// or wss:// listener: PEM files, and whether clients must
/// present a certificate signed by the client CA.
public struct TLSSettings: Sendable, Equatable {
    public enum ClientCertificates: String, Sendable, Equatable, CaseIterable {
        /// No certificate is asked for.
        case none
        /// A certificate is asked for and verified if sent; clients without one may connect.
        case optional
        /// A handshake without a certificate the client CA signed fails.
        case required
    }

    /// The server certificate, followed by any intermediates.
    public var certificateFile: String
    public var keyFile: String
    /// For an encrypted key.
    public var keyPassword: String?
    /// The CAs that sign client certificates; needed unless `clientCertificates` is `none`.
    public var clientCAFile: String?
    /// Certificate revocation lists (PEM or DER), checked for every client certificate.
    public var crlFile: String?
    public var clientCertificates: ClientCertificates
    /// More CAs trusted for client certificates: the enrollment CA.
    public var additionalClientCAFiles: [String] = []

    public init(
        certificateFile: String,
        keyFile: String,
        keyPassword: String? = nil,
        clientCAFile: String? = nil,
        crlFile: String? = nil,
        clientCertificates: ClientCertificates = .optional
    ) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.keyPassword = keyPassword
        self.clientCAFile = clientCAFile
        self.crlFile = crlFile
        self.clientCertificates = clientCertificates
    }
}

/// Why a TLS context could not be built, naming the file at fault.
public struct TLSSetupError: Error, CustomStringConvertible, Sendable {
    public let description: String
}

/// What a TLS listener hands each new connection: the BoringSSL context and, when client
/// certificates are asked for, the verifier of their chains (client CAs and CRLs).
public struct TLSServerContext: Sendable {
    public let sslContext: NIOSSLContext
    public let clientVerifier: ClientCertificateVerifier?
    public let settings: TLSSettings
    /// Kept for a reload.
    let liveRevocations: (any CertificateRevocationSource)?

    /// Reads every file the settings name and builds the context: TLS 1.2 at least, ALPN
    /// `mqtt`, client certificates as configured.
    public static func load(
        _ settings: TLSSettings, liveRevocations: (any CertificateRevocationSource)? = nil
    ) throws(TLSSetupError) -> TLSServerContext {
        let (chain, key) = try settings.certificateAndKey()
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["mqtt"]
        switch settings.clientCertificates {
        case .none: configuration.certificateVerification = .none
        case .optional: configuration.certificateVerification = .optionalVerification
        case .required: configuration.certificateVerification = .noHostnameVerification
        }
        var authorities: [NIOSSLCertificate] = []
        if settings.clientCertificates != .none {
            guard let clientCAFile = settings.clientCAFile else {
                throw TLSSetupError(
                    description: "client_certificates '\(settings.clientCertificates.rawValue)' needs a client_ca file")
            }
            do {
                authorities = try NIOSSLCertificate.fromPEMFile(clientCAFile)
            } catch {
                throw TLSSetupError(description: "cannot read client CA '\(clientCAFile)': \(error)")
            }
            guard !authorities.isEmpty else {
                throw TLSSetupError(description: "no certificate in client CA '\(clientCAFile)'")
            }
            for file in settings.additionalClientCAFiles where file != clientCAFile {
                do { authorities += try NIOSSLCertificate.fromPEMFile(file) } catch {
                    throw TLSSetupError(description: "cannot read client CA '\(file)': \(error)")
                }
            }
            // Named in the CertificateRequest; the verifier below decides.
            configuration.trustRoots = .certificates(authorities)
        }
        var revocations: RevocationList?
        if let crlFile = settings.crlFile {
            guard let data = FileManager.default.contents(atPath: crlFile) else {
                throw TLSSetupError(description: "cannot read CRL file '\(crlFile)'")
            }
            do { revocations = try RevocationList(fileContents: Array(data)) } catch {
                throw TLSSetupError(description: "CRL file '\(crlFile)': \(error)")
            }
        }
        var clientVerifier: ClientCertificateVerifier?
        if !authorities.isEmpty {
            do {
                clientVerifier = try ClientCertificateVerifier(
                    authoritiesDER: try authorities.map { try $0.toDERBytes() }, revocations: revocations,
                    liveRevocations: liveRevocations)
            } catch {
                throw TLSSetupError(description: "client CA '\(settings.clientCAFile ?? "")': \(error)")
            }
        }
        do {
            return TLSServerContext(
                sslContext: try NIOSSLContext(configuration: configuration), clientVerifier: clientVerifier,
                settings: settings, liveRevocations: liveRevocations)
        } catch NIOSSLError.failedToLoadPrivateKey {
            // The key itself was read above: BoringSSL refuses it here when it is not the certificate's.
            throw TLSSetupError(
                description:
                    "private key '\(settings.keyFile)' does not match certificate '\(settings.certificateFile)'")
        } catch {
            throw TLSSetupError(description: "cannot build a TLS context: \(error)")
        }
    }
}

extension TLSSettings {
    /// The server's chain and key, each failure naming its file.
    func certificateAndKey() throws(TLSSetupError) -> ([NIOSSLCertificate], NIOSSLPrivateKey) {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificateFile)
        } catch {
            throw TLSSetupError(description: "cannot read certificate '\(certificateFile)': \(error)")
        }
        guard !chain.isEmpty else {
            throw TLSSetupError(description: "no certificate in '\(certificateFile)'")
        }
        let key: NIOSSLPrivateKey
        do {
            // Always through the callback: without one BoringSSL would prompt on the terminal
            // for an encrypted key. No password configured means an empty one, which fails.
            let password = Array((keyPassword ?? "").utf8)
            key = try NIOSSLPrivateKey(file: keyFile, format: .pem) { setter in setter(password) }
        } catch {
            throw TLSSetupError(
                description: "cannot read private key '\(keyFile)' (wrong password or not PEM?): \(error)")
        }
        return (chain, key)
    }

    /// For an https:// listener of the HTTP side: the same files, TLS 1.2 at least, ALPN
    /// `http/1.1`; client certificates signed by `clientCAFile` (the enrollment CA) are asked
    /// for and verified when sent, for the routes that need mutual TLS.
    public func httpsConfiguration(clientCAFile: String?) throws(TLSSetupError) -> TLSConfiguration {
        let (chain, key) = try certificateAndKey()
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.applicationProtocols = ["http/1.1"]
        if let clientCAFile {
            do { configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(clientCAFile)) } catch {
                throw TLSSetupError(description: "cannot read client CA '\(clientCAFile)': \(error)")
            }
            configuration.certificateVerification = .optionalVerification
        }
        return configuration
    }
}

/// The current context of one TLS listener; SIGHUP swaps in a new one, so connections
/// accepted after a reload use the new files and earlier ones keep theirs.
public final class TLSContextHolder: Sendable {
    private let current: NIOLockedValueBox<TLSServerContext>

    public init(_ context: TLSServerContext) { current = NIOLockedValueBox(context) }

    public var context: TLSServerContext { current.withLockedValue { $0 } }

    /// Re-reads the files; on any error the old context stays and the error is returned.
    public func reload() -> Result<TLSServerContext, TLSSetupError> {
        let (settings, revocations) = (context.settings, context.liveRevocations)
        let result = Result { () throws(TLSSetupError) in
            try TLSServerContext.load(settings, liveRevocations: revocations)
        }
        if case .success(let fresh) = result { current.withLockedValue { $0 = fresh } }
        return result
    }
}
