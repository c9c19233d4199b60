import Foundation
import GatehouseAuth
import MQTTCore
import NIOCore

/// One connection's MQTT protocol decisions, free of channels, timers and broker state: what
/// each packet means in the connection's phase, what the CONNACK says, which topic an alias
/// names, what a refusal looks like on the wire of this version. `BrokerConnectionHandler`
/// feeds it packets and carries out the steps it returns; tests drive it directly.
struct ConnectionProtocol {
    enum Phase: Equatable {
        case awaitingConnect
        /// CONNECT is being authenticated off the loop; packets that arrive meanwhile wait.
        case authenticating
        case connected
        case closed
    }

    /// What a CONNECT asks of the broker, with its client identifier decided.
    struct ConnectRequest: Equatable {
        var connect: MQTTPacket.Connect
        var clientID: String
        /// Set when the broker chose the identifier (the client sent an empty one).
        var assignedIdentifier: String?
        var sessionExpiryInterval: UInt32
        var receiveMaximum: Int
        /// Enhanced authentication [MQTT-4.12]: the method CONNECT named, and its data.
        var authenticationMethod: String?
        var authenticationData: [UInt8] = []
    }

    /// What the handler is to do with a packet.
    enum Step: Equatable {
        /// Authenticate the CONNECT, then call `accepted` or one of the refusals.
        case authenticate(ConnectRequest)
        /// Kept until authentication ends; `accepted` hands it back.
        case hold
        /// The client's AUTH 0x18: its answer to the challenge the handler sent.
        case continueAuthentication(data: [UInt8])
        /// The client's AUTH 0x19: it presents new credentials while connected.
        case reauthenticate(data: [UInt8])
        /// An inbound PUBLISH, its topic alias resolved to `topic`.
        case publish(MQTTPacket.Publish, topic: String)
        /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE or UNSUBSCRIBE: the session's work.
        case forSession(MQTTPacket)
        case reply(MQTTPacket)
        /// A DISCONNECT from the client; a new session expiry interval if it set one.
        case disconnect(sessionExpiryInterval: UInt32?)
        /// Send this CONNACK, then close.
        case refuse(MQTTPacket)
        /// End the connection, with DISCONNECT `reason` where the version has it.
        case close(reason: MQTTReasonCode?)
        case ignore
    }

    /// What an accepted CONNECT leads to.
    struct Accepted {
        var connack: MQTTPacket
        /// Seconds; 0 when the connection has none.
        var keepAlive: UInt16
        /// The packets that arrived during authentication, in order.
        var pending: [MQTTPacket]
    }

    /// The broker limits a connection's protocol decisions read: only these, so that each
    /// connection does not carry the whole configuration.
    struct Limits {
        var maximumInflightMessages: Int
        var maximumPacketSize: Int
        var maximumTopicLevels: Int
        var receiveMaximum: UInt16
        var topicAliasMaximum: UInt16
        var maximumKeepAlive: UInt16

        init(_ configuration: BrokerConfiguration) {
            maximumInflightMessages = configuration.maximumInflightMessages
            maximumPacketSize = configuration.maximumPacketSize
            maximumTopicLevels = configuration.maximumTopicLevels
            receiveMaximum = configuration.receiveMaximum
            topicAliasMaximum = configuration.topicAliasMaximum
            maximumKeepAlive = configuration.maximumKeepAlive
        }
    }

    let limits: Limits
    private(set) var phase = Phase.awaitingConnect
    /// 3.1.1 until a CONNECT says otherwise: a refusal before it is read by every version.
    private(set) var version = MQTTProtocolVersion.v311
    /// The CONNECT being authenticated; dropped once decided, so that an idle connection keeps
    /// neither its password nor its Will's payload twice.
    private var requestBox: Boxed<ConnectRequest>?
    private var request: ConnectRequest? { requestBox?.value }
    private var pending: [MQTTPacket] = []
    private(set) var sessionExpiryInterval: UInt32 = 0
    private var willBox: Boxed<MQTTPacket.Will>?
    /// Published when the connection ends, unless a normal DISCONNECT discarded it.
    var will: MQTTPacket.Will? { willBox?.value }
    private var inboundTopicAliases: [UInt16: String] = [:]
    var outboundTopicAliases = OutboundTopicAliases(maximum: 0)
    /// The client's Maximum Packet Size: larger messages are not sent to it. [MQTT-3.1.2-24]
    private(set) var clientMaximumPacketSize = Int.max
    /// The enhanced authentication method of this connection, fixed at CONNECT. [MQTT-4.12.0-5]
    private(set) var authenticationMethod: String?
    /// A challenge went out and the client's AUTH 0x18 is due.
    private var awaitingClientAuthentication = false
    private(set) var reauthenticating = false

