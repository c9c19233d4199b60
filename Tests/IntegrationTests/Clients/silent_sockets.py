"""Thousands of TCP connections that never send CONNECT, then a real client: it must connect and
publish within a second, and the broker must have closed the oldest silent ones past its limit.

Usage: silent_sockets.py MQTT_PORT COUNT PENDING_LIMIT
"""

import resource
import socket
import sys
import time

import paho.mqtt.client as mqtt

from flow_support import check

PORT, COUNT, LIMIT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
count = min(COUNT, hard - 256)
# paho waits on its sockets with select(), which cannot see descriptors above 1,023: make the
# client (and its wake-up socket pair) now, and keep low descriptors free for its connection.
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="real-device", protocol=mqtt.MQTTv5)
reserved = [open("/dev/null") for _ in range(8)]
print(f"opening {count} silent connections (descriptor limit {hard})", flush=True)
silent = []
for _ in range(count):
    silent.append(socket.create_connection(("127.0.0.1", PORT)))
time.sleep(0.5)

for file in reserved:
    file.close()
started = time.monotonic()
client.connect("127.0.0.1", PORT)
client.loop_start()
info = client.publish("devices/real/telemetry", b"42", qos=1)
info.wait_for_publish(3)
elapsed = time.monotonic() - started
check(info.is_published(), "the real client's QoS 1 message was acknowledged")
check(elapsed < 1.0, f"it connected and published in {elapsed:.3f} s (under 1 s)")
client.disconnect()
client.loop_stop()

closed = 0
for connection in silent:
    connection.setblocking(False)
    try:
        if connection.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except ConnectionResetError:
        closed += 1
expected = count - LIMIT
check(closed >= expected, f"the broker closed the oldest {closed} (at least {expected}) of the silent connections")
for connection in silent:
    connection.close()
print("done")
