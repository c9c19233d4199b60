import ArgumentParser
import Foundation
import GatehouseACL
import GatehouseAuth
import GatehouseBroker
import GatehouseCertificates
import GatehouseConfig
import GatehouseHTTP
import GatehouseIAM
import GatehouseTransport
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import UnixSignals

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the broker until SIGTERM or SIGINT.",
        discussion: """
            Settings come from --config FILE (YAML; every key is in the README), then from the \
            flags below, which override the file. Without either, the broker listens on \
            mqtt://127.0.0.1:1883 and mqtts://127.0.0.1:8883 with its data in ./data; TLS \
            listeners without their own files use development certificates made on first \
            start in DATA_DIR/certs. Port 0 picks a free port; the log line 'listening on …' \
            names it. SIGHUP re-reads the TLS files. Clients authenticate against the \
            identity store (DATA_DIR/iam.sqlite, managed with 'gatehouse iam'); on first start \
            it gets an 'admin' identity whose token is written to DATA_DIR/admin.token. Topics \
            are authorized by the ACL file (--acl, else acl/default.acl, else a built-in \
            default); SIGHUP reloads it with the TLS files.
            """
    )

    @Option(help: ArgumentHelp("A YAML configuration file.", valueName: "file"))
    var config: String?

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "A listener URL: mqtt://HOST:PORT, mqtts://HOST:PORT, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH (repeat for several).",
            valueName: "url")
    )
    var listeners: [String] = []

    @Option(help: ArgumentHelp("Where the broker keeps its files (pid file).", valueName: "dir"))
    var dataDir: String?

    @Option(help: "Largest accepted packet in bytes, fixed header included.")
    var maxPacketSize: Int?

    @Option(help: "Seconds a new connection has to send CONNECT.")
    var connectTimeout: Int?

    @Option(help: "Seconds between updates of the $SYS/broker/... topics; 0 turns them off.")
    var sysInterval: Int?

    @Option(help: ArgumentHelp("The topic ACL file (overrides the configuration's 'acl').", valueName: "file"))
    var acl: String?

    @Flag(help: "Also accept clients that present no credentials. Development only.")
    var allowAnonymous = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical.")
    var logLevel: LogLevel?

    @Option(help: "Log format: text (the default) or json (one object per line).")
    var logFormat: LogFormat?

    @Option(
        help: "on: keep sessions and acknowledged messages in DATA_DIR/broker.sqlite (the default); off: memory only.")
    var persistence: Switch?

    /// The file's settings, the `GATEHOUSE_…` environment variables over them, and the flags
    /// over both.
    func resolvedConfiguration() throws -> ServerConfiguration {
        var settings = ServerConfiguration()
        var text: String?
        if let config {
            guard let contents = try? String(contentsOfFile: config, encoding: .utf8) else {
                throw ValidationError("cannot read the configuration file '\(config)'")
            }
            text = contents
        }
        do {
            settings = try ServerConfiguration.parse(
                text, file: config ?? "the configuration", environment: ProcessInfo.processInfo.environment)
        } catch {
            throw ValidationError(error.description)
        }
        if !listeners.isEmpty {
            settings.listeners = []
            settings.httpListeners = []
            for text in listeners {
                do {
                    if let http = try ServerConfiguration.HTTPListenerOptions.parse(text) {
                        settings.httpListeners.append(http)
                    } else {
                        settings.listeners.append(.init(address: try ListenAddress(parsing: text)))
                    }
                } catch {
                    throw ValidationError(String(describing: error))
                }
            }
            guard !settings.listeners.isEmpty else {
                throw ValidationError("--listen needs at least one MQTT listener")
            }
        }
        if let dataDir { settings.dataDirectory = dataDir }
        if let maxPacketSize {
            guard (64...268_435_460).contains(maxPacketSize) else {
                throw ValidationError("--max-packet-size must be between 64 and 268435460 bytes")
            }
            settings.limits.maxPacketSize = maxPacketSize
        }
        if let connectTimeout {
            guard connectTimeout > 0 else { throw ValidationError("--connect-timeout must be at least 1 second") }
            settings.limits.connectTimeout = connectTimeout
        }
        if let sysInterval {
            guard sysInterval >= 0 else {
                throw ValidationError("--sys-interval must be 0 (off) or a number of seconds")
            }
            settings.sysInterval = sysInterval
        }
        if allowAnonymous { settings.allowAnonymous = true }
        if let acl { settings.aclFile = acl }
        if let logLevel { settings.logLevel = logLevel.rawValue }
        if let logFormat { settings.logFormat = logFormat.rawValue }
        if let persistence { settings.persistence.enabled = persistence == .on }
        return settings
    }

    func validate() throws {
        _ = try resolvedConfiguration()
    }

    func run() async throws {
        let settings = try resolvedConfiguration()
        let level = Logger.Level(rawValue: settings.logLevel) ?? .info
        let json = settings.logFormat == "json"
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler =
                json ? JSONLogHandler(label: label) : StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "gatehouse")
        // Before anything makes a metric: one made earlier stays a no-op for good.
        let metrics = BrokerMetrics.bootstrap()
        raiseDescriptorLimit(logger: logger)
        let pidFile = try DataDirectory(path: settings.dataDirectory).writePIDFile()
        defer { try? FileManager.default.removeItem(atPath: pidFile) }

        let store: IdentityStore
        do { store = try openIdentityStore(settings, logger: logger) } catch {
            throw ValidationError("\(error)")
        }
        store.setIssuerIdentifier(settings.issuerIdentifier)
        if settings.allowAnonymous {
            logger.warning("ANONYMOUS ACCESS IS ON: clients without credentials may connect (role 'anonymous')")
        }
        let aclFile = try resolveACLFile(settings, logger: logger)
        let authorizer: ACLAuthorizer
        let aclState = ACLState(file: aclFile)
        do {
            let table = try ACLTable.load(file: aclFile)
            logger.info("ACL loaded", metadata: ["file": "\(aclFile)", "rules": "\(table.ruleCount)"])
            metrics.aclLoaded(rules: table.ruleCount, reload: false)
            aclState.loaded(rules: table.ruleCount)
            authorizer = ACLAuthorizer(table)
        } catch {
            throw ValidationError("the ACL has errors:\n\(error.description)")
        }
        let brokerStore = try openBrokerStore(settings, logger: logger)
        let authenticator = makeAuthenticator(settings, store: store, logger: logger)
        let broker = Broker(
            configuration: settings.brokerConfiguration,
            authenticator: authenticator,
            enhancedAuthenticator: makeEnhancedAuthenticator(
                settings, store: store, backOff: authenticator, logger: logger),
            authorizer: authorizer, store: brokerStore, logger: logger)
        if let brokerStore {
            try restoreBroker(
                broker, from: brokerStore, on: MultiThreadedEventLoopGroup.singleton.next(), logger: logger)
        }
        let (listeners, mqttUsesDevelopmentCertificates) = settings.resolvedListeners()
        let (httpListeners, httpUsesDevelopmentCertificates) = settings.resolvedHTTPListeners()
        let enrollmentFiles = settings.enrollmentAuthorityFiles
        let enrollmentUsesDevelopmentCA = settings.enrollment.enabled && enrollmentFiles.development
        if mqttUsesDevelopmentCertificates || httpUsesDevelopmentCertificates || enrollmentUsesDevelopmentCA {
            try ensureDevelopmentCertificates(in: settings.developmentCertificatesDirectory, logger: logger)
        }
        let enrollment =
            try settings.enrollment.enabled
            ? makeEnrollment(settings, store: store, broker: broker, logger: logger) : nil
        let server: MQTTServer
        do {
            server = try MQTTServer(
                configuration: .init(
                    listeners: listeners,
                    limits: MQTTConnectionLimits(
                        maximumPacketSize: settings.limits.maxPacketSize,
                        connectTimeout: .seconds(Int64(settings.limits.connectTimeout)),
                        maximumPendingConnects: settings.limits.maxPendingConnects
                    ),
                    liveRevocations: enrollment.map {
                        EnrolledCertificateRevocations(store: store, authority: $0.authority)
                    }
                ),
                broker: broker,
                group: MultiThreadedEventLoopGroup.singleton,
                logger: logger
            )
        } catch {
            throw ValidationError(error.description)
        }
        if settings.sysInterval > 0 {
            _ = broker.startSystemTopics(
                version: GatehouseVersion.current, interval: .seconds(Int64(settings.sysInterval)),
                on: MultiThreadedEventLoopGroup.singleton.next())
        }
        // Trap SIGHUP before listening: its default action would end the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let notifier = SystemdNotifier()
        let reloader = ReloadOnHangup(signals: hangups, logger: logger) {
            notifier.reloading()
            reloadACL(aclFile, into: authorizer, broker: broker, metrics: metrics, state: aclState, logger: logger)
            server.reloadTLS()
            notifier.notify("READY=1")
        }
        // Services stop in reverse order: the broker store is first, so that it closes last.
        var services: [any Service] = brokerStore.map { [BrokerStoreService(store: $0, logger: logger)] } ?? []
        services += [server, reloader, RevocationEnforcer(store: store, broker: broker, logger: logger)]
        if !httpListeners.isEmpty {
            services.append(
                try makeHTTPServer(
                    settings, listeners: httpListeners, store: store, enrollment: enrollment,
                    readiness: [
                        ReadinessCheck(name: "mqtt_listeners") { server.isListening },
                        ReadinessCheck(name: "identity_store") {
                            (try? await store.offloaded { [store] in try store.latestChange() }) != nil
                        },
                    ],
                    operatorEndpoints: OperatorEndpoints(
                        tokenRequiredFromLoopback: settings.http.metricsRequireToken,
                        metrics: { metrics.scrape(broker, server: server) },
                        status: {
                            StatusReport(
                                broker: broker, store: store, acl: aclState, server: server,
                                httpListeners: httpListeners.map {
                                    "\($0.tls == nil ? "http" : "https")://\($0.host):\($0.port)"
                                }
                            ).json()
                        }),
                    sessions: BrokerSessionControl(store: store, broker: broker, logger: logger), logger: logger))
        }
        services.append(ReadinessNotification(notifier: notifier, isReady: { server.isListening }, logger: logger))
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
    }
}

