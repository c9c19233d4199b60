public import GatehouseAuth
import Logging
import MQTTCore
import NIOConcurrencyHelpers
import NIOCore

/// The one place the broker asks the `Authorizer`: PUBLISH, SUBSCRIBE, Wills, deliveries and
/// the re-check after a reload all decide here, and refusals are counted and logged here.
public final class AccessControl: Authorizer {
    let authorizer: any Authorizer
    private let statistics: BrokerStatistics
    private let logger: Logger
    private let rejectionLog = NIOLockedValueBox<(last: NIODeadline, suppressed: Int)>((.distantPast, 0))

    init(authorizer: any Authorizer, statistics: BrokerStatistics, logger: Logger) {
        self.authorizer = authorizer
        self.statistics = statistics
        self.logger = logger
    }

    public func authorize(_ principal: Principal, _ action: Action, topic: String) -> Decision {
        authorizer.authorize(principal, action, topic: topic)
    }

    public func authorize(_ principal: Principal, _ action: Action, topic: TopicLevels) -> Decision {
        authorizer.authorize(principal, action, topic: topic)
    }

    public var generation: Int { authorizer.generation }

    /// A client's PUBLISH: never into a `$` topic (the broker owns them), else as the rules say.
    func mayPublish(_ principal: Principal, topic: TopicLevels, decisions: inout DecisionCache) -> Bool {
        guard !topic.isDollarTopic, decisions.decide(authorizer, principal, .publish, topic: topic) == .accept else {
            noteRejection(principal, .publish, topic: topic.name)
            return false
        }
        return true
    }

    /// A SUBSCRIBE, decided on the filter (a shared one without its `$share/` prefix).
    func maySubscribe(_ principal: Principal, filter: MQTTTopicFilter) -> Bool {
        guard authorizer.authorize(principal, .subscribe, topic: filter.filter) == .accept else {
            noteRejection(principal, .subscribe, topic: filter.filter)
            return false
        }
        return true
    }

    /// Whether a connection's Will may be published: as a PUBLISH would be, not logged as one.
    func mayPublishWill(_ principal: Principal, topic: String) -> Bool {
        authorizer.authorize(principal, .publish, topic: topic) == .accept
    }

    /// Counts an ACL refusal and logs it, at most once a second (with how many were not
    /// logged), so that a misbehaving client cannot flood the log. The client learns nothing.
    func noteRejection(_ principal: Principal, _ action: Action, topic: String) {
        statistics.add(statistics.authorizationRejections, 1)
        let now = NIODeadline.now()
        let suppressed = rejectionLog.withLockedValue { state -> Int? in
            guard now - state.last >= .seconds(1) else {
                state.suppressed += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.suppressed
        }
        guard let suppressed else { return }
        logger.notice(
            "ACL refused",
            metadata: [
                "identity": "\(principal.username)", "tenant": "\(principal.tenant)", "action": "\(action)",
                "topic": "\(topic)", "not_logged_since_last": "\(suppressed)",
            ])
    }
}
