#!/usr/bin/env bash
# Development and test services on loopback: ZooKeeper on 127.0.0.1:2181 and a
# Kafka-protocol broker (tansu) on 127.0.0.1:9092.
#
#   scripts/services.sh start     install what is missing, start, wait until both answer
#   scripts/services.sh stop      stop what this script started
#   scripts/services.sh status    say what runs
#   scripts/services.sh restart-zookeeper [SECONDS]   (tests) bounce the ZooKeeper started here
#
# Safe to run twice. When HAILSTORM_TEST_ZOOKEEPER or HAILSTORM_TEST_KAFKA
# name existing servers (HOST:PORT), those are used and nothing is started for
# them. State, logs and pid files live in $HAILSTORM_SERVICES_DIR (default
# .services/ in the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE=${HAILSTORM_SERVICES_DIR:-$PWD/.services}
ZK_PORT=2181
KAFKA_PORT=9092

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
say() { printf 'services: %s\n' "$*"; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

zk_ok() {
    local reply
    reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$ZK_PORT" && printf 'ruok' >&3 && timeout 2 cat <&3) 2>/dev/null || true)
    [ "$reply" = "imok" ]
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # what, seconds, command...
    local what=$1 secs=$2; shift 2
    for _ in $(seq 1 $((secs * 10))); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    say "$what did not answer within ${secs}s; see $STATE/*.log" >&2
    return 1
}

install_zookeeper() {
    if [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null; then return; fi
    say "installing ZooKeeper (Debian package)"
    as_root apt-get update -qq
    as_root apt-get install -y -qq zookeeper >/dev/null
}

install_tansu() {
    if command -v tansu >/dev/null; then return; fi
    say "installing the tansu broker from crates.io (once; about 15 minutes on 2 cores)"
    cargo install tansu --locked --features dynostore --quiet
}

start_zookeeper() {
    if [ -n "${HAILSTORM_TEST_ZOOKEEPER:-}" ]; then say "ZooKeeper: using $HAILSTORM_TEST_ZOOKEEPER"; return; fi
    if zk_ok; then say "ZooKeeper already answers on 127.0.0.1:$ZK_PORT"; return; fi
    install_zookeeper
    mkdir -p "$STATE/zookeeper/data"
    cat >"$STATE/zookeeper/zoo.cfg" <<CFG
tickTime=500
initLimit=10
syncLimit=5
dataDir=$STATE/zookeeper/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,stat,srvr,mntr
CFG
    nohup java -Dzookeeper.log.dir="$STATE" -cp /etc/zookeeper/conf:/usr/share/java/zookeeper.jar \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$STATE/zookeeper/zoo.cfg" \
        >"$STATE/zookeeper.log" 2>&1 &
    echo $! >"$STATE/zookeeper.pid"
    wait_for ZooKeeper 30 zk_ok
    say "ZooKeeper answers on 127.0.0.1:$ZK_PORT"
}

start_kafka() {
    if [ -n "${HAILSTORM_TEST_KAFKA:-}" ]; then say "Kafka: using $HAILSTORM_TEST_KAFKA"; return; fi
    if port_open $KAFKA_PORT; then say "a broker already answers on 127.0.0.1:$KAFKA_PORT"; return; fi
    install_tansu
    nohup tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ >"$STATE/tansu.log" 2>&1 &
    echo $! >"$STATE/tansu.pid"
    wait_for "the broker" 30 port_open $KAFKA_PORT
    say "the broker (tansu) answers on 127.0.0.1:$KAFKA_PORT"
}

stop_one() { # name
    local pid="$STATE/$1.pid"
    if alive "$pid"; then
        kill "$(cat "$pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -9 "$(cat "$pid")" 2>/dev/null || true
        say "stopped $1"
    fi
    rm -f "$pid"
}

status() {
    if zk_ok; then say "ZooKeeper: answers on 127.0.0.1:$ZK_PORT$(alive "$STATE/zookeeper.pid" && echo " (started here, pid $(cat "$STATE/zookeeper.pid"))")"
    else say "ZooKeeper: not running"; fi
    if port_open $KAFKA_PORT; then say "broker: answers on 127.0.0.1:$KAFKA_PORT$(alive "$STATE/tansu.pid" && echo " (started here, pid $(cat "$STATE/tansu.pid"))")"
    else say "broker: not running"; fi
}

mkdir -p "$STATE"
case "${1:-}" in
    start) start_zookeeper; start_kafka ;;
    stop) stop_one tansu; stop_one zookeeper; rm -rf "$STATE/zookeeper/data" ;;
    status) status ;;
    # For tests: stop the ZooKeeper this script started, keep its data, start it again after N seconds.
    restart-zookeeper)
        if [ -n "${HAILSTORM_TEST_ZOOKEEPER:-}" ] || ! alive "$STATE/zookeeper.pid"; then
            say "ZooKeeper was not started by this script: not restarting it" >&2; exit 3
        fi
        stop_one zookeeper; sleep "${2:-2}"; start_zookeeper ;;
    *) echo "usage: $0 start|stop|status|restart-zookeeper [SECONDS]" >&2; exit 2 ;;
esac
