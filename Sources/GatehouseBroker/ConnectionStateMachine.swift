public import MQTTCore

/// The protocol life of one connection, kept apart from channels so that it can be tested
/// without sockets: the handler feeds it events and performs the `Action`s it returns.
///
/// Sessions arrive with the broker core; until then every valid CONNECT is refused with
/// Server unavailable (5.0 0x88, 3.1.1 return code 3), and every bad one gets the answer
/// the spec asks for.
public struct ConnectionStateMachine: Sendable {
    enum State: Sendable, Hashable {
        case awaitingConnect
        case closed
    }

    public enum Action: Sendable, Equatable {
        case none
        /// Write the packet, encoded in that protocol version, then close.
        case sendAndClose(MQTTPacket, MQTTProtocolVersion)
        case close
    }

    private(set) var state: State = .awaitingConnect

    public init() {}

    public mutating func packetReceived(_ packet: MQTTPacket) -> Action {
        guard case .awaitingConnect = state else { return .none }
        state = .closed
        guard case .connect(let connect) = packet else { return .close }  // [MQTT-3.1.0-1]
        let refusal = MQTTPacket.connack(.init(sessionPresent: false, reasonCode: .serverUnavailable))
        return .sendAndClose(refusal, connect.protocolVersion)
    }

    /// The decoder refused the input. Before CONNECT only an unsupported protocol level is
    /// answered (with the 3.1.1 return code 1, which every client version understands);
    /// anything else closes the connection. [MQTT-3.1.2-2], [MQTT-4.8.0-1]
    public mutating func decodingFailed(_ violation: MQTTProtocolViolation) -> Action {
        guard case .awaitingConnect = state else { return .none }
        state = .closed
        if case .unsupportedProtocolVersion = violation {
            return .sendAndClose(.connack(.init(reasonCode: .unsupportedProtocolVersion)), .v311)
        }
        return .close
    }

    /// No CONNECT within the connect timeout: close without a word.
    public mutating func connectTimeoutElapsed() -> Action {
        guard case .awaitingConnect = state else { return .none }
        state = .closed
        return .close
    }

    public mutating func connectionClosed() {
        state = .closed
    }
}