    init(limits: BrokerConfiguration) { self.limits = Limits(limits) }

    // MARK: Inbound packets

    mutating func receive(_ packet: MQTTPacket) -> Step {
        switch phase {
        case .awaitingConnect:
            guard case .connect(let connect) = packet else { return .close(reason: nil) }  // [MQTT-3.1.0-1]
            return beginConnect(connect)
        case .authenticating where authenticationMethod != nil:
            return receiveDuringExchange(packet)
        case .authenticating:
            pending.append(packet)
            return .hold
        case .connected:
            return receiveConnected(packet)
        case .closed:
            return .ignore
        }
    }

    /// A packet the decoder refused.
    mutating func violated(_ violation: MQTTProtocolViolation) -> Step {
        switch phase {
        case .closed: return .ignore
        case .awaitingConnect:
            // An unknown level gets the 3.1.1 return code 1, which every version reads. [MQTT-3.1.2-2]
            guard case .unsupportedProtocolVersion = violation else { return .close(reason: nil) }
            return refuse(.unsupportedProtocolVersion)
        case .authenticating, .connected:
            return .close(reason: violation.reasonCode)
        }
    }

    private mutating func beginConnect(_ connect: MQTTPacket.Connect) -> Step {
        version = connect.protocolVersion
        var clientID = connect.clientIdentifier
        var assignedIdentifier: String?
        if clientID.isEmpty {
            // 3.1.1 assigns an identifier only to a clean session. [MQTT-3.1.3-8]
            guard version == .v5 || connect.cleanStart else { return refuse(.clientIdentifierNotValid) }
            clientID = "gatehouse-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
            assignedIdentifier = clientID
        }
        let expiry: UInt32 =
            version == .v5 ? (connect.properties.sessionExpiryInterval ?? 0) : (connect.cleanStart ? 0 : UInt32.max)
        let receiveMaximum =
            version == .v5 ? Int(connect.properties.receiveMaximum ?? UInt16.max) : limits.maximumInflightMessages
        authenticationMethod = version == .v5 ? connect.properties.authenticationMethod : nil
        let request = ConnectRequest(
            connect: connect, clientID: clientID, assignedIdentifier: assignedIdentifier,
            sessionExpiryInterval: expiry, receiveMaximum: receiveMaximum, authenticationMethod: authenticationMethod,
            authenticationData: connect.properties.authenticationData ?? [])
        requestBox = Boxed(request)
        phase = .authenticating
        return .authenticate(request)
    }

    private mutating func receiveConnected(_ packet: MQTTPacket) -> Step {
        switch packet {
        case .publish(let publish):
            return receivePublish(publish)
        case .puback, .pubrec, .pubrel, .pubcomp, .subscribe, .unsubscribe:
            return .forSession(packet)
        case .pingreq:
            return .reply(.pingresp)
        case .disconnect(let disconnect):
            return receiveDisconnect(disconnect)
        case .connect:
            return .close(reason: .protocolError)  // a second CONNECT [MQTT-3.1.0-2]
        case .auth(let auth):
            return receiveAuth(auth)
        case .connack, .suback, .unsuback, .pingresp:
            return .close(reason: .protocolError)  // server-to-client packets
        }
    }

    /// Before CONNACK of an enhanced authentication only AUTH and DISCONNECT may come. [MQTT-3.1.2-30]
    private mutating func receiveDuringExchange(_ packet: MQTTPacket) -> Step {
        switch packet {
        case .auth(let auth)
        where auth.reasonCode == .continueAuthentication && awaitingClientAuthentication
            && auth.properties.authenticationMethod == authenticationMethod:
            awaitingClientAuthentication = false
            return .continueAuthentication(data: auth.properties.authenticationData ?? [])
        case .disconnect:
            phase = .closed
            return .close(reason: nil)
        default:
            return refuse(.protocolError)
        }
    }

    /// AUTH once connected: 0x19 starts a re-authentication with the CONNECT's method, 0x18
    /// answers its challenge; anything else (or AUTH without enhanced authentication at
    /// CONNECT) is a protocol error. [MQTT-4.12.1-1, MQTT-4.12.1-2]
    private mutating func receiveAuth(_ auth: MQTTPacket.Auth) -> Step {
        guard let method = authenticationMethod, auth.properties.authenticationMethod == method else {
            return .close(reason: .protocolError)
        }
        let data = auth.properties.authenticationData ?? []
        switch auth.reasonCode {
        case .reAuthenticate where !reauthenticating:
            reauthenticating = true
            return .reauthenticate(data: data)
        case .continueAuthentication where reauthenticating && awaitingClientAuthentication:
            awaitingClientAuthentication = false
            return .continueAuthentication(data: data)
        default:
            return .close(reason: .protocolError)
        }
    }

