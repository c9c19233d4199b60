"""A 5.0 client that is still writing when the broker ends its connection must read the
DISCONNECT reason, not a reset. Raw socket, packets built by hand (mqtt_wire.py).

Usage: disconnect_drain.py PORT. Prints 'ok' and exits 0, or says what went wrong and exits 1.
"""

import socket
import sys
import time

from mqtt_wire import packet, utf8

PORT = int(sys.argv[1])


# CONNECT: protocol name, level 5, clean start, keep-alive 30, no properties, client id.
connect = packet(0x10, utf8("MQTT") + bytes([5, 0x02]) + (30).to_bytes(2, "big") + b"\x00" + utf8("drain-check"))
# PUBLISH QoS 1 with Topic Alias 0, which no client may send [MQTT-3.3.2-8]: the broker ends the
# connection with DISCONNECT 0x94.
publish = packet(0x32, utf8("t") + (1).to_bytes(2, "big") + bytes([3, 0x23, 0, 0]) + b"m")
pingreq = bytes([0xC0, 0x00])

client = socket.create_connection(("127.0.0.1", PORT), timeout=5)
client.sendall(connect)
connack = client.recv(64)
if not connack.startswith(b"\x20") or connack[3] != 0:
    sys.exit(f"no successful CONNACK: {connack!r}")

client.sendall(publish + pingreq * 500)
client.setblocking(False)
received, send_error, deadline = b"", None, time.time() + 0.3
while time.time() < deadline:
    # Like a client with PUBRELs still to write, keep writing while the DISCONNECT is on its way.
    try:
        client.send(pingreq)
    except BlockingIOError:
        pass
    except OSError as error:
        send_error = error
        break
    try:
        chunk = client.recv(4096)
        if not chunk:
            break
        received += chunk
    except BlockingIOError:
        pass
    except OSError as error:
        send_error = error
        break
    time.sleep(0.01)

position = received.find(b"\xe0")
if position < 0 or len(received) < position + 3 or received[position + 2] != 0x94:
    sys.exit(f"no DISCONNECT 0x94 was read (error: {send_error}); read {received[:64]!r}")
if send_error is not None:
    sys.exit(f"the client's writes failed within 300 ms of the DISCONNECT: {send_error}")
print("ok")