/// The HTTP side: the OAuth2 server over the identity store, on the broker's event loops.
private func makeHTTPServer(
    _ settings: ServerConfiguration, listeners: [(host: String, port: Int, tls: TLSSettings?)], store: IdentityStore,
    enrollment: EnrollmentService?, readiness: [ReadinessCheck], operatorEndpoints: OperatorEndpoints,
    sessions: any SessionControl, logger: Logger
) throws -> HTTPServer {
    let enrollmentCA = enrollment == nil ? nil : settings.enrollmentAuthorityFiles.certificate
    let group = MultiThreadedEventLoopGroup.singleton
    var trustRoots = NIOSSLTrustRoots.default
    if let file = settings.jwksCAFile {
        guard let certificates = try? NIOSSLCertificate.fromPEMFile(file), !certificates.isEmpty else {
            throw ValidationError("cannot read the jwks_ca_file '\(file)'")
        }
        trustRoots = .certificates(certificates)
    }
    let http = try listeners.map { listener in
        do {
            return HTTPListener(
                host: listener.host, port: listener.port,
                tls: try listener.tls?.httpsConfiguration(clientCAFile: enrollmentCA))
        } catch { throw ValidationError(String(describing: error)) }
    }
    // Made last: once made, only the server's shutdown may release it.
    let jwksClient = JWKSClient(trustRoots: trustRoots, group: group)
    let oauth = OAuthServer(store: store, settings: settings.oauth, fetcher: jwksClient, sessions: sessions)
    return HTTPServer(
        listeners: http, oauth: oauth, enrollment: enrollment, readiness: readiness,
        operatorEndpoints: operatorEndpoints,
        settings: settings.http,
        group: group,
        jwksClient: jwksClient, logger: logger)
}