    /// Topic alias: a name sets the alias, an empty name uses it. [MQTT-3.3.2-12]
    private mutating func receivePublish(_ publish: MQTTPacket.Publish) -> Step {
        guard let alias = publish.properties.topicAlias else { return .publish(publish, topic: publish.topicName) }
        // 0 is never an alias, nor is anything above what CONNACK allowed. [MQTT-3.3.2-8, 3.3.2-9]
        guard alias > 0, alias <= limits.topicAliasMaximum else { return .close(reason: .topicAliasInvalid) }
        if publish.topicName.isEmpty {
            guard let known = inboundTopicAliases[alias] else { return .close(reason: .protocolError) }
            return .publish(publish, topic: known)
        }
        inboundTopicAliases[alias] = publish.topicName
        return .publish(publish, topic: publish.topicName)
    }

    private mutating func receiveDisconnect(_ disconnect: MQTTPacket.Disconnect) -> Step {
        let expiry = disconnect.properties.sessionExpiryInterval
        if let expiry {
            // A session that was to end with the connection cannot be made to outlive it. [MQTT-3.14.2-2]
            if sessionExpiryInterval == 0 && expiry != 0 { return .close(reason: .protocolError) }
            sessionExpiryInterval = expiry
        }
        // A normal DISCONNECT discards the Will; 0x04 asks for it. [MQTT-3.1.2-10]
        if disconnect.reasonCode != .disconnectWithWillMessage { willBox = nil }
        return .disconnect(sessionExpiryInterval: expiry)
    }

    // MARK: The end of authentication

    /// The same answer whatever was wrong: a client must not learn which part failed.
    mutating func authenticationRefused() -> MQTTPacket {
        let connect = request?.connect
        let code: MQTTReasonCode =
            authenticationMethod == nil && (connect?.username != nil || connect?.password != nil)
            ? .badUserNameOrPassword : .notAuthorized
        return refusal(code)
    }

    /// The CONNECT named an authentication method the broker does not offer.
    mutating func methodRefused() -> MQTTPacket { refusal(.badAuthenticationMethod) }

    /// The AUTH 0x18 that carries an authenticator's challenge; the client's answer is due.
    mutating func challenge(_ data: [UInt8]) -> MQTTPacket {
        awaitingClientAuthentication = true
        return .auth(.init(reasonCode: .continueAuthentication, properties: authenticationProperties(data)))
    }

    /// A re-authentication succeeded: the AUTH 0x00 that says so.
    mutating func reauthenticated(data: [UInt8]?) -> MQTTPacket {
        reauthenticating = false
        awaitingClientAuthentication = false
        return .auth(.init(reasonCode: .success, properties: authenticationProperties(data)))
    }

    private func authenticationProperties(_ data: [UInt8]?) -> MQTTProperties {
        var properties: [MQTTProperty] = authenticationMethod.map { [.authenticationMethod($0)] } ?? []
        if let data { properties.append(.authenticationData(data)) }
        return MQTTProperties(properties)
    }

    /// The client identifier's session belongs to another identity.
    mutating func sessionRefused() -> MQTTPacket { refusal(.notAuthorized) }

    /// A connection limit is full. [CONNACK 0x97; 3.1.1 return code 3]
    mutating func quotaRefused() -> MQTTPacket { refusal(.quotaExceeded) }

    /// The CONNECT is accepted and its session opened (`sessionPresent`: it existed before).
    mutating func accepted(sessionPresent: Bool, authenticationData: [UInt8]? = nil) -> Accepted {
        guard phase == .authenticating, let request else {
            preconditionFailure("accepted(sessionPresent:) outside authentication")
        }
        let connect = request.connect
        phase = .connected
        sessionExpiryInterval = request.sessionExpiryInterval
        willBox = connect.will.map(Boxed.init)
        clientMaximumPacketSize = Int(connect.properties.maximumPacketSize ?? UInt32.max)
        outboundTopicAliases = OutboundTopicAliases(
            maximum: version == .v5 ? connect.properties.topicAliasMaximum ?? 0 : 0)
        var properties: [MQTTProperty] = []
        if version == .v5 {
            if let assigned = request.assignedIdentifier { properties.append(.assignedClientIdentifier(assigned)) }
            properties += [
                .receiveMaximum(limits.receiveMaximum),
                .topicAliasMaximum(limits.topicAliasMaximum),
                .maximumPacketSize(UInt32(limits.maximumPacketSize)),
                .retainAvailable(1),
                .wildcardSubscriptionAvailable(1),
                .subscriptionIdentifierAvailable(1),
                .sharedSubscriptionAvailable(1),
            ]
            properties += authenticationProperties(authenticationData).items
        }
        // The broker's maximum keep-alive overrides a longer (or disabled) one. [MQTT-3.2.2-21]
        var keepAlive = connect.keepAlive
        let maximum = limits.maximumKeepAlive
        if maximum > 0 && (keepAlive == 0 || keepAlive > maximum) {
            keepAlive = maximum
            if version == .v5 { properties.append(.serverKeepAlive(maximum)) }
        }
        let connack = MQTTPacket.connack(
            .init(
                sessionPresent: sessionPresent && !connect.cleanStart, reasonCode: .success,
                properties: MQTTProperties(properties)))
        defer {
            pending = []
            requestBox = nil
        }
        return Accepted(connack: connack, keepAlive: keepAlive, pending: pending)
    }

