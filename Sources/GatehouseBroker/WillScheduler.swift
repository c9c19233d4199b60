import NIOCore

/// Wills: published when their connection ends, or after their Will Delay Interval unless the
/// session ends first or a new connection resumes it. [MQTT-3.1.3-9]
struct WillScheduler: Sendable {
    let router: Router

    func publish(_ will: WillMessage, delay: UInt32, session: Session, on eventLoop: any EventLoop) {
        let wait = min(delay, session.expiryInterval)
        guard wait > 0 else {
            router.publishNow(will.published(at: .now()))
            return
        }
        session.setPendingWill(will, dueAt: wallClockSeconds() + Int64(wait))
        publishWhenDue(of: session, in: Int64(wait), on: eventLoop)
    }

    /// Publishes the session's pending Will after `seconds`, if no connection attached meanwhile.
    func publishWhenDue(of session: Session, in seconds: Int64, on eventLoop: any EventLoop) {
        let attachments = session.attachmentCount
        eventLoop.scheduleTask(in: .seconds(seconds)) { [router] in
            if let due = session.takePendingWill(since: attachments) { router.publishNow(due.published(at: .now())) }
        }
    }

    /// The session ended: a Will still waiting is due now.
    func publishPending(of session: Session) {
        if let will = session.takePendingWill() { router.publishNow(will.published(at: .now())) }
    }
}
