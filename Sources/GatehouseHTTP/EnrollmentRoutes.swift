import Foundation
import GatehouseAuth
import GatehouseCertificates
import GatehouseIAM
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// Certificate enrollment (seed 003) and its EST aliases (RFC 7030): a device enrolls with a
/// one-time token and a CSR, renews over mutual TLS with its current certificate, and can
/// revoke it; the CA chain and CRL are public.
struct EnrollmentRoutes: Sendable {
    let enrollment: EnrollmentService
    let settings: HTTPSettings
    let logger: Logger

    static let paths: [(method: String, path: String)] = [
        ("post", "/enroll"),
        ("post", "/renew"),
        ("post", "/revoke"),
        ("get", "/ca/crl"),
        ("get", "/ca/chain"),
        ("get", "/.well-known/est/cacerts"),
        ("post", "/.well-known/est/simpleenroll"),
        ("post", "/.well-known/est/simplereenroll"),
    ]

    func add(to router: Router<GatehouseRequestContext>) {
        router.post("/enroll") { request, _ in
            await enroll(request, token: OAuthForm.bearer(request.headers[.authorization]), est: false)
        }
        router.post("/.well-known/est/simpleenroll") { request, _ in
            // As Cumulocity's CA does: the one-time token is the HTTP Basic password.
            let basic = request.headers[.authorization].flatMap(OAuthForm.basic)
            return await enroll(request, token: basic?.1, est: true)
        }
        router.post("/renew") { request, context in await renew(request, context, est: false) }
        router.post("/.well-known/est/simplereenroll") { request, context in await renew(request, context, est: true) }
        router.post("/revoke") { request, context in await revoke(request, context) }
        router.get("/ca/crl") { _, _ in
            guard let crl = try? await enrollment.revocationList() else {
                return Problem(503, "the CRL could not be made").response
            }
            return JSONResponse.bytes(crl, contentType: "application/pkix-crl")
        }
        router.get("/ca/chain") { _, _ in
            JSONResponse.bytes(Array(Self.pem(enrollment.chain).utf8), contentType: "application/pem-certificate-chain")
        }
        router.get("/.well-known/est/cacerts") { _, _ in Self.pkcs7(enrollment.chain) }
    }

    private func enroll(_ request: Request, token: String?, est: Bool) async -> Response {
        guard let token, !token.isEmpty else {
            var response = Problem(401, "an enrollment token is required").response
            response.headers[.wwwAuthenticate] = est ? "Basic realm=\"gatehouse-est\"" : "Bearer realm=\"gatehouse\""
            return response
        }
        guard let body = await body(request) else { return Problem(413, "the CSR is too large").response }
        switch await enrollment.enroll(token: token, request: body) {
        case .failure(let refusal):
            logger.notice("enrollment refused", metadata: ["reason": "\(refusal.reason)"])
            return Problem(refusal.status, refusal.reason).response
        case .success(let certificate):
            logger.notice("certificate enrolled", metadata: ["subject": "\(certificate.subject)"])
            return issued(certificate, est: est)
        }
    }

    private func renew(_ request: Request, _ context: GatehouseRequestContext, est: Bool) async -> Response {
        guard let presented = await context.peerCertificate() else {
            return Problem(401, "renewal needs the current certificate over mutual TLS").response
        }
        guard let body = await body(request) else { return Problem(413, "the CSR is too large").response }
        switch await enrollment.renew(presented: presented, request: body) {
        case .failure(let refusal): return Problem(refusal.status, refusal.reason).response
        case .success(let certificate): return issued(certificate, est: est)
        }
    }

    /// An admin token revokes any serial (`{"serial": …}` or `serial=…`); a device over mTLS
    /// revokes the certificate it presents.
    private func revoke(_ request: Request, _ context: GatehouseRequestContext) async -> Response {
        guard let body = await body(request) else { return Problem(413, "the body is too large").response }
        let serial = Self.serial(in: body)
        let presented: ClientCertificate?
        let actor: String
        if let bearer = OAuthForm.bearer(request.headers[.authorization]) {
            guard let principal = await enrollment.store.principal(bearerToken: bearer),
                principal.roles.contains("admin")
            else { return Problem(403, "only an admin token or the certificate itself may revoke").response }
            presented = nil
            actor = "http:\(principal.username)"
        } else {
            guard let peer = await context.peerCertificate() else {
                return Problem(401, "revocation needs an admin token or the certificate over mutual TLS").response
            }
            presented = peer
            actor = "device:\(peer.commonName ?? peer.serialNumber)"
        }
        switch await enrollment.revoke(serial: serial, presented: presented, actor: actor) {
        case .failure(let refusal): return Problem(refusal.status, refusal.reason).response
        case .success:
            logger.notice("certificate revoked", metadata: ["serial": "\(serial ?? presented?.serialNumber ?? "?")"])
            return JSONResponse.object(["revoked": serial ?? presented?.serialNumber ?? ""])
        }
    }

    /// `{"serial": …}` or `serial=…`.
    private static func serial(in body: [UInt8]) -> String? {
        if let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] {
            return object["serial"] as? String
        }
        guard case .success(let form) = OAuthForm.parse(String(decoding: body, as: UTF8.self)) else { return nil }
        return form["serial"]
    }

    private func body(_ request: Request) async -> [UInt8]? {
        guard let buffer = try? await request.body.collect(upTo: settings.maximumBodySize) else { return nil }
        return Array(buffer.readableBytesView)
    }

    /// The leaf and the CA as PEM, or for EST the leaf alone as base64 PKCS#7.
    private func issued(_ certificate: Certificate, est: Bool) -> Response {
        if est { return Self.pkcs7([certificate]) }
        return JSONResponse.bytes(
            Array(Self.pem([certificate] + enrollment.chain).utf8), contentType: "application/pem-certificate-chain")
    }

    static func pem(_ certificates: [Certificate]) -> String {
        certificates.compactMap { try? $0.serializeAsPEM().pemString }.joined(separator: "\n") + "\n"
    }

    static func pkcs7(_ certificates: [Certificate]) -> Response {
        guard let der = try? CertificatesOnlyPKCS7.encode(certificates) else {
            return Problem(503, "the certificates could not be encoded").response
        }
        var response = JSONResponse.bytes(
            Array(Data(der).base64EncodedString(options: .lineLength64Characters).utf8),
            contentType: "application/pkcs7-mime; smime-type=certs-only")
        if let encoding = HTTPField.Name("Content-Transfer-Encoding") { response.headers[encoding] = "base64" }
        return response
    }
}

extension GatehouseRequestContext {
    /// The certificate the client presented in the TLS handshake (verified against the
    /// enrollment CA by the listener), or nil on plain HTTP or without one.
    func peerCertificate() async -> ClientCertificate? {
        let channel = self.channel
        let der = try? await channel.eventLoop.submit { () -> [UInt8]? in
            try channel.pipeline.syncOperations.handler(type: NIOSSLHandler.self).peerCertificate?.toDERBytes()
        }.get()
        guard let der = der ?? nil else { return nil }
        return try? ClientCertificate(derBytes: der)
    }
}
