import Foundation
import GatehouseAuth
import GatehouseIAM
import Logging

/// A fresh identity store in a real SQLite file, removed when the test ends.
final class TemporaryStore {
    let directory: URL
    let store: IdentityStore
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("iam-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        store = try IdentityStore(path: directory.appendingPathComponent("iam.sqlite").path)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    /// Tenant `acme` with device `sensor-1` (role `device`) and user `alice` (roles `operator`, `viewer`).
    func seed() throws {
        try store.addTenant("acme", actor: "test")
        try store.addIdentity("sensor-1", tenant: "acme", kind: .device, roles: ["device"], actor: "test")
        try store.addIdentity("alice", tenant: "acme", kind: .user, roles: ["operator", "viewer"], actor: "test")
    }
}

func credentials(
    _ clientID: String = "c1", username: String? = nil, password: String? = nil, address: String? = "10.0.0.1"
) -> ConnectCredentials {
    ConnectCredentials(
        clientIdentifier: clientID, username: username, password: password.map { Array($0.utf8) },
        remoteAddress: address)
}

extension AuthenticationOutcome {
    var principal: Principal? {
        if case .accepted(let principal) = self { return principal }
        return nil
    }
}
