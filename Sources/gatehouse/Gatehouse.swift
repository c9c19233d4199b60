import ArgumentParser

@main
struct Gatehouse: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gatehouse",
        abstract: "A secure MQTT 3.1.1 and 5.0 broker for IoT fleets.",
        discussion: """
            Gatehouse is built to authenticate every CONNECT against an embedded identity store \
            and to authorize every PUBLISH and SUBSCRIBE with a role-based topic ACL. This build \
            has the broker over TCP, TLS and WebSocket, the identity store and the topic ACL.

            Run 'gatehouse serve' to start the broker with its defaults, and \
            'gatehouse certs dev' for development certificates.
            """,
        version: GatehouseVersion.current,
        subcommands: [Serve.self, IAM.self, ACL.self, Certs.self]
    )
}

enum GatehouseVersion {
    static let current = "0.1.0"
}
