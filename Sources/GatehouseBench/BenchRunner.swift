import Foundation
import MQTTCore
import NIOCore
public import NIOPosix
import NIOSSL

/// Runs a `BenchPlan`: connects the clients (subscribers first), starts the publishers once
/// every client is ready, reports each second, and measures over the time between the start
/// and the end of the duration (or the last expected delivery under `--limit`).
public struct BenchRunner: Sendable {
    public let plan: BenchPlan

    public init(plan: BenchPlan) { self.plan = plan }

    /// `progress` gets a line a second; `shouldStop` is polled as often (an interrupt).
    public func run(
        progress: @Sendable (String) -> Void, shouldStop: @Sendable () -> Bool = { false }
    ) async throws -> BenchSummary {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: plan.threads)
        do {
            let summary = try await run(on: group, progress: progress, shouldStop: shouldStop)
            try await group.shutdownGracefully()
            return summary
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    private func run(
        on group: MultiThreadedEventLoopGroup, progress: @Sendable (String) -> Void,
        shouldStop: @Sendable () -> Bool
    ) async throws -> BenchSummary {
        let loops = Array(group.makeIterator())
        let recorders = loops.map { _ in BenchRecorder() }
        // Every subscriber gets every message only with the default filter.
        let window =
            plan.scenario == .pubsub && plan.subscriptionFilter == nil && plan.deliveryWindow > 0
            ? DeliveryWindow(size: plan.deliveryWindow, publishers: plan.count, subscribers: plan.subscribers) : nil
        let connector = BenchConnector(
            plan: plan, tls: try plan.tls.map(Self.makeTLSContext), loops: loops, window: window)
        let runStarted = monotonicNanoseconds()

        let subscribers = await connector.connect(
            role: .subscriber, count: plan.subscriberCount, recorders: recorders)
        let others: [NIOLoopBound<BenchClientHandler>]
        switch plan.scenario {
        case .conn:
            others = await connector.connect(role: .idle, count: plan.count, recorders: recorders)
        case .pub, .pubsub:
            others = await connector.connect(role: .publisher, count: plan.count, recorders: recorders)
        case .sub:
            others = []
        }
        let publishers = plan.publisherCount > 0 ? others : []
        let clients = subscribers + others
        let connectSeconds = Double(monotonicNanoseconds() - runStarted) / 1e9
        let expectedClients = plan.subscriberCount + (plan.scenario == .sub ? 0 : plan.count)
        progress(
            String(
                format: "connected %d of %d clients in %.2f s", clients.count, expectedClients, connectSeconds))

        let perPublisher = plan.rate / Double(max(1, publishers.count))
        for publisher in publishers {
            publisher.eventLoop.execute { publisher.value.start(messagesPerSecond: perPublisher) }
        }
        let measureStart = monotonicNanoseconds()
        let startCounts = BenchRecorder.total(recorders)
        var endCounts = startCounts
        var measureEnd = measureStart
        var previous = startCounts
        var previousAt = measureStart
        var quietSince: UInt64?
        let expected = expectedDeliveries(publishers: publishers.count)
        while true {
            try await Task.sleep(for: .seconds(1))
            let now = monotonicNanoseconds()
            let counts = BenchRecorder.total(recorders)
            progress(
                BenchReport.progressLine(
                    elapsed: Double(now - measureStart) / 1e9, counts: counts, previous: previous,
                    interval: Double(now - previousAt) / 1e9))
            let elapsed = Double(now - measureStart) / 1e9
            let publishedAll = plan.limit > 0 && counts.published >= plan.limit * publishers.count
            let deliveriesQuiet = counts.received == previous.received
            quietSince = deliveriesQuiet ? (quietSince ?? now) : nil
            let receivedAll = expected.map { counts.received >= $0 } ?? false
            var finished = shouldStop() || (plan.duration > 0 && elapsed >= plan.duration)
            if plan.limit > 0 {
                let acknowledgedAll =
                    plan.qos == .atMostOnce || counts.acknowledged + counts.refused >= counts.published
                let waitedLongEnough = quietSince.map { now - $0 >= 2_000_000_000 } ?? false
                if publishedAll, acknowledgedAll, plan.subscriberCount == 0 || receivedAll || waitedLongEnough {
                    finished = true
                }
                if plan.scenario == .sub, counts.received >= plan.limit * plan.subscriberCount { finished = true }
            }
            if clients.isEmpty { finished = true }
            previous = counts
            previousAt = now
            if finished {
                endCounts = counts
                measureEnd = now
                break
            }
        }

        for publisher in publishers { publisher.eventLoop.execute { publisher.value.stop() } }
        // Deliveries still on the way are counted for loss, not for throughput.
        var drained = BenchRecorder.total(recorders)
        if plan.subscriberCount > 0, plan.publisherCount > 0 {
            for _ in 0..<20 {
                try await Task.sleep(for: .milliseconds(100))
                let now = BenchRecorder.total(recorders)
                if now.received == drained.received, expected.map({ now.received >= $0 }) ?? true { break }
                drained = now
            }
            drained = BenchRecorder.total(recorders)
        }
        for client in clients { client.eventLoop.execute { client.value.disconnect() } }
        try await Task.sleep(for: .milliseconds(100))

        return BenchSummary(
            plan: plan, clients: clients.count, expectedClients: expectedClients, connectSeconds: connectSeconds,
            seconds: Double(measureEnd - measureStart) / 1e9, window: endCounts.minus(startCounts),
            total: drained, expectedDeliveries: expectedDeliveries(publishers: publishers.count, published: drained))
    }

    /// Each subscriber receives every message when its filter is the topic's own with `+`.
    private func expectedDeliveries(publishers: Int, published: BenchCounts? = nil) -> Int? {
        guard plan.scenario == .pubsub, plan.subscriptionFilter == nil else { return nil }
        if let published { return published.published * plan.subscribers }
        return plan.limit > 0 ? plan.limit * publishers * plan.subscribers : nil
    }

    static func makeTLSContext(_ tls: BenchPlan.TLS) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let caFile = tls.caFile { configuration.trustRoots = .file(caFile) }
        if tls.insecure { configuration.certificateVerification = .none }
        if let certificateFile = tls.certificateFile, let keyFile = tls.keyFile {
            configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificateFile).map { .certificate($0) }
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
        }
        return try NIOSSLContext(configuration: configuration)
    }
}

