#!/usr/bin/env bash
# Development and test services on loopback: ZooKeeper on 127.0.0.1:2181 and
# Apache Kafka (a one-node KRaft broker and controller) with four listeners:
#   127.0.0.1:9092  PLAINTEXT
#   127.0.0.1:9093  SSL (server certificate from a test CA made here)
#   127.0.0.1:9094  SASL_SSL with SCRAM-SHA-512 (a user and password made here)
#   127.0.0.1:9095  SSL that requires a client certificate signed by the test CA
# and PostgreSQL 15 on 127.0.0.1:5433 (database and user `hailstorm`, a password made here),
# and an S3-compatible object store (s3s-fs) on 127.0.0.1:9000 with a bucket `hailstorm`
# (access key `hailstorm`, a secret made here).
#
#   scripts/services.sh start     install what is missing, start, wait until both answer
#   scripts/services.sh stop      stop what this script started
#   scripts/services.sh status    say what runs
#   scripts/services.sh env       `export` lines naming what runs (eval "$(scripts/services.sh env)")
#   scripts/services.sh restart-zookeeper [SECONDS]   (tests) bounce the ZooKeeper started here
#   scripts/services.sh kafka-run DIR PORT CONTROLLER_PORT
#                                 (tests) a plaintext broker of their own in the foreground,
#                                 its log under DIR; run again on the same DIR to restart it
#   scripts/services.sh kafka-java CLASS ARGS...   (tests) run a tool of the broker's jars
#
# Safe to run twice. When HAILSTORM_TEST_ZOOKEEPER or HAILSTORM_TEST_KAFKA
# name existing servers (HOST:PORT), HAILSTORM_TEST_POSTGRES a database
# (a postgres:// URL), or HAILSTORM_TEST_S3 an S3 endpoint (a URL, with the
# AWS_* variables for it), those are used and nothing is started for them. State, logs and pid files live in $HAILSTORM_SERVICES_DIR (default
# .services/ in the repository); Kafka's log stays there across restarts.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STATE=${HAILSTORM_SERVICES_DIR:-$PWD/.services}
ZK_PORT=2181
KAFKA_VERSION=4.4.0
KAFKA_LIBS="$STATE/kafka-$KAFKA_VERSION/libs"
KAFKA_DIR="$STATE/kafka"
KAFKA_USER=hailstorm
# PLAINTEXT, SSL, SASL_SSL, SSL with client certificates, the controller.
KAFKA_PORTS=(9092 9093 9094 9095 9098)
PG_PORT=5433
PG_BIN=/usr/lib/postgresql/15/bin
PG_DIR="$STATE/postgres"
S3_PORT=9000
S3_DIR="$STATE/s3"
S3_BUCKET=hailstorm
S3_KEY=hailstorm
S3FS_VERSION=0.14.1

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Whether the variable names a server of someone else's (not the one this
# script runs, which `env` names too).
external() { [ -n "${!1:-}" ] && [ "${!1}" != "$2" ]; }
say() { printf 'services: %s\n' "$*" >&2; }

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
    say "$what did not answer within ${secs}s; see $STATE/*.log"
    return 1
}

install_zookeeper() {
    if [ -f /usr/share/java/zookeeper.jar ] && command -v java >/dev/null; then return; fi
    say "installing ZooKeeper (Debian package)"
    as_root apt-get update -qq
    as_root apt-get install -y -qq zookeeper >/dev/null
}

