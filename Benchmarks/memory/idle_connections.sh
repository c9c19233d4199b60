#!/usr/bin/env bash
# RSS per idle connection, Gatehouse beside Mosquitto in the same run: plain TCP, TLS with a
# password, and TLS with a client certificate. Each measurement starts a fresh broker and holds
# CONNS idle connections made by ../shared/bench's mqttload (RSS after the hold minus RSS before,
# divided by the count), so both brokers are measured by the same client.
#
# Usage: Benchmarks/memory/idle_connections.sh
# Environment: CONNS [10000] plain connections, TLS_CONNS [CONNS], HOLD [5] seconds,
#   ROUNDS [1], GATEHOUSE_BINARY [.build/release/gatehouse], BENCH_DIR [../shared/bench],
#   KINDS ["plain tls mtls"]
# Prints one line per measurement and a table of bytes per connection with the ratio to Mosquitto.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BINARY=${GATEHOUSE_BINARY:-$ROOT/.build/release/gatehouse}
BENCH_DIR=${BENCH_DIR:-$ROOT/../shared/bench}
CONNS=${CONNS:-10000}
TLS_CONNS=${TLS_CONNS:-$CONNS}
HOLD=${HOLD:-5}
ROUNDS=${ROUNDS:-1}
KINDS=${KINDS:-plain tls mtls}
WORK=$(mktemp -d -t gatehouse-idle.XXXXXX)
BROKER_PID=""
cleanup() {
    [ -n "$BROKER_PID" ] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -x "$BINARY" ] || { echo "no broker binary at $BINARY (swift build -c release)" >&2; exit 2; }
command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 2; }
# The load tool is built in the work folder, so the shared folder stays as it is.
cp "$BENCH_DIR"/mqttload.c "$BENCH_DIR"/Makefile "$BENCH_DIR"/compare.sh "$WORK"/
make -s -C "$WORK" >/dev/null
"$WORK"/compare.sh --make-certs "$WORK/certs" >/dev/null
ulimit -n $((CONNS + TLS_CONNS + 1024)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

PLAIN=$(free_port) TLS=$(free_port) MTLS=$(free_port)

# Gatehouse: one identity with the token and the client certificate mqttload presents.
DATA="$WORK/gatehouse-data"
mkdir -p "$DATA"
cat >"$WORK/gatehouse.yaml" <<EOF
data_dir: $DATA
listeners:
  - mqtt://127.0.0.1:$PLAIN
  - url: mqtts://127.0.0.1:$TLS
    tls: {certificate: $WORK/certs/server.pem, key: $WORK/certs/server.key}
  - url: mqtts://127.0.0.1:$MTLS
    tls:
      certificate: $WORK/certs/server.pem
      key: $WORK/certs/server.key
      client_ca: $WORK/certs/ca.pem
      client_certificates: required
EOF
"$BINARY" iam --data-dir "$DATA" tenant add bench >/dev/null
"$BINARY" iam --data-dir "$DATA" identity add bench --tenant bench --kind user --role device --client-ids "*" >/dev/null
# A token rather than a password: a password's scrypt would make the TLS run measure hashing.
TOKEN=$("$BINARY" iam --data-dir "$DATA" token create bench)
"$BINARY" iam --data-dir "$DATA" cert bind bench --pem "$WORK/certs/client.pem" >/dev/null

cat >"$WORK/mosquitto.conf" <<EOF
per_listener_settings true
user root
log_type error
listener $PLAIN 127.0.0.1
allow_anonymous true
listener $TLS 127.0.0.1
cafile $WORK/certs/ca.pem
certfile $WORK/certs/server.pem
keyfile $WORK/certs/server.key
password_file $WORK/mosquitto.passwd
listener $MTLS 127.0.0.1
cafile $WORK/certs/ca.pem
certfile $WORK/certs/server.pem
keyfile $WORK/certs/server.key
require_certificate true
use_identity_as_username true
EOF
: >"$WORK/mosquitto.passwd"
mosquitto_passwd -b "$WORK/mosquitto.passwd" bench benchpass

start_broker() { # gatehouse|mosquitto
    if [ "$1" = gatehouse ]; then
        "$BINARY" serve --config "$WORK/gatehouse.yaml" --allow-anonymous --sys-interval 0 --log-level warning \
            >"$WORK/gatehouse.log" 2>&1 &
    else
        mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
    fi
    BROKER_PID=$!
    wait_for_port "$PLAIN" && wait_for_port "$TLS" && wait_for_port "$MTLS"
    sleep 1
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

measure() { # broker kind -> bytes per connection
    local arguments
    case "$2" in
        plain) arguments=(-p "$PLAIN" -C "$CONNS" --conc 64) ;;
        tls)
            local password=benchpass
            [ "$1" = gatehouse ] && password=$TOKEN
            arguments=(-p "$TLS" -C "$TLS_CONNS" --conc 16 --tls --cafile "$WORK/certs/ca.pem" -u bench -W "$password")
            ;;
        mtls)
            arguments=(-p "$MTLS" -C "$TLS_CONNS" --conc 16 --tls --cafile "$WORK/certs/ca.pem"
                --cert "$WORK/certs/client.pem" --key "$WORK/certs/client.key")
            ;;
    esac
    start_broker "$1"
    local line
    line=$("$WORK"/mqttload -s conn -H "$HOLD" -k 60 --timeout $((HOLD + 180)) --pid "$BROKER_PID" "${arguments[@]}") || {
        echo "mqttload failed against $1 ($2): $line" >&2
        stop_broker
        return 1
    }
    stop_broker
    echo "$1 $2 $line" >&2
    sed -n 's/.*rss_per_conn_b=\([0-9]*\).*/\1/p' <<<"$line"
}

declare -A RESULT
for round in $(seq 1 "$ROUNDS"); do
    for kind in $KINDS; do
        for broker in gatehouse mosquitto; do
            RESULT[$broker-$kind-$round]=$(measure "$broker" "$kind")
        done
    done
done

printf '\n%-6s %-6s %12s %12s %8s\n' kind round gatehouse mosquitto ratio
for round in $(seq 1 "$ROUNDS"); do
    for kind in $KINDS; do
        g=${RESULT[gatehouse-$kind-$round]} m=${RESULT[mosquitto-$kind-$round]}
        printf '%-6s %-6s %10s B %10s B %7sx\n' "$kind" "$round" "$g" "$m" \
            "$(awk -v g="$g" -v m="$m" 'BEGIN { printf "%.2f", (m > 0 ? g / m : 0) }')"
    done
done
