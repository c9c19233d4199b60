#!/usr/bin/env bash
# A fleet on one machine: CONNS authenticated connections (API tokens), half of them devices
# subscribed each to its own commands topic, half operators publishing to one device each, RATE
# messages per second in all, QoS 1, through the default ACL. Reports whether every client
# connected and every message arrived, the broker's RSS and CPU, and delivery latency.
#
# Usage: Benchmarks/memory/fleet.sh
# Environment: CONNS [100000, or what the file-descriptor limit allows], RATE [5000] msg/s,
#   DURATION [30] s, GATEHOUSE_BINARY [.build/release/gatehouse]
# Each of the three processes (broker, devices, operators) needs a descriptor per connection,
# so CONNS is capped at the hard limit (`ulimit -Hn`) less some room; the broker raises its own
# soft limit. Clients connect from 127.0.0.2 onwards, one address per 25,000 connections, as one
# source address reaches one listener from at most one port range (ip_local_port_range).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BINARY=${GATEHOUSE_BINARY:-$ROOT/.build/release/gatehouse}
RATE=${RATE:-5000}
DURATION=${DURATION:-30}
HARD=$(ulimit -Hn)
[ "$HARD" = unlimited ] && HARD=1048576
ALLOWED=$(((HARD - 1000) / 2 * 2))
CONNS=${CONNS:-$((ALLOWED < 100000 ? ALLOWED : 100000))}
if [ "$CONNS" -gt "$ALLOWED" ]; then
    echo "CONNS=$CONNS needs more file descriptors than the hard limit $HARD allows (at most $ALLOWED)" >&2
    exit 2
fi
ulimit -n "$HARD"
HALF=$((CONNS / 2))
WORK=$(mktemp -d -t gatehouse-fleet.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$BINARY" ] || { echo "no broker binary at $BINARY (swift build -c release)" >&2; exit 2; }
sources() { # count first -> comma-separated loopback addresses from 127.0.0.first, 25,000 connections each
    local addresses=() i
    for i in $(seq "$2" $(($2 + ($1 - 1) / 25000))); do addresses+=("127.0.0.$i"); done
    local IFS=,
    echo "${addresses[*]}"
}
DEVICE_SOURCES=$(sources "$HALF" 2)
OPERATOR_SOURCES=$(sources "$HALF" $((3 + (HALF - 1) / 25000)))

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
DATA="$WORK/data"
mkdir -p "$DATA"
iam() { "$BINARY" iam --data-dir "$DATA" "$@"; }
iam tenant add fleet >/dev/null
iam identity add devices --tenant fleet --kind device --role device --client-ids 'fleet-sub-*' >/dev/null
iam identity add operators --tenant fleet --kind service --role operator --client-ids 'fleet-pub-*' >/dev/null
DEVICE_TOKEN=$(iam token create devices 2>/dev/null)
OPERATOR_TOKEN=$(iam token create operators 2>/dev/null)

"$BINARY" serve --data-dir "$DATA" --listen "mqtt://127.0.0.1:$PORT" --sys-interval 0 --log-level notice \
    >"$WORK/broker.log" 2>&1 &
BROKER=$!
PIDS+=("$BROKER")
for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$BROKER/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$BROKER/stat"; }
RSS_BEFORE=$(rss_kb)

# Devices: fleet-sub-N subscribes to its own commands topic. Operators: fleet-pub-N sends
# EACH messages to device N, one every INTERVAL ms, so that RATE messages a second reach HALF
# devices for about DURATION seconds; each device stops once it has its EACH.
INTERVAL=$(awk -v n="$HALF" -v r="$RATE" 'BEGIN { printf "%.3f", n * 1000 / r }')
EACH=$(((RATE * DURATION + HALF - 1) / HALF))
common=(-p "$PORT" -c "$HALF" -q 1 -V 5 -k 300 --prefix fleet --connect-concurrency 128 --json)
STARTED=$(date +%s.%N)
"$BINARY" bench sub "${common[@]}" -u devices -P "$DEVICE_TOKEN" --bind "$DEVICE_SOURCES" \
    --filter 'tenants/fleet/devices/%c/commands/in' -L "$EACH" -d 0 >"$WORK/devices.json" 2>"$WORK/devices.log" &
DEVICES=$!
PIDS+=("$DEVICES")
# The devices are all subscribed once their progress line first appears.
for _ in $(seq 1 600); do grep -q . "$WORK/devices.log" && break; sleep 0.5; done
CONNECTED_DEVICES=$(date +%s.%N)
"$BINARY" bench pub "${common[@]}" -u operators -P "$OPERATOR_TOKEN" --bind "$OPERATOR_SOURCES" \
    -t 'tenants/fleet/devices/fleet-sub-%i/commands/in' -I "$INTERVAL" -L "$EACH" -d 0 \
    >"$WORK/operators.json" 2>"$WORK/operators.log" &
OPERATORS=$!
PIDS+=("$OPERATORS")
sleep 5
RSS_CONNECTED=$(rss_kb)
TICKS_BEFORE=$(cpu_ticks)
SECONDS_BEFORE=$(date +%s.%N)
OPERATOR_STATUS=0
wait "$OPERATORS" || OPERATOR_STATUS=$?
TICKS_AFTER=$(cpu_ticks)
SECONDS_AFTER=$(date +%s.%N)
RSS_END=$(rss_kb)
# The devices stop by themselves once each has its messages; a minute more at most.
for _ in $(seq 1 600); do kill -0 "$DEVICES" 2>/dev/null || break; sleep 0.1; done
kill -INT "$DEVICES" 2>/dev/null || true
DEVICE_STATUS=0
wait "$DEVICES" || DEVICE_STATUS=$?

python3 - "$WORK" "$CONNS" "$RATE" "$RSS_BEFORE" "$RSS_CONNECTED" "$RSS_END" "$TICKS_BEFORE" "$TICKS_AFTER" \
    "$SECONDS_BEFORE" "$SECONDS_AFTER" "$STARTED" "$CONNECTED_DEVICES" "$OPERATOR_STATUS" "$DEVICE_STATUS" <<'EOF'
import json, os, sys
work, conns, rate, rss0, rss1, rss2, t0, t1, s0, s1, started, devices_up, pub_status, sub_status = sys.argv[1:]
def load(name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}
pub, sub = load("operators.json"), load("devices.json")
ticks = os.sysconf("SC_CLK_TCK")
cpu = (int(t1) - int(t0)) / ticks / (float(s1) - float(s0)) * 100
print(f"connections      {conns} ({pub.get('clients', '?')} operators + {sub.get('clients', '?')} devices connected)")
print(f"devices up in    {float(devices_up) - float(started):.1f} s")
print(f"messages         {pub.get('total_published', '?')} sent ({pub.get('acknowledged', '?')} acknowledged),"
      f" {sub.get('total_received', '?')} received, at {rate} msg/s asked ({pub.get('publish_rate', 0):.0f} measured)")
print(f"broker RSS       {int(rss0) // 1024} MiB idle, {int(rss1) // 1024} MiB connected, {int(rss2) // 1024} MiB at the end"
      f" ({(int(rss1) - int(rss0)) * 1024 // max(1, int(conns))} B per connection)")
print(f"broker CPU       {cpu:.0f}% of one core while the messages flowed")
latency = sub.get("latency_ms", {}).get("delivery", {})
print("delivery latency " + ", ".join(f"{k} {latency[k]} ms" for k in ("p50", "p99", "max") if k in latency))
print(f"problems         operators {pub.get('problems', '?')}, devices {sub.get('problems', '?')}")
print(f"exit status      operators {pub_status}, devices {sub_status}")
EOF
