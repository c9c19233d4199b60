/// How the IAM and the HTTP side end MQTT sessions without knowing the broker: the
/// executable wires it to the broker's sessions.
public protocol SessionControl: Sendable {
    /// Ends, now, the connected sessions of `identityID` whose credential is no longer valid
    /// (revoked, expired, its identity disabled). Returns how many ended.
    @discardableResult
    func endInvalidSessions(identityID: String) async -> Int
}
