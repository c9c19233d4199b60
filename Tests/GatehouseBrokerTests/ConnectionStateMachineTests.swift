import GatehouseBroker
import MQTTCore
import NIOCore
import Testing

@Suite("connection state machine")
struct ConnectionStateMachineTests {
    @Test("a CONNECT is answered in its own protocol version", arguments: MQTTProtocolVersion.allCases)
    func connectRefused(version: MQTTProtocolVersion) {
        var machine = ConnectionStateMachine()
        let action = machine.packetReceived(.connect(.init(protocolVersion: version, clientIdentifier: "c")))
        #expect(action == .sendAndClose(.connack(.init(reasonCode: .serverUnavailable)), version))
        // Whatever follows on the closing connection is ignored.
        #expect(machine.packetReceived(.pingreq) == .none)
        #expect(machine.connectTimeoutElapsed() == .none)
    }

    @Test("a first packet other than CONNECT closes the connection")
    func firstPacketNotConnect() {
        var machine = ConnectionStateMachine()
        #expect(machine.packetReceived(.pingreq) == .close)
    }

    @Test("an unsupported protocol level gets the 3.1.1 return code 1")
    func unsupportedLevel() {
        var machine = ConnectionStateMachine()
        #expect(
            machine.decodingFailed(.unsupportedProtocolVersion(3))
                == .sendAndClose(.connack(.init(reasonCode: .unsupportedProtocolVersion)), .v311))
    }

    @Test("other violations before CONNECT close without an answer")
    func violationCloses() {
        var machine = ConnectionStateMachine()
        #expect(machine.decodingFailed(.malformedUTF8String) == .close)
        #expect(machine.decodingFailed(.malformedUTF8String) == .none)
    }

    @Test("the connect timeout closes a silent connection once")
    func connectTimeout() {
        var machine = ConnectionStateMachine()
        #expect(machine.connectTimeoutElapsed() == .close)
        #expect(machine.connectTimeoutElapsed() == .none)
    }
}