    private mutating func refusal(_ code: MQTTReasonCode) -> MQTTPacket {
        phase = .closed
        pending = []
        requestBox = nil
        return .connack(.init(reasonCode: code))
    }

    private mutating func refuse(_ code: MQTTReasonCode) -> Step { .refuse(refusal(code)) }

    // MARK: Answers

    /// The acknowledgement of a PUBLISH decided with `code` (none for QoS 0). 3.1.1 has no way
    /// to say no: it gets a plain acknowledgement and the message is dropped. [MQTT-3.3.5-2]
    func acknowledgement(of publish: MQTTPacket.Publish, code: MQTTReasonCode) -> MQTTPacket? {
        let code = version == .v5 ? code : .success
        switch publish.qos {
        case .atMostOnce: return nil
        case .atLeastOnce: return .puback(.init(packetIdentifier: publish.packetIdentifier, reasonCode: code))
        case .exactlyOnce: return .pubrec(.init(packetIdentifier: publish.packetIdentifier, reasonCode: code))
        }
    }

    /// A PUBLISH the protocol itself refuses, before any ACL: a payload marked UTF-8 that is not,
    /// or more topic levels than the broker takes.
    func refusal(of publish: MQTTPacket.Publish, topic: TopicLevels) -> MQTTReasonCode? {
        if publish.properties.payloadFormatIndicator == 1
            && String(validating: publish.payload.readableBytesView, as: UTF8.self) == nil
        {
            return .payloadFormatInvalid
        }
        return topic.count > limits.maximumTopicLevels ? .topicNameInvalid : nil
    }

    func unsubscribeAcknowledgement(_ unsubscribe: MQTTPacket.Unsubscribe, codes: [MQTTReasonCode]) -> MQTTPacket {
        // 3.1.1's UNSUBACK carries no codes.
        .unsuback(.init(packetIdentifier: unsubscribe.packetIdentifier, reasonCodes: version == .v5 ? codes : []))
    }

    /// The DISCONNECT that ends this connection with `reason`, where there is one to send: only
    /// a connected 5.0 client reads it.
    func disconnectPacket(_ reason: MQTTReasonCode?) -> MQTTPacket? {
        guard let reason, phase == .connected, version == .v5 else { return nil }
        return .disconnect(.init(reasonCode: reason))
    }

    /// The connection is over; returns whether it had been connected (so has a session to let go
    /// and perhaps a Will).
    mutating func end() -> Bool {
        defer { phase = .closed }
        return phase == .connected
    }
}

/// Topic aliases from the broker to a 5.0 client, within the Topic Alias Maximum it announced.
///
/// The first topics delivered take the aliases and keep them for the connection; later topics
/// go out in full. A fleet's subscriber sees a small, stable set of topics, so first come is as
/// good as least-recently-used there, and costs one dictionary lookup per delivery instead of
/// bookkeeping and re-sent topics on every replacement.
struct OutboundTopicAliases {
    let maximum: UInt16
    private var aliases: [String: UInt16] = [:]

    init(maximum: UInt16) { self.maximum = maximum }

    var count: Int { aliases.count }

    /// The alias to send `topic` with, and whether this packet introduces it (and so must carry
    /// the topic too); nil when the client takes no aliases or all are taken by other topics.
    func alias(for topic: String) -> (alias: UInt16, isNew: Bool)? {
        guard maximum > 0 else { return nil }
        if let known = aliases[topic] { return (known, false) }
        guard aliases.count < Int(maximum) else { return nil }
        return (UInt16(aliases.count + 1), true)
    }

    mutating func assign(_ alias: UInt16, to topic: String) {
        aliases[topic] = alias
    }
}
