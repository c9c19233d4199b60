import NIOCore
import Testing

@testable import MQTTCore

/// Byte sequences from the MQTT 3.1.1 and 5.0 specifications' examples and from captures of
/// real clients (mosquitto_pub/mosquitto_sub 2.0.11, paho-mqtt 2.2.0), decoded to the values
/// they must mean.
@Suite("golden bytes")
struct GoldenBytesTests {
    @Test("variable byte integers: the table of §1.5.5")
    func variableByteIntegers() throws {
        let table: [(Int, String)] = [
            (0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"), (16_384, "808001"),
            (2_097_151, "ffff7f"), (2_097_152, "80808001"), (268_435_455, "ffffff7f"),
        ]
        for (value, hex) in table {
            var buffer = ByteBuffer()
            try buffer.writeMQTTVariableByteInteger(value)
            #expect(buffer.hexString == hex)
            let decoded = try MQTTVariableByteInteger.peek(in: ByteBuffer(hex: hex), at: 0)
            #expect(decoded?.value == value)
            #expect(decoded?.length == hex.count / 2)
            #expect(MQTTVariableByteInteger.encodedLength(of: value) == hex.count / 2)
        }
    }

    @Test("UTF-8 string example of §1.5.4: A + U+2A6D4")
    func utf8Example() throws {
        let packets = try parseAll("30 07  00 05 41 f0 aa 9b 94", version: .v311)
        #expect(packets == [.publish(.init(topicName: "A\u{2A6D4}", payload: ByteBuffer()))])
    }

    @Test("3.1.1 CONNECT variable header example of §3.1.2.10 (flags 0xCE, keep alive 10)")
    func connectExample311() throws {
        let hex = """
            10 20  00 04 4d 51 54 54  04  ce  00 0a
            00 02 63 31   00 01 77   00 02 62 79   00 04 75 73 65 72   00 03 70 77 64
            """
        let packets = try parseAll(hex)
        let expected = MQTTPacket.Connect(
            protocolVersion: .v311, clientIdentifier: "c1", cleanStart: true, keepAlive: 10,
            username: "user", password: Array("pwd".utf8),
            will: .init(topic: "w", payload: ByteBuffer(string: "by"), qos: .atLeastOnce, retain: false))
        #expect(packets == [.connect(expected)])
    }

    @Test("5.0 CONNECT variable header example of §3.1.2.11 (flags 0xCE, Session Expiry 10)")
    func connectExample5() throws {
        let hex = """
            10 27  00 04 4d 51 54 54  05  ce  00 0a  05 11 00 00 00 0a
            00 02 63 31   00   00 01 77   00 02 62 79   00 04 75 73 65 72   00 03 70 77 64
            """
        let packets = try parseAll(hex)
        let expected = MQTTPacket.Connect(
            protocolVersion: .v5, clientIdentifier: "c1", cleanStart: true, keepAlive: 10,
            username: "user", password: Array("pwd".utf8),
            will: .init(topic: "w", payload: ByteBuffer(string: "by"), qos: .atLeastOnce, retain: false),
            properties: [.sessionExpiryInterval(10)])
        #expect(packets == [.connect(expected)])
    }

    @Test("3.1.1 examples: PUBLISH §3.3.2.3, SUBSCRIBE §3.8.3.2, SUBACK §3.9.3, UNSUBSCRIBE §3.10.3")
    func examples311() throws {
        let hex = """
            32 07  00 03 61 2f 62  00 0a
            82 0e  00 0b  00 03 61 2f 62 01  00 03 63 2f 64 02
            90 05  00 0b  00 02 80
            a2 0c  00 0c  00 03 61 2f 62  00 03 63 2f 64
            c0 00  d0 00  e0 00
            """
        let packets = try parseAll(hex, version: .v311)
        #expect(
            packets == [
                .publish(.init(topicName: "a/b", payload: ByteBuffer(), qos: .atLeastOnce, packetIdentifier: 10)),
                .subscribe(
                    .init(
                        packetIdentifier: 11,
                        subscriptions: [
                            .init(topicFilter: "a/b", options: .init(qos: .atLeastOnce)),
                            .init(topicFilter: "c/d", options: .init(qos: .exactlyOnce)),
                        ])),
                .suback(.init(packetIdentifier: 11, reasonCodes: [.grantedQoS0, .grantedQoS2, .unspecifiedError])),
                .unsubscribe(.init(packetIdentifier: 12, topicFilters: ["a/b", "c/d"])),
                .pingreq, .pingresp, .disconnect(.init()),
            ])
    }