/// The configured ACL file; else `./acl/default.acl`; else the built-in default, written to
/// `DATA_DIR/default.acl` so that the operator can see and edit it.
private func resolveACLFile(_ settings: ServerConfiguration, logger: Logger) throws -> String {
    if let file = settings.aclFile { return file }
    if FileManager.default.fileExists(atPath: "acl/default.acl") { return "acl/default.acl" }
    let file = (settings.dataDirectory as NSString).appendingPathComponent("default.acl")
    if !FileManager.default.fileExists(atPath: file) {
        do { try DefaultACL.text.write(toFile: file, atomically: true, encoding: .utf8) } catch {
            throw ValidationError("cannot write the default ACL to '\(file)': \(error.localizedDescription)")
        }
        logger.notice("wrote the default ACL", metadata: ["file": "\(file)"])
    }
    return file
}

/// SIGHUP: a valid file replaces the table at once for every connection; a file with errors is
/// refused, each error logged with its place, and the old table stays.
private func reloadACL(
    _ file: String, into authorizer: ACLAuthorizer, broker: Broker, metrics: BrokerMetrics, state: ACLState,
    logger: Logger
) {
    do {
        let table = try ACLTable.load(file: file)
        authorizer.replace(with: table)
        metrics.aclLoaded(rules: table.ruleCount, reload: true)
        state.loaded(rules: table.ruleCount)
        let removed = broker.recheckSubscriptions()
        logger.notice(
            "ACL reloaded",
            metadata: ["file": "\(file)", "rules": "\(table.ruleCount)", "subscriptions_removed": "\(removed)"])
    } catch {
        broker.statistics.countACLReloadFailure()
        metrics.aclReloadFailed()
        state.refused(error.errors.map(\.description))
        for problem in error.errors { logger.error("ACL error: \(problem.description)") }
        logger.error(
            "ACL reload refused; the previous ACL stays in force", metadata: ["errors": "\(error.errors.count)"])
    }
}