/// Opens clients with at most `connectConcurrency` connections being set up at once, each on
/// the next event loop in turn.
struct BenchConnector: Sendable {
    let plan: BenchPlan
    let tls: NIOSSLContext?
    let loops: [any EventLoop]
    let window: DeliveryWindow?

    func connect(
        role: BenchClientHandler.Role, count: Int, recorders: [BenchRecorder]
    ) async -> [NIOLoopBound<BenchClientHandler>] {
        await withTaskGroup(of: NIOLoopBound<BenchClientHandler>?.self) { group in
            var connected: [NIOLoopBound<BenchClientHandler>] = []
            var pending = (0..<count).lazy.map { $0 + 1 }.makeIterator()
            var running = 0
            while true {
                if running < plan.connectConcurrency, let number = pending.next() {
                    let index = number % loops.count
                    group.addTask {
                        await connectOne(role: role, number: number, loop: loops[index], recorder: recorders[index])
                    }
                    running += 1
                    continue
                }
                guard let result = await group.next() else { break }
                running -= 1
                if let result { connected.append(result) }
            }
            return connected
        }
    }

    private func connectOne(
        role: BenchClientHandler.Role, number: Int, loop: any EventLoop, recorder: BenchRecorder
    ) async -> NIOLoopBound<BenchClientHandler>? {
        let ready = loop.makePromise(of: Void.self)
        let plan = plan
        let tls = tls
        let window = window
        let serverName = plan.tls?.serverName ?? (Self.isAddress(plan.host) ? nil : plan.host)
        var bootstrap = ClientBootstrap(group: loop)
        if !plan.sourceAddresses.isEmpty,
            let source = try? SocketAddress(
                ipAddress: plan.sourceAddresses[number % plan.sourceAddresses.count], port: 0)
        {
            bootstrap = bootstrap.bind(to: source)
        }
        bootstrap =
            bootstrap
            .connectTimeout(.seconds(10))
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    if let tls {
                        try pipeline.addHandler(NIOSSLClientHandler(context: tls, serverHostname: serverName))
                    }
                    try pipeline.addHandler(
                        ByteToMessageHandler(BenchFrameDecoder(version: plan.protocolVersion)))
                    try pipeline.addHandler(
                        BenchClientHandler(
                            role: role, number: number, plan: plan, recorder: recorder, ready: ready, window: window))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: plan.host, port: plan.port).get()
        } catch {
            recorder.record {
                $0.connectFailures += 1
                $0.error("connect: \(error)")
            }
            ready.fail(error)
            return nil
        }
        do {
            try await ready.futureResult.get()
            return try await channel.eventLoop.submit {
                NIOLoopBound(
                    try channel.pipeline.syncOperations.handler(type: BenchClientHandler.self),
                    eventLoop: channel.eventLoop)
            }.get()
        } catch {
            return nil
        }
    }

    private static func isAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}
