import ArgumentParser
import GatehouseBroker
import GatehouseConfig
import GatehousePersistence
import Logging
import NIOCore
import ServiceLifecycle

/// Opens the broker's store and puts back what it kept, before any listener accepts. A store
/// that cannot be read stops start-up: starting empty would silently lose what was promised.
func openBrokerStore(_ settings: ServerConfiguration, logger: Logger) throws -> SQLiteBrokerStore? {
    guard settings.persistence.enabled else {
        logger.notice("persistence is off: sessions and queued messages live in memory only")
        return nil
    }
    do {
        return try SQLiteBrokerStore(
            settings: .init(
                path: settings.persistenceFile,
                durability: SQLiteBrokerStore.Durability(rawValue: settings.persistence.durability) ?? .normal,
                commitInterval: .microseconds(Int64(settings.persistence.commitIntervalMicroseconds))),
            logger: logger)
    } catch {
        throw ValidationError(error.description)
    }
}

func restoreBroker(_ broker: Broker, from store: SQLiteBrokerStore, on eventLoop: any EventLoop, logger: Logger) throws
{
    let started = ContinuousClock.now
    let state: RestoredBrokerState
    do { state = try store.load() } catch { throw ValidationError(error.description) }
    broker.restore(state, on: eventLoop)
    store.start()
    let queued = state.sessions.reduce(0) { $0 + ($1.backlog?.count ?? 0) }
    logger.info(
        "broker store loaded",
        metadata: [
            "file": "\(store.settings.path)", "durability": "\(store.settings.durability)",
            "sessions": "\(state.sessions.count)", "messages": "\(queued)", "retained": "\(state.retained.count)",
            "elapsed": "\(ContinuousClock.now - started)",
        ])
}

/// Keeps the store open while the broker runs; at shutdown (it is the last service to stop)
/// commits what is left and checkpoints the file.
struct BrokerStoreService: Service {
    let store: SQLiteBrokerStore
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        store.close()
        logger.info("broker store closed", metadata: ["file": "\(store.settings.path)"])
    }
}
