import Foundation
import Logging
import NIOCore
import ServiceLifecycle

#if canImport(Glibc)
    import Glibc
#endif

/// The service manager's readiness protocol (`sd_notify`, for `Type=notify` units): datagrams
/// such as `READY=1` to the socket named by `$NOTIFY_SOCKET`. Without the variable (not under
/// systemd) every call does nothing.
struct SystemdNotifier: Sendable {
    private let socketPath: String?

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
    }

    var isActive: Bool { socketPath != nil }

    /// Sends `state` (newline-separated `KEY=VALUE` lines); false if it could not be sent.
    @discardableResult
    func notify(_ state: String) -> Bool {
        guard var path = socketPath else { return false }
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        // '@' names a socket in the abstract namespace: a leading NUL byte instead.
        let abstract = path.hasPrefix("@")
        if abstract { path.removeFirst() }
        let bytes = (abstract ? [0] : []) + Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            buffer.copyBytes(from: bytes)
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let message = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { socketAddress in
                sendto(descriptor, message, message.count, Int32(MSG_NOSIGNAL), socketAddress, length)
            }
        }
        return sent == message.count
    }

    /// `RELOADING=1` with the monotonic time systemd asks of a reload's start.
    func reloading() {
        // NIO's deadlines count CLOCK_MONOTONIC, the clock systemd means.
        let microseconds = NIODeadline.now().uptimeNanoseconds / 1_000
        notify("RELOADING=1\nMONOTONIC_USEC=\(microseconds)")
    }
}

/// Says READY=1 once the MQTT listeners are bound, and STOPPING=1 when shutdown begins. Listed
/// last among the services, so that it hears of the shutdown first.
struct ReadinessNotification: Service {
    let notifier: SystemdNotifier
    let isReady: @Sendable () -> Bool
    let logger: Logger

    func run() async throws {
        // A service that returns ends the group: without systemd this one just waits.
        guard notifier.isActive else {
            try? await gracefulShutdown()
            return
        }
        while !isReady() {
            try await Task.sleep(for: .milliseconds(10))
        }
        if !notifier.notify("READY=1\nSTATUS=accepting connections\nMAINPID=\(getpid())") {
            logger.warning("could not notify the service manager (NOTIFY_SOCKET)")
        }
        try? await gracefulShutdown()
        notifier.notify("STOPPING=1")
    }
}