    @Test("mosquitto_pub -V mqttv5 with connect and publish properties")
    func mosquittoPublishV5() throws {
        let hex = """
            102c00044d51545405c2003c08110000003c21001400086361702d707562350005616c6963650006736563726574
            3236000a73656e736f72732f7431000122260004756e6974000763656c73697573020000001e03000a746578742f706c61696e68656c6c6f
            e000
            """
        let packets = try parseAll(hex)
        #expect(packets.count == 3)
        #expect(
            packets.first
                == .connect(
                    .init(
                        protocolVersion: .v5, clientIdentifier: "cap-pub5", cleanStart: true, keepAlive: 60,
                        username: "alice", password: Array("secret".utf8),
                        properties: [.sessionExpiryInterval(60), .receiveMaximum(20)])))
        #expect(
            packets.dropFirst().first
                == .publish(
                    .init(
                        topicName: "sensors/t1", payload: ByteBuffer(string: "hello"), qos: .atLeastOnce,
                        packetIdentifier: 1,
                        properties: [
                            .userProperty(name: "unit", value: "celsius"), .messageExpiryInterval(30),
                            .contentType("text/plain"),
                        ])))
        #expect(packets.last == .disconnect(.init(reasonCode: .normalDisconnection)))
    }

    @Test("mosquitto_pub -V mqttv311 -q 2 -r: QoS 2 flow and retain")
    func mosquittoPublishV311() throws {
        let packets = try parseAll("101400044d5154540402003c00086361702d70756233 35090003612f6200016869 62020001 e000")
        #expect(
            packets == [
                .connect(.init(protocolVersion: .v311, clientIdentifier: "cap-pub3", cleanStart: true, keepAlive: 60)),
                .publish(
                    .init(
                        topicName: "a/b", payload: ByteBuffer(string: "hi"), qos: .exactlyOnce, retain: true,
                        packetIdentifier: 1)),
                .pubrel(.init(packetIdentifier: 1)),
                .disconnect(.init()),
            ])
    }

    @Test("mosquitto_sub -V mqttv5 with a subscription identifier, and DISCONNECT 0x04 on timeout")
    func mosquittoSubscribeV5() throws {
        let hex = """
            101800044d5154540502003c0321000100086361702d73756235
            82110001020b07000973656e736f72732f2301
            e00104
            """
        let packets = try parseAll(hex)
        #expect(
            packets == [
                .connect(
                    .init(
                        protocolVersion: .v5, clientIdentifier: "cap-sub5", cleanStart: true, keepAlive: 60,
                        properties: [.receiveMaximum(1)])),
                .subscribe(
                    .init(
                        packetIdentifier: 1,
                        subscriptions: [.init(topicFilter: "sensors/#", options: .init(qos: .atLeastOnce))],
                        properties: [.subscriptionIdentifier(7)])),
                .disconnect(.init(reasonCode: .disconnectWithWillMessage)),
            ])
    }

    @Test("mosquitto_sub -V mqttv311 with a retained QoS 1 will")
    func mosquittoWillV311() throws {
        let hex = """
            102700044d515454042e001e00096361702d77696c6c33000a7374617475732f6361700004676f6e65
            820a00010005782f2b2f7900
            """
        let packets = try parseAll(hex)
        #expect(
            packets == [
                .connect(
                    .init(
                        protocolVersion: .v311, clientIdentifier: "cap-will3", cleanStart: true, keepAlive: 30,
                        will: .init(
                            topic: "status/cap", payload: ByteBuffer(string: "gone"), qos: .atLeastOnce, retain: true)
                    )),
                .subscribe(.init(packetIdentifier: 1, subscriptions: [.init(topicFilter: "x/+/y")])),
            ])
    }

    @Test("paho-mqtt 2.2 (MQTTv5): will properties, subscription options, topic alias")
    func pahoV5() throws {
        let hex = """
            104500044d515454050e002d0a1100000e10170022000a00096361702d7061686f350e010118000000052600016b000176000b7374617475732f7061686f00076f66666c696e65
            820b0001000005636d642f2b2e
            301d0006646174612f78120800077265706c792f31090002010223000300ff
            e000
            """
        let packets = try parseAll(hex)
        #expect(
            packets == [
                .connect(
                    .init(
                        protocolVersion: .v5, clientIdentifier: "cap-paho5", cleanStart: true, keepAlive: 45,
                        will: .init(
                            topic: "status/paho", payload: ByteBuffer(string: "offline"), qos: .atLeastOnce,
                            properties: [
                                .payloadFormatIndicator(1), .willDelayInterval(5), .userProperty(name: "k", value: "v"),
                            ]),
                        properties: [
                            .sessionExpiryInterval(3600), .requestProblemInformation(0), .topicAliasMaximum(10),
                        ])),
                .subscribe(
                    .init(
                        packetIdentifier: 1,
                        subscriptions: [
                            .init(
                                topicFilter: "cmd/+",
                                options: .init(
                                    qos: .exactlyOnce, noLocal: true, retainAsPublished: true,
                                    retainHandling: .doNotSend))
                        ])),
                .publish(
                    .init(
                        topicName: "data/x", payload: ByteBuffer(bytes: [0x00, 0xFF]),
                        properties: [.responseTopic("reply/1"), .correlationData([1, 2]), .topicAlias(3)])),
                .disconnect(.init()),
            ])
    }

    @Test("re-encoding the captured packets gives the captured bytes")
    func reencodeCaptures() throws {
        for (hex, version) in [
            (
                "3236000a73656e736f72732f7431000122260004756e6974000763656c73697573020000001e03000a746578742f706c61696e68656c6c6f",
                MQTTProtocolVersion.v5
            ),
            ("820b0001000005636d642f2b2e", .v5),
            ("35090003612f6200016869", .v311),
            ("102700044d515454042e001e00096361702d77696c6c33000a7374617475732f6361700004676f6e65", .v311),
        ] {
            let packets = try parseAll(hex, version: version)
            #expect(try packets.first?.encoded(version: version).hexString == hex)
        }
    }
}
