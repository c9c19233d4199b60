import ArgumentParser
import GatehouseAuth
import GatehouseBroker
import GatehouseTransport
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the broker until SIGTERM or SIGINT.",
        discussion: """
            Listens on mqtt://127.0.0.1:1883 unless --listen says otherwise. Port 0 picks a free \
            port; the log line 'listening on …' names it. Every CONNECT is refused unless \
            --allow-anonymous is given: identities and ACLs are not built yet.
            """
    )

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp("A listener URL, mqtt://HOST:PORT (repeat for several).", valueName: "url")
    )
    var listeners: [String] = ["mqtt://127.0.0.1:1883"]

    @Option(help: "Largest accepted packet in bytes, fixed header included.")
    var maxPacketSize: Int = 1_048_576

    @Option(help: "Seconds a new connection has to send CONNECT.")
    var connectTimeout: Int = 10

    @Option(help: "Seconds between updates of the $SYS/broker/... topics; 0 turns them off.")
    var sysInterval: Int = 10

    @Flag(help: "Accept every client without credentials and allow it every topic. Development only.")
    var allowAnonymous = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel: LogLevel = .info

    func validate() throws {
        for listener in listeners {
            do { _ = try ListenAddress(parsing: listener) } catch { throw ValidationError(error.description) }
        }
        guard maxPacketSize >= 64 && maxPacketSize <= 268_435_460 else {
            throw ValidationError("--max-packet-size must be between 64 and 268435460 bytes")
        }
        guard connectTimeout > 0 else { throw ValidationError("--connect-timeout must be at least 1 second") }
        guard sysInterval >= 0 else { throw ValidationError("--sys-interval must be 0 (off) or a number of seconds") }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel.rawValue) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "gatehouse")
        let addresses = try listeners.map { try ListenAddress(parsing: $0) }
        var brokerConfiguration = BrokerConfiguration()
        brokerConfiguration.maximumPacketSize = maxPacketSize
        let broker: Broker
        if allowAnonymous {
            logger.warning("ANONYMOUS ACCESS IS ON: any client may connect and use every topic")
            broker = Broker(
                configuration: brokerConfiguration, authenticator: AnonymousAuthenticator(),
                authorizer: AllowAllAuthorizer(), logger: logger)
        } else {
            logger.notice("no authentication method is configured: every CONNECT will be refused")
            broker = Broker(
                configuration: brokerConfiguration, authenticator: AuthenticatorChain([]),
                authorizer: AllowAllAuthorizer(), logger: logger)
        }
        let server = MQTTServer(
            configuration: .init(
                listeners: addresses,
                limits: MQTTConnectionLimits(
                    maximumPacketSize: maxPacketSize,
                    connectTimeout: .seconds(Int64(connectTimeout))
                )
            ),
            broker: broker,
            group: MultiThreadedEventLoopGroup.singleton,
            logger: logger
        )
        if sysInterval > 0 {
            _ = broker.startSystemTopics(
                version: GatehouseVersion.current, interval: .seconds(Int64(sysInterval)),
                on: MultiThreadedEventLoopGroup.singleton.next())
        }
        let services = ServiceGroup(
            configuration: .init(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await services.run()
    }
}

/// The swift-log levels, as a command-line value.
enum LogLevel: String, CaseIterable, ExpressibleByArgument {
    case trace, debug, info, notice, warning, error, critical
}
