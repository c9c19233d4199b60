import GatehouseBroker
import MQTTCore
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// A store whose commits happen only when the test says, once it closes the gate.
final class GatedStore: BrokerStore, Sendable {
    private struct State {
        var gated = false
        var waiters: [(any EventLoop, @Sendable () -> Void)] = []
    }
    private let state = NIOLockedValueBox(State())

    func append(_ change: StoreChange) {}
    func currentTicket() -> UInt64 { 1 }
    func whenDurable(
        _ ticket: UInt64, on eventLoop: any EventLoop, urgent: Bool, _ body: @escaping @Sendable () -> Void
    ) {
        let runNow = state.withLockedValue { state in
            if state.gated { state.waiters.append((eventLoop, body)) }
            return !state.gated
        }
        if runNow { eventLoop.execute(body) }
    }
    func loadBacklog(
        of clientID: String, _ backlog: StoredBacklog, on eventLoop: any EventLoop,
        _ body: @escaping @Sendable (Result<[RestoredBrokerState.Delivery], any Error>) -> Void
    ) {
        eventLoop.execute { body(.success([])) }
    }

    /// From now on nothing commits until `commit()`.
    func closeGate() { state.withLockedValue { $0.gated = true } }

    func commit() {
        let due = state.withLockedValue { state in
            defer { state.waiters = [] }
            return state.waiters
        }
        for (eventLoop, body) in due { eventLoop.execute(body) }
    }
}

@Suite("acknowledgements before the commit", .timeLimit(.minutes(1)))
struct EarlyAcknowledgementTests {
    private func persistentSubscriber(_ broker: Broker, _ clientID: String, _ filter: String) async throws
        -> TestConnection
    {
        let subscriber = try await TestConnection(broker: broker)
        try await subscriber.connect(clientID: clientID, cleanStart: false, properties: [.sessionExpiryInterval(300)])
        _ = try await subscriber.subscribe(filter)
        return subscriber
    }

    private func publish(_ publisher: TestConnection, _ topic: String, id: UInt16, retain: Bool = false)
        async throws
    {
        try await publisher.send(
            .publish(
                .init(
                    topicName: topic, payload: ByteBuffer(string: "m\(id)"), qos: .atLeastOnce, retain: retain,
                    packetIdentifier: id)))
    }

    /// The subscriber's next PUBLISH, acknowledged.
    private func receiveAndAcknowledge(_ subscriber: TestConnection) async throws {
        guard case .publish(let delivered) = try await subscriber.receive() else {
            throw TestFailure("expected PUBLISH")
        }
        try await subscriber.send(.puback(.init(packetIdentifier: delivered.packetIdentifier)))
    }

    /// A persistent subscriber to `a` and a publisher, connected while commits still happen;
    /// from then on nothing commits until the test says.
    private func gatedPair() async throws -> (GatedStore, TestConnection, TestConnection) {
        let store = GatedStore()
        let broker = makeBroker(store: store)
        let subscriber = try await persistentSubscriber(broker, "sub", "a")
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        store.closeGate()
        return (store, subscriber, publisher)
    }

    @Test("a QoS 1 PUBACK goes once the persistent subscriber acknowledged its copy, before the commit")
    func acknowledgedByTheSubscriber() async throws {
        let (_, subscriber, publisher) = try await gatedPair()

        try await publish(publisher, "a", id: 1)
        guard case .publish(let delivered) = try await subscriber.receive() else {
            throw TestFailure("expected PUBLISH")
        }
        try await publisher.expectSilence()
        try await subscriber.send(.puback(.init(packetIdentifier: delivered.packetIdentifier)))
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 1)))
    }

    @Test("the PUBACK waits for the commit while an offline session holds the message, and keeps its order")
    func offlineSessionWaitsForTheCommit() async throws {
        let store = GatedStore()
        let broker = makeBroker(store: store)
        let online = try await persistentSubscriber(broker, "online", "a")
        let offline = try await persistentSubscriber(broker, "offline", "b")
        try await offline.send(.disconnect(.init()))
        try await offline.waitUntilClosed()
        let publisher = try await TestConnection(broker: broker)
        try await publisher.connect(clientID: "pub")
        store.closeGate()

        try await publish(publisher, "b", id: 1)
        try await publish(publisher, "a", id: 2)
        try await receiveAndAcknowledge(online)
        // 2 is released by its subscriber, but 1 is ahead of it. [MQTT-4.6.0-2]
        try await publisher.expectSilence()
        store.commit()
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 1)))
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 2)))
    }

    @Test("a retained QoS 1 message is acknowledged only after the commit")
    func retainedWaitsForTheCommit() async throws {
        let (store, subscriber, publisher) = try await gatedPair()

        try await publish(publisher, "a", id: 7, retain: true)
        try await receiveAndAcknowledge(subscriber)
        try await publisher.expectSilence()
        store.commit()
        #expect(try await publisher.receive() == .puback(.init(packetIdentifier: 7)))
    }
}