start_zookeeper() {
    if external HAILSTORM_TEST_ZOOKEEPER "127.0.0.1:$ZK_PORT"; then say "ZooKeeper: using $HAILSTORM_TEST_ZOOKEEPER"; return; fi
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

# The broker's jars and their dependencies, from Maven Central, once.
install_kafka() {
    if [ -f "$KAFKA_LIBS/.complete" ]; then return; fi
    if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
        say "installing Java 17 and Maven (Debian packages)"
        as_root apt-get update -qq
        as_root apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
    fi
    say "fetching Apache Kafka $KAFKA_VERSION from Maven Central (once)"
    rm -rf "$KAFKA_LIBS"
    mvn -q -B -Dstyle.color=never -f "$REPO/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" \
        >"$STATE/maven.log" 2>&1 || { cat "$STATE/maven.log" >&2; return 1; }
    touch "$KAFKA_LIBS/.complete"
}

kafka_java() { # CLASS ARGS...
    java -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

# The test CA, the broker's certificate (names 127.0.0.1 and localhost) and a
# client certificate, all PEM; made once.
make_certs() {
    local d="$KAFKA_DIR/tls"
    if [ -f "$d/client.pem" ]; then return; fi
    mkdir -p "$d" && chmod 700 "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Hailstorm test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    issue_cert "$d" broker "/CN=127.0.0.1" "subjectAltName=IP:127.0.0.1,DNS:localhost"
    issue_cert "$d" client "/CN=hailstorm-client" "extendedKeyUsage=clientAuth"
    # The broker reads its key and chain from one file.
    cat "$d/broker.key" "$d/broker.pem" >"$d/broker-keystore.pem"
}

issue_cert() { # dir name subject extension
    local d=$1 n=$2
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/$n.key" 2>/dev/null
    openssl req -new -key "$d/$n.key" -subj "$3" -out "$d/$n.csr" 2>/dev/null
    printf '%s\n' "$4" >"$d/$n.ext"
    openssl x509 -req -in "$d/$n.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 3650 -extfile "$d/$n.ext" -out "$d/$n.pem" 2>/dev/null
    rm -f "$d/$n.csr" "$d/$n.ext"
}

# A broker's settings. $1: directory, $2: listeners (NAME://HOST:PORT,...),
# $3: the controller's port. Listener names are also their security protocols,
# but MTLS, which is SSL requiring a client certificate.
kafka_config() {
    local dir=$1 listeners=$2 controller=$3
    local advertised=${listeners/,CONTROLLER:\/\/127.0.0.1:$controller/}
    cat <<CFG
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
default.replication.factor=1
min.insync.replicas=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
CFG
}

kafka_tls_config() {
    local d="$KAFKA_DIR/tls"
    cat <<CFG
ssl.keystore.type=PEM
ssl.keystore.location=$d/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$d/ca.pem
listener.name.mtls.ssl.client.auth=required
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# Clients authenticate again every 10 s, so a user whose credentials are
# removed is refused on its open connections too.
listener.name.sasl_ssl.scram-sha-512.connections.max.reauth.ms=10000
CFG
}

# Formats $1 for the settings in $1/server.properties once; SCRAM users as more arguments.
kafka_format() {
    local dir=$1; shift
    if [ -f "$dir/data/meta.properties" ]; then return; fi
    local id
    id=$(kafka_java kafka.tools.StorageTool random-uuid)
    kafka_java kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" "$@" >"$dir/format.log" 2>&1 ||
        { cat "$dir/format.log" >&2; return 1; }
}

kafka_password() {
    local f="$KAFKA_DIR/scram-password"
    if [ ! -s "$f" ]; then
        mkdir -p "$KAFKA_DIR"
        (umask 077 && openssl rand -hex 16 >"$f")
    fi
    cat "$f"
}

# The SCRAM user, set through the broker's own ConfigCommand on every start
# (seen here: credentials given at format time, or set later, did not survive
# a restart of the 4.4 broker), then checked by logging in over SASL_SSL.
ensure_scram_user() {
    local pw props="$KAFKA_DIR/sasl-client.properties"
    pw=$(kafka_password)
    (umask 077 && cat >"$props") <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_USER" password="$pw";
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_DIR/tls/ca.pem
PROPS
    kafka_java org.apache.kafka.tools.ConfigCommand --bootstrap-server 127.0.0.1:9092 --alter --entity-type users \
        --entity-name "$KAFKA_USER" --add-config "SCRAM-SHA-512=[iterations=4096,password=$pw]" >/dev/null
    # The broker learns of the credential from the metadata log a moment later.
    for _ in $(seq 1 20); do
        if kafka_java org.apache.kafka.tools.ConfigCommand --bootstrap-server 127.0.0.1:9094 --command-config "$props" \
            --describe --entity-type users --entity-name "$KAFKA_USER" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    say "the SCRAM user $KAFKA_USER cannot log in on 127.0.0.1:9094; see $STATE/kafka.log"
    return 1
}

kafka_started() { # log file
    grep -q "Kafka Server started" "$1" 2>/dev/null
}

start_kafka() {
    if external HAILSTORM_TEST_KAFKA 127.0.0.1:9092; then say "Kafka: using $HAILSTORM_TEST_KAFKA"; return; fi
    if alive "$STATE/kafka.pid" && port_open 9092; then say "Kafka already answers on 127.0.0.1:9092"; return; fi
    if port_open 9092; then say "something else answers on 127.0.0.1:9092: stop it, or set HAILSTORM_TEST_KAFKA"; return 1; fi
    install_kafka
    make_certs
    mkdir -p "$KAFKA_DIR"
    local p=("${KAFKA_PORTS[@]}")
    {
        kafka_config "$KAFKA_DIR" "PLAINTEXT://127.0.0.1:${p[0]},SSL://127.0.0.1:${p[1]},SASL_SSL://127.0.0.1:${p[2]},MTLS://127.0.0.1:${p[3]},CONTROLLER://127.0.0.1:${p[4]}" "${p[4]}"
        kafka_tls_config
    } >"$KAFKA_DIR/server.properties"
    kafka_format "$KAFKA_DIR" --add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$(kafka_password)]"
    : >"$STATE/kafka.log"
    KAFKA_HEAP=${KAFKA_HEAP:-1g} nohup "$0" kafka-exec "$KAFKA_DIR" >>"$STATE/kafka.log" 2>&1 &
    echo $! >"$STATE/kafka.pid"
    wait_for "Kafka" 90 kafka_started "$STATE/kafka.log"
    ensure_scram_user
    say "Kafka $KAFKA_VERSION answers on 127.0.0.1:9092 (PLAINTEXT), :9093 (SSL), :9094 (SASL_SSL, SCRAM-SHA-512), :9095 (SSL with client certificates)"
}

# The broker of directory $1 in the foreground (exec: the pid stays the script's).
kafka_exec() {
    local heap=${KAFKA_HEAP:-512m}
    exec java -Xms128m -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$REPO/scripts/kafka/log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$1/server.properties"
}

# For tests: a plaintext broker of their own in directory $1 on port $2 (controller $3).
kafka_run() {
    local dir=$1 port=$2 controller=$3
    install_kafka
    mkdir -p "$dir"
    kafka_config "$dir" "PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller" "$controller" >"$dir/server.properties"
    kafka_format "$dir"
    kafka_exec "$dir"
}

# PostgreSQL refuses to run as root: as root, its files belong to the
# `postgres` user of Debian's package and its programs run as that user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_password() {
    local f="$STATE/postgres-password"
    if [ ! -s "$f" ]; then (umask 077 && openssl rand -hex 16 >"$f"); fi
    cat "$f"
}

