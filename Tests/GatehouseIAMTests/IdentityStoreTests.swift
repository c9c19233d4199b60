import Foundation
import GatehouseAuth
import GatehouseIAM
import Testing

@Suite("identity store")
struct IdentityStoreTests {
    @Test("tenants, identities, groups and effective roles round-trip through the file")
    func model() throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        try store.addGroup("operators", tenant: "acme", roles: ["dashboard"], actor: "test")
        try store.setMembership(group: "operators", identity: "alice", member: true, actor: "test")
        #expect(try store.identity(named: "alice").roles == ["dashboard", "operator", "viewer"])
        try store.setGroupRole(group: "operators", tenant: "acme", role: "dashboard", granted: false, actor: "test")
        #expect(try store.identity(named: "alice").roles == ["operator", "viewer"])
        try store.revokeRole("viewer", from: "alice", actor: "test")
        #expect(try store.identity(named: "alice").roles == ["operator"])
        #expect(try store.tenants().map(\.name) == ["acme"])
        #expect(try store.identities(tenant: "acme").map(\.name) == ["alice", "sensor-1"])
        #expect(try store.groups().first?.members == ["alice"])

        // Reopening the same file sees the same data: it is all on disk.
        let reopened = try IdentityStore(path: store.path)
        #expect(try reopened.identity(named: "sensor-1").kind == .device)
    }

    @Test("mistakes are refused with one sentence")
    func mistakes() throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        func message(_ body: () throws -> Void) -> String {
            do {
                try body()
                return "no error"
            } catch { return "\(error)" }
        }
        #expect(message { try store.addTenant("acme", actor: "t") } == "tenant 'acme' already exists")
        #expect(
            message { try store.addIdentity("alice", tenant: "acme", kind: .user, actor: "t") }
                == "identity 'alice' already exists")
        #expect(
            message { try store.addIdentity("bob", tenant: "nope", kind: .user, actor: "t") }
                == "no tenant named 'nope'")
        #expect(
            message { try store.addIdentity("a/b", tenant: "acme", kind: .user, actor: "t") }.contains("must be 1-128"))
        #expect(
            message { try store.addIdentity("x", tenant: "acme", kind: .user, roles: ["+"], actor: "t") }.contains(
                "role '+'"))
        #expect(message { try store.setIdentityEnabled("nobody", false, actor: "t") } == "no identity named 'nobody'")
        #expect(message { try store.revokeCredential("tok_000000000000", actor: "t") }.contains("no credential"))
        #expect(
            message { try store.setPassword("short", for: "alice", actor: "t") }
                == "a password needs at least 8 characters")
        #expect(
            message { _ = try store.createToken(for: "alice", roles: ["admin"], actor: "t") }.contains("role(s) admin"))
    }

    @Test("every change is audited with who, what and when; secrets never are")
    func audit() throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let store = temporary.store
        let before = try store.latestChange()
        let token = try store.createToken(for: "sensor-1", actor: "cli:ops")
        try store.setPassword("correct horse battery", for: "alice", actor: "cli:ops")
        try store.revokeCredential(token.credential.id, actor: "cli:ops")
        let entries = try store.auditLog()
        #expect(entries.suffix(3).map(\.action) == ["token.create", "password.set", "token.revoke"])
        #expect(entries.allSatisfy { $0.actor == "test" || $0.actor == "cli:ops" })
        #expect(entries.allSatisfy { !($0.detail ?? "").contains(token.token) && !($0.detail ?? "").contains("horse") })
        let changed = try store.identitiesChanged(after: before)
        #expect(changed.latest == before + 3)
        #expect(
            changed.identityIDs == [try store.identity(named: "sensor-1").id, try store.identity(named: "alice").id])
    }

    @Test("a token is shown once: only its SHA-256 is in the file")
    func tokenStorage() throws {
        let temporary = try TemporaryStore()
        try temporary.seed()
        let created = try temporary.store.createToken(for: "sensor-1", actor: "t")
        #expect(created.token.hasPrefix("gth_") && created.token.count == 47)
        let file = try Data(contentsOf: URL(fileURLWithPath: temporary.store.path))
        let wal = (try? Data(contentsOf: URL(fileURLWithPath: temporary.store.path + "-wal"))) ?? Data()
        #expect(file.range(of: Data(created.token.utf8)) == nil && wal.range(of: Data(created.token.utf8)) == nil)
        #expect(try temporary.store.credentials(kind: .token).first?.hint == String(created.token.prefix(10)))
    }

    @Test("client id patterns: %u is the name, a trailing * any suffix")
    func clientIDPatterns() {
        #expect(ClientIDPattern.allows(nil, name: "s1", clientIdentifier: "anything"))
        #expect(ClientIDPattern.allows("%u", name: "s1", clientIdentifier: "s1"))
        #expect(!ClientIDPattern.allows("%u", name: "s1", clientIdentifier: "s1-x"))
        #expect(ClientIDPattern.allows("%u-*", name: "s1", clientIdentifier: "s1-x"))
        #expect(!ClientIDPattern.allows("%u-*", name: "s1", clientIdentifier: "s2-x"))
        #expect(ClientIDPattern.allows("fleet-*", name: "s1", clientIdentifier: "fleet-7"))
    }
}
