"""MQTT over WebSocket checked with paho-mqtt 2.x and raw sockets against a running broker.

Usage: websocket_checks.py CHECK WS_PORT WSS_PORT CAFILE. Prints "ok" and exits 0 when the
check holds; otherwise prints what differed and exits 1.
"""
import base64
import os
import queue
import socket
import ssl
import struct
import sys
import uuid

import paho.mqtt.client as mqtt

CHECK, WS_PORT, WSS_PORT, CAFILE = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def expect(condition, message):
    if not condition:
        print(f"FAILED: {message}")
        sys.exit(1)


def client(port, secure, version=mqtt.MQTTv311):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ws-{uuid.uuid4().hex[:8]}",
                    transport="websockets", protocol=version)
    if secure:
        c.tls_set(ca_certs=CAFILE)
    c.inbox = queue.Queue()
    c.connack = queue.Queue()
    c.subscribed = queue.Queue()
    c.on_message = lambda _c, _u, message: c.inbox.put(message)
    c.on_connect = lambda _c, _u, flags, reason, props: c.connack.put(reason)
    c.on_subscribe = lambda _c, _u, mid, reasons, props: c.subscribed.put(reasons)
    c.connect("localhost" if secure else "127.0.0.1", port, keepalive=30)
    c.loop_start()
    reason = c.connack.get(timeout=5)
    expect(not reason.is_failure, f"CONNACK {reason}")
    return c


def large_messages():
    """ws and wss carry messages far larger than one 16 KiB WebSocket frame, both ways."""
    subscriber = client(WS_PORT, secure=False, version=mqtt.MQTTv5)
    subscriber.subscribe("big/#", qos=1)
    subscriber.subscribed.get(timeout=5)
    publisher = client(WSS_PORT, secure=True)
    payloads = {f"big/{size}": os.urandom(size) for size in (10, 70_000, 300_000)}
    for topic, payload in payloads.items():
        publisher.publish(topic, payload, qos=1).wait_for_publish(5)
    for _ in payloads:
        message = subscriber.inbox.get(timeout=10)
        expect(message.payload == payloads[message.topic], f"{message.topic}: payload differs")
    publisher.disconnect()
    subscriber.disconnect()


def handshake(path="/mqtt", protocol="mqtt", secure=False):
    """A raw WebSocket upgrade; returns the socket and the HTTP status line."""
    raw = socket.create_connection(("127.0.0.1", WSS_PORT if secure else WS_PORT), timeout=5)
    if secure:
        context = ssl.create_default_context(cafile=CAFILE)
        raw = context.wrap_socket(raw, server_hostname="localhost")
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
    if protocol:
        request += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    raw.sendall((request + "\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = raw.recv(4096)
        if not chunk:
            break
        response += chunk
    return raw, response.split(b"\r\n", 1)[0].decode()


def frame(opcode, payload, fin=True):
    """A masked client frame."""
    mask = os.urandom(4)
    header = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frames(sock):
    """Every frame until the server closes the connection, as (opcode, payload)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    frames = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if length == 126:
            length, offset = struct.unpack("!H", data[2:4])[0], 4
        frames.append((opcode, data[offset:offset + length]))
        data = data[offset + length:]
    return frames


CONNECT = bytes([0x10, 0x0F, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x03]) + b"raw"
DISCONNECT = bytes([0xE0, 0x00])


def split_packets():
    """A CONNECT split over three frames (binary + continuations), then PINGREQ and DISCONNECT in one frame."""
    for secure in (False, True):
        sock, status = handshake(secure=secure)
        expect(status.startswith("HTTP/1.1 101"), f"upgrade: {status}")
        sock.sendall(frame(0x2, CONNECT[:3], fin=False) + frame(0x0, CONNECT[3:9], fin=False)
                     + frame(0x0, CONNECT[9:]))
        sock.sendall(frame(0x9, b"hi") + frame(0x2, bytes([0xC0, 0x00]) + DISCONNECT))
        frames = read_frames(sock)
        binary = b"".join(payload for opcode, payload in frames if opcode == 0x2)
        expect(binary.startswith(bytes([0x20, 0x02, 0x00, 0x00])), f"no CONNACK in {frames}")
        expect(bytes([0xD0, 0x00]) in binary, f"no PINGRESP in {frames}")
        expect((0xA, b"hi") in frames, f"ping not answered with pong: {frames}")
        expect(frames[-1][0] == 0x8, f"no close frame at the end: {frames}")


def refusals():
    """Wrong path 404, wrong or missing subprotocol 400, text frame closes with 1003."""
    _, status = handshake(path="/other")
    expect(" 404 " in status, f"wrong path: {status}")
    _, status = handshake(protocol="chat")
    expect(" 400 " in status, f"wrong subprotocol: {status}")
    _, status = handshake(protocol=None, secure=True)
    expect(" 400 " in status, f"no subprotocol: {status}")
    sock, status = handshake()
    expect(status.startswith("HTTP/1.1 101"), f"upgrade: {status}")
    sock.sendall(frame(0x1, CONNECT))
    frames = read_frames(sock)
    expect(frames and frames[-1][0] == 0x8 and frames[-1][1][:2] == struct.pack("!H", 1003),
           f"text frame not refused with close 1003: {frames}")


{"large-messages": large_messages, "split-packets": split_packets, "refusals": refusals}[CHECK]()
print("ok")
