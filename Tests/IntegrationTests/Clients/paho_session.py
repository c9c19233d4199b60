"""A paho-mqtt client that connects with a user name and password, says so, and reports how
its connection ends. Used to watch the broker end a session when its credential is revoked.

Usage: paho_session.py PORT USERNAME PASSWORD VERSION(311|5)
Prints "connected", then "disconnected <reason>" when the broker ends the connection.
"""
import sys
import threading

import paho.mqtt.client as mqtt

PORT, USERNAME, PASSWORD, VERSION = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ended = threading.Event()

client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{USERNAME}",
    protocol=mqtt.MQTTv5 if VERSION == "5" else mqtt.MQTTv311)
client.username_pw_set(USERNAME, PASSWORD)


def on_connect(_client, _userdata, _flags, reason, _properties):
    print("connected" if not reason.is_failure else f"refused {reason}", flush=True)
    if reason.is_failure:
        ended.set()


def on_disconnect(_client, _userdata, _flags, reason, _properties):
    print(f"disconnected {reason}", flush=True)
    ended.set()


client.on_connect = on_connect
client.on_disconnect = on_disconnect
client.connect("127.0.0.1", PORT, keepalive=60)
client.loop_start()
ended.wait(timeout=60)
client.loop_stop()