pg_url() { echo "postgres://hailstorm:$(pg_password)@127.0.0.1:$PG_PORT/hailstorm"; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

start_postgres() {
    if external HAILSTORM_TEST_POSTGRES "$(pg_url)"; then say "PostgreSQL: using the one HAILSTORM_TEST_POSTGRES names"; return; fi
    if [ ! -x "$PG_BIN/initdb" ]; then
        say "installing PostgreSQL 15 (Debian package)"
        as_root apt-get update -qq
        as_root apt-get install -y -qq postgresql-15 >/dev/null
    fi
    if pg_ready; then
        if [ -f "$PG_DIR/data/postmaster.pid" ]; then say "PostgreSQL already answers on 127.0.0.1:$PG_PORT"; return; fi
        say "something else answers on 127.0.0.1:$PG_PORT: stop it, or set HAILSTORM_TEST_POSTGRES"; return 1
    fi
    mkdir -p "$PG_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$PG_DIR"
    if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
        local pw="$PG_DIR/pwfile"
        (umask 077 && pg_password >"$pw")
        [ "$(id -u)" -eq 0 ] && chown postgres: "$pw"
        as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U hailstorm --pwfile="$pw" --auth=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
        rm -f "$pw"
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 \
        -o "-k $PG_DIR -h 127.0.0.1 -p $PG_PORT" start >/dev/null
    if ! PGPASSWORD=$(pg_password) "$PG_BIN/psql" -qtA -h 127.0.0.1 -p "$PG_PORT" -U hailstorm -d postgres \
        -c "SELECT 1 FROM pg_database WHERE datname = 'hailstorm'" | grep -q 1; then
        PGPASSWORD=$(pg_password) "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U hailstorm hailstorm
    fi
    say "PostgreSQL 15 answers on 127.0.0.1:$PG_PORT (database and user hailstorm)"
}

stop_postgres() {
    if [ -f "$PG_DIR/data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null && say "stopped postgres"
    fi
}

s3_secret() {
    local f="$STATE/s3-secret"
    if [ ! -s "$f" ]; then (umask 077 && openssl rand -hex 16 >"$f"); fi
    cat "$f"
}

# s3s-fs serves every directory under its root as a bucket; its create-only
# puts (If-None-Match: *) are checked, not atomic against a racing writer.
start_s3() {
    if external HAILSTORM_TEST_S3 "http://127.0.0.1:$S3_PORT"; then say "S3: using $HAILSTORM_TEST_S3"; return; fi
    if alive "$STATE/s3.pid" && port_open "$S3_PORT"; then say "S3 already answers on 127.0.0.1:$S3_PORT"; return; fi
    if port_open "$S3_PORT"; then say "something else answers on 127.0.0.1:$S3_PORT: stop it, or set HAILSTORM_TEST_S3"; return 1; fi
    if ! command -v s3s-fs >/dev/null; then
        say "installing s3s-fs $S3FS_VERSION (cargo install, once)"
        cargo install -q s3s-fs --version "$S3FS_VERSION" --features binary --locked >"$STATE/s3-install.log" 2>&1 ||
            { cat "$STATE/s3-install.log" >&2; return 1; }
    fi
    mkdir -p "$S3_DIR/$S3_BUCKET"
    nohup s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$(s3_secret)" "$S3_DIR" \
        >"$STATE/s3.log" 2>&1 &
    echo $! >"$STATE/s3.pid"
    wait_for "S3 (s3s-fs)" 30 port_open "$S3_PORT"
    say "S3 (s3s-fs) answers on http://127.0.0.1:$S3_PORT (bucket $S3_BUCKET)"
}

stop_one() { # name
    local pid="$STATE/$1.pid"
    if alive "$pid"; then
        kill "$(cat "$pid")" 2>/dev/null || true
        for _ in $(seq 1 150); do alive "$pid" || break; sleep 0.1; done
        alive "$pid" && kill -9 "$(cat "$pid")" 2>/dev/null || true
        say "stopped $1"
    fi
    rm -f "$pid"
}

print_env() {
    local d="$KAFKA_DIR/tls"
    echo "export HAILSTORM_TEST_ZOOKEEPER=${HAILSTORM_TEST_ZOOKEEPER:-127.0.0.1:$ZK_PORT}"
    printf 'export HAILSTORM_TEST_POSTGRES=%q\n' "${HAILSTORM_TEST_POSTGRES:-$(pg_url)}"
    if external HAILSTORM_TEST_S3 "http://127.0.0.1:$S3_PORT"; then
        for v in HAILSTORM_TEST_S3 HAILSTORM_TEST_S3_BUCKET AWS_ENDPOINT_URL AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
            AWS_REGION AWS_ALLOW_HTTP; do
            [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
        done
    else
        echo "export HAILSTORM_TEST_S3=http://127.0.0.1:$S3_PORT"
        echo "export HAILSTORM_TEST_S3_BUCKET=$S3_BUCKET"
        echo "export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT"
        echo "export AWS_ACCESS_KEY_ID=$S3_KEY"
        printf 'export AWS_SECRET_ACCESS_KEY=%q\n' "$(s3_secret)"
        echo "export AWS_REGION=us-east-1"
        echo "export AWS_ALLOW_HTTP=true"
    fi
    if external HAILSTORM_TEST_KAFKA 127.0.0.1:9092; then
        # Servers of someone else's: repeat what was given.
        for v in HAILSTORM_TEST_KAFKA HAILSTORM_TEST_KAFKA_TLS HAILSTORM_TEST_KAFKA_SASL HAILSTORM_TEST_KAFKA_MTLS \
            HAILSTORM_TEST_KAFKA_CA HAILSTORM_TEST_KAFKA_USER HAILSTORM_TEST_KAFKA_PASSWORD \
            HAILSTORM_TEST_KAFKA_CLIENT_CERT HAILSTORM_TEST_KAFKA_CLIENT_KEY; do
            [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
        done
        return 0
    fi
    echo "export HAILSTORM_TEST_KAFKA=127.0.0.1:9092"
    echo "export HAILSTORM_TEST_KAFKA_TLS=127.0.0.1:9093"
    echo "export HAILSTORM_TEST_KAFKA_SASL=127.0.0.1:9094"
    echo "export HAILSTORM_TEST_KAFKA_MTLS=127.0.0.1:9095"
    printf 'export HAILSTORM_TEST_KAFKA_CA=%q\n' "$d/ca.pem"
    printf 'export HAILSTORM_TEST_KAFKA_CLIENT_CERT=%q\n' "$d/client.pem"
    printf 'export HAILSTORM_TEST_KAFKA_CLIENT_KEY=%q\n' "$d/client.key"
    echo "export HAILSTORM_TEST_KAFKA_USER=$KAFKA_USER"
    printf 'export HAILSTORM_TEST_KAFKA_PASSWORD=%q\n' "$(kafka_password)"
}

status() {
    if zk_ok; then say "ZooKeeper: answers on 127.0.0.1:$ZK_PORT$(alive "$STATE/zookeeper.pid" && echo " (started here, pid $(cat "$STATE/zookeeper.pid"))")"
    else say "ZooKeeper: not running"; fi
    if port_open 9092; then say "Kafka: answers on 127.0.0.1:9092$(alive "$STATE/kafka.pid" && echo " (started here, pid $(cat "$STATE/kafka.pid"))")"
    else say "Kafka: not running"; fi
    if pg_ready; then say "PostgreSQL: answers on 127.0.0.1:$PG_PORT"; else say "PostgreSQL: not running"; fi
    if port_open "$S3_PORT"; then say "S3: answers on 127.0.0.1:$S3_PORT"; else say "S3: not running"; fi
}

mkdir -p "$STATE"
case "${1:-}" in
    start) start_zookeeper; start_kafka; start_postgres; start_s3 ;;
    stop) stop_one kafka; stop_one zookeeper; stop_postgres; stop_one s3; rm -rf "$STATE/zookeeper/data" ;;
    status) status ;;
    env) print_env ;;
    # For tests: stop the ZooKeeper this script started, keep its data, start it again after N seconds.
    restart-zookeeper)
        if external HAILSTORM_TEST_ZOOKEEPER "127.0.0.1:$ZK_PORT" || ! alive "$STATE/zookeeper.pid"; then
            say "ZooKeeper was not started by this script: not restarting it"; exit 3
        fi
        stop_one zookeeper; sleep "${2:-2}"; start_zookeeper ;;
    kafka-run) [ $# -eq 4 ] || { echo "usage: $0 kafka-run DIR PORT CONTROLLER_PORT" >&2; exit 2; }; kafka_run "$2" "$3" "$4" ;;
    kafka-exec) kafka_exec "$2" ;;
    kafka-java) shift; install_kafka; kafka_java "$@" ;;
    *) echo "usage: $0 start|stop|status|env|restart-zookeeper [SECONDS]|kafka-run DIR PORT CONTROLLER_PORT|kafka-java CLASS ARGS..." >&2; exit 2 ;;
esac