/// The enrollment CA from its files (the development CA unless configured).
private func makeEnrollment(_ settings: ServerConfiguration, store: IdentityStore, broker: Broker, logger: Logger)
    throws -> EnrollmentService
{
    let files = settings.enrollmentAuthorityFiles
    let authority: CertificateAuthority
    do {
        authority = try CertificateAuthority(
            certificatePEM: String(contentsOfFile: files.certificate, encoding: .utf8),
            privateKeyPEM: String(contentsOfFile: files.key, encoding: .utf8))
    } catch {
        throw ValidationError("cannot read the enrollment CA '\(files.certificate)' / '\(files.key)': \(error)")
    }
    logger.info("enrollment CA loaded", metadata: ["certificate": "\(files.certificate)"])
    return EnrollmentService(
        store: store, authority: authority, validity: Int64(settings.enrollment.validityDays) * 86_400,
        sessions: BrokerSessionControl(store: store, broker: broker, logger: logger))
}

/// Makes the development CA and server certificate on first start, so that MQTTS works out of the box.
private func ensureDevelopmentCertificates(in directory: String, logger: Logger) throws {
    let certificates = DevelopmentCertificates(directory: directory)
    guard !certificates.serverFilesExist else { return }
    do {
        try certificates.create()
    } catch {
        throw ValidationError("cannot create development certificates in '\(directory)': \(error)")
    }
    logger.notice(
        "created development certificates; clients trust \(certificates.caCertificateFile)",
        metadata: ["directory": "\(directory)"])
}

/// Runs `reload` on every SIGHUP, off the event loops, until graceful shutdown.
struct ReloadOnHangup: Service {
    let signals: UnixSignalsSequence
    let logger: Logger
    let reload: @Sendable () -> Void

    func run() async throws {
        for await _ in signals.cancelOnGracefulShutdown() {
            logger.notice("SIGHUP: reloading")
            reload()
        }
    }
}

/// The broker's data directory: created on start, holding the pid file that
/// `gatehouse acl reload` (and operators' scripts) use to signal the running broker.
struct DataDirectory {
    let path: String

    init(path: String) throws {
        self.path = path
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw ValidationError("cannot create the data directory '\(path)': \(error.localizedDescription)")
        }
    }

    func writePIDFile() throws -> String {
        let file = (path as NSString).appendingPathComponent("gatehouse.pid")
        do {
            try "\(ProcessInfo.processInfo.processIdentifier)\n".write(toFile: file, atomically: true, encoding: .utf8)
        } catch {
            throw ValidationError("cannot write '\(file)': \(error.localizedDescription)")
        }
        return file
    }
}

enum Switch: String, CaseIterable, ExpressibleByArgument {
    case on, off
}

/// Each connection is a descriptor: the soft limit (often 1,024) goes up to the hard one, so
/// that the operator need not raise it for a fleet.
private func raiseDescriptorLimit(logger: Logger) {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    let before = limit.rlim_cur
    limit.rlim_cur = limit.rlim_max
    if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 {
        logger.info("raised the open-file limit", metadata: ["from": "\(before)", "to": "\(limit.rlim_max)"])
    } else {
        logger.warning("could not raise the open-file limit", metadata: ["limit": "\(before)"])
    }
}

/// The swift-log levels, as a command-line value.
enum LogLevel: String, CaseIterable, ExpressibleByArgument {
    case trace, debug, info, notice, warning, error, critical
}

enum LogFormat: String, CaseIterable, ExpressibleByArgument {
    case text, json
}
