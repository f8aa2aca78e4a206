#!/usr/bin/env bash
# A local Apache Cassandra 5.0 cluster of 1..3 nodes on loopback, for integration tests.
# The server jars come from Maven Central (org.apache.cassandra:cassandra-all and its
# dependencies); no Cassandra tarball, no cqlsh, no Python needed.
#
#   scripts/cassandra.sh fetch
#       download the jars (once) into $CASSANDRA_HOME_CACHE; prints that lib dir
#   scripts/cassandra.sh start --dir D --nodes N [--partitioner P] [--cluster-name C] [--first-node K]
#       create D/node1..N (only if absent: a restart keeps data and config), start nodes K..N
#       (all at once; CASSANDRA_PARALLEL_START=0: one after another), wait until each answers
#       CQL, then until all running nodes see each other UN and agree on the schema
#   scripts/cassandra.sh start-node --dir D --node I [--replace]
#       (re)start node I of an existing D; --replace: the node's data dir was wiped (cold restore):
#       it takes its old place back (replace_address_first_boot of its own address, no streaming)
#   scripts/cassandra.sh stop --dir D [--node I]          SIGTERM, wait, SIGKILL after a timeout
#   scripts/cassandra.sh kill --dir D --node I            SIGKILL
#   scripts/cassandra.sh nodetool --dir D --node I -- ARGS...
#   scripts/cassandra.sh cqlsh-check --dir D --node I     exit 0 (and print release_version)
#                                                         if the node answers a CQL query
#
# Node I listens on 127.0.0.I (storage 7000, CQL 9042) with JMX on 127.0.0.1:7I00
# (7100, 7200, 7300), like ccm. Everything of node I lives in D/nodeI: conf/, data/,
# commitlog/, hints/, saved_caches/, cdc_raw/, logs/ (system.log, stdout.log), tmp/, pid.
# D/cluster.env records the cluster's name, size and partitioner.
#
# Environment:
#   CASSANDRA_JAVA_HOME     the Java to use, else JAVA_HOME, else /usr/lib/jvm/java-17-openjdk-amd64;
#                           it must be Java 17: any other major version is refused
#   CASSANDRA_VERSION       cassandra-all version (default 5.0.9)
#   CASSANDRA_HOME_CACHE    the lib dir (default $HOME/.cache/ortelius-cassandra/<version>/lib)
#   CASSANDRA_HEAP          -Xms/-Xmx of each node (default 512m)
#   CASSANDRA_START_TIMEOUT seconds to wait for each node to answer CQL (default 180)
#   CASSANDRA_STOP_TIMEOUT  seconds between SIGTERM and SIGKILL (default 60)
#   CASSANDRA_TOKENS        comma-separated initial_token of node1..N, overriding the defaults
#   CASSANDRA_JVM_OPTS      extra JVM options for the nodes
#   CASSANDRA_KEEP_ON_FAILURE 1: when start fails, leave the nodes it launched running (default: kill)
#   CASSANDRA_SKIP_SETTLE   1: after start, skip waiting for UN + schema agreement (nodetool)
#   CASSANDRA_PARALLEL_START  1 (default): 'start' launches its nodes at once, then waits for each;
#                           0: one after another (each waits for CQL before the next starts)
set -euo pipefail

readonly DEFAULT_JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64
readonly VERSION="${CASSANDRA_VERSION:-5.0.9}"
readonly LIB="${CASSANDRA_HOME_CACHE:-${HOME:-/tmp}/.cache/ortelius-cassandra/$VERSION/lib}"
readonly HEAP="${CASSANDRA_HEAP:-512m}"
readonly START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-180}"
readonly STOP_TIMEOUT="${CASSANDRA_STOP_TIMEOUT:-60}"
readonly MAX_NODES=3
readonly DEFAULT_PARTITIONER=org.apache.cassandra.dht.ByteOrderedPartitioner

LAUNCHED=()   # pids this invocation started: killed if it fails, so no half-started cluster stays
die() {
  echo "cassandra.sh: error: $*" >&2
  if [ ${#LAUNCHED[@]} -gt 0 ] && [ "${CASSANDRA_KEEP_ON_FAILURE:-0}" != 1 ]; then
    echo "cassandra.sh: killing the node(s) this command started: pids ${LAUNCHED[*]} (CASSANDRA_KEEP_ON_FAILURE=1 keeps them)" >&2
    kill -KILL "${LAUNCHED[@]}" 2>/dev/null || true
  fi
  exit 1
}
log() { echo "cassandra.sh: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- Java

JAVA=""
require_java17() {
  [ -n "$JAVA" ] && return 0
  local home="${CASSANDRA_JAVA_HOME:-${JAVA_HOME:-$DEFAULT_JAVA_HOME}}"
  if [ ! -x "$home/bin/java" ]; then
    if [ -n "${CASSANDRA_JAVA_HOME:-${JAVA_HOME:-}}" ]; then
      die "$home (from \$CASSANDRA_JAVA_HOME or \$JAVA_HOME) has no bin/java; Cassandra 5.0 needs Java 17 (Debian: apt-get install openjdk-17-jdk-headless)"
    fi
    die "no Java 17 at $DEFAULT_JAVA_HOME; install it (Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME to a Java 17"
  fi
  local line major
  line="$("$home/bin/java" -version 2>&1 | grep -m1 -E 'version "' || true)"
  major="$(sed -E 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1 \3/' <<<"$line")"
  # "1.8.0_x" -> 8, "17.0.15" -> 17, "25" -> 25
  if [ "${major%% *}" = 1 ]; then major="${major#* }"; else major="${major%% *}"; fi
  if [ "$major" != 17 ]; then
    die "$home/bin/java is Java ${major:-?} ($line); Cassandra 5.0 is run here only on Java 17 (newer Javas lack System.setSecurityManager). Set CASSANDRA_JAVA_HOME (or JAVA_HOME) to a Java 17, e.g. $DEFAULT_JAVA_HOME"
  fi
  JAVA="$home/bin/java"
}

# Java 17 flags of Cassandra 5.0's conf/jvm17-server.options (JPMS part).
JPMS_OPTS=(
  -Djdk.attach.allowAttachSelf=true
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
  --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
  --add-exports java.sql/java.sql=ALL-UNNAMED
  --add-exports java.base/java.lang.ref=ALL-UNNAMED
  --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
  --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
  --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
  --add-opens java.base/java.lang.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
  --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
  --add-opens java.base/jdk.internal.math=ALL-UNNAMED
  --add-opens java.base/jdk.internal.module=ALL-UNNAMED
  --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
  --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens java.base/java.io=ALL-UNNAMED
  --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
  --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED
  -Dio.netty.tryReflectionSetAccessible=true
  -Dio.netty.allocator.useCacheForAllThreads=true
  -Dio.netty.allocator.maxOrder=11
)

# ---------------------------------------------------------------- fetch

lib_complete() { [ -f "$LIB/.complete" ] && [ -f "$LIB/cassandra-all-$VERSION.jar" ]; }

cmd_fetch() {
  if lib_complete; then echo "$LIB"; return 0; fi
  command -v mvn >/dev/null 2>&1 || die "Maven (mvn) is needed to download Cassandra's jars (Debian: apt-get install maven)"
  require_java17
  local parent; parent="$(dirname "$LIB")"
  mkdir -p "$parent" || die "cannot create $parent"
  exec 9>"$parent/.fetch.lock"
  flock 9                                  # one download at a time; others wait and reuse it
  if lib_complete; then exec 9>&-; echo "$LIB"; return 0; fi
  local work; work="$(mktemp -d "$parent/.fetch.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>ortelius</groupId><artifactId>cassandra-fetch</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId><artifactId>cassandra-all</artifactId>
      <version>$VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  log "downloading cassandra-all $VERSION and its dependencies from Maven Central ..."
  local t0=$SECONDS
  if ! (cd "$work" && JAVA_HOME="$(dirname "$(dirname "$JAVA")")" mvn -B -q -C \
        -Dmaven.repo.local="$work/m2" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$work/lib" >"$work/mvn.log" 2>&1); then
    tail -n 40 "$work/mvn.log" >&2
    die "Maven could not download cassandra-all $VERSION (log above)"
  fi
  [ -f "$work/lib/cassandra-all-$VERSION.jar" ] || die "Maven finished but cassandra-all-$VERSION.jar is missing"
  touch "$work/lib/.complete"
  rm -rf "$LIB"
  mkdir -p "$(dirname "$LIB")"
  mv "$work/lib" "$LIB"
  exec 9>&-
  log "fetched $(ls "$LIB" | wc -l) jars, $(du -sh "$LIB" | cut -f1), in $((SECONDS - t0)) s"
  echo "$LIB"
}

ensure_lib() {
  lib_complete || cmd_fetch >/dev/null
}

jamm_agent() {
  local j
  j="$(ls "$LIB"/jamm-*.jar 2>/dev/null | head -n1 || true)"
  if [ -n "$j" ]; then echo "-javaagent:$j"; fi
}

# ---------------------------------------------------------------- cluster layout

node_dir() { echo "$DIR/node$1"; }
node_ip() { echo "127.0.0.$1"; }
jmx_port() { echo "7${1}00"; }

read_cluster_env() {
  C_NAME=""; C_NODES=""; C_PARTITIONER=""
  if [ -f "$DIR/cluster.env" ]; then
    # shellcheck disable=SC1091
    . "$DIR/cluster.env"
    C_NAME="${CLUSTER_NAME:-}"; C_NODES="${CLUSTER_NODES:-}"; C_PARTITIONER="${CLUSTER_PARTITIONER:-}"
  fi
}

# initial_token of node $1 of $2 nodes for partitioner $3 (empty: let Cassandra choose)
initial_token() {
  local i=$1 n=$2 p=$3
  if [ -n "${CASSANDRA_TOKENS:-}" ]; then
    local toks; IFS=, read -r -a toks <<<"$CASSANDRA_TOKENS"
    [ "${#toks[@]}" -ge "$n" ] || die "CASSANDRA_TOKENS has ${#toks[@]} tokens, the cluster has $n nodes"
    echo "${toks[$((i - 1))]}"; return
  fi
  case "$p" in
    *ByteOrderedPartitioner)
      # Tokens are hex byte strings; node i owns (token(i-1), token(i)], node 1 also every key
      # above the last token. 3 nodes: node1 owns keys starting 0x00..0x40 (binary integers,
      # digits, punctuation), node2 0x40..0x6d ('A'-'Z', '_', 'a'-'m'), node3 0x6d..0xff
      # ('n'-'z', high binary bytes).
      case $n in
        1) echo ff ;;
        2) local t=(6d ff); echo "${t[$((i - 1))]}" ;;
        *) local t=(40 6d ff); echo "${t[$((i - 1))]}" ;;
      esac ;;
    *Murmur3Partitioner)
      case $n in
        1) echo -9223372036854775808 ;;
        2) local t=(-9223372036854775808 0); echo "${t[$((i - 1))]}" ;;
        *) local t=(-9223372036854775808 -3074457345618258603 3074457345618258602); echo "${t[$((i - 1))]}" ;;
      esac ;;
    *RandomPartitioner)
      case $n in
        1) echo 0 ;;
        2) local t=(0 85070591730234615865843651857942052864); echo "${t[$((i - 1))]}" ;;
        *) local t=(0 56713727820156410577229101238628035242 113427455640312821154458202477256070484); echo "${t[$((i - 1))]}" ;;
      esac ;;
    *) echo "" ;;
  esac
}

write_node_config() {
  local i=$1 n=$2 name=$3 part=$4
  local d; d="$(node_dir "$i")"
  mkdir -p "$d/conf" "$d/data" "$d/commitlog" "$d/saved_caches" "$d/hints" "$d/cdc_raw" "$d/logs" "$d/tmp"
  local seeds="" k
  for ((k = 1; k <= n; k++)); do seeds+="${seeds:+,}$(node_ip "$k"):7000"; done
  local tok; tok="$(initial_token "$i" "$n" "$part")"
  {
    cat <<EOF
# Written by scripts/cassandra.sh for node $i of $n (test cluster; not for production).
cluster_name: '$name'
partitioner: $part
num_tokens: 1
EOF
    [ -n "$tok" ] && echo "initial_token: '$tok'"
    cat <<EOF
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$seeds"
listen_address: $(node_ip "$i")
rpc_address: $(node_ip "$i")
storage_port: 7000
native_transport_port: 9042
start_native_transport: true
auto_bootstrap: false
auto_snapshot: false
storage_compatibility_mode: NONE

data_file_directories:
  - $d/data
commitlog_directory: $d/commitlog
saved_caches_directory: $d/saved_caches
hints_directory: $d/hints
cdc_raw_directory: $d/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms

# a 2-core machine running several nodes and a compiler: be patient
request_timeout: 20000ms
read_request_timeout: 15000ms
range_request_timeout: 20000ms
write_request_timeout: 15000ms
counter_write_request_timeout: 15000ms
cas_contention_timeout: 10000ms
truncate_request_timeout: 60000ms

# small footprint
concurrent_compactors: 1
memtable_heap_space: 64MiB
memtable_offheap_space: 64MiB
key_cache_size: 16MiB
file_cache_size: 32MiB

# AtlasDB-style multi-cell batches are larger than the 50KiB default limit
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 10240KiB

# a node starting alone (whole cluster restarting one node after another) need not wait 10 s
block_for_peers_timeout_in_secs: 2

materialized_views_enabled: false

# Paxos v2 (Cassandra 4.1+, as in 5.0's cassandra_latest.yaml): a lightweight transaction, such
# as every commit record, takes two round trips to a quorum instead of four. Paxos state is
# purged once repair has made it redundant; the seed runbook's full repair of _transactions
# includes the Paxos repair.
paxos_variant: v2
paxos_state_purging: repaired
EOF
  } >"$d/conf/cassandra.yaml"
  cat >"$d/conf/logback.xml" <<'EOF'
<configuration scan="false">
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex><maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{0} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="SYSTEMLOG"/></root>
</configuration>
EOF
}

tools_logback() {
  local f="$DIR/logback-tools.xml"
  [ -f "$f" ] || cat >"$f" <<'EOF'
<configuration scan="false">
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %date{HH:mm:ss.SSS} %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
EOF
  echo "$f"
}

# ---------------------------------------------------------------- processes

# pid of node $1 if it is running (a java whose command line names this node's dir)
node_pid() {
  local f; f="$(node_dir "$1")/pid"
  [ -f "$f" ] || return 1
  local pid; pid="$(cat "$f" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "-Dcassandra.storagedir=$(node_dir "$1")" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# CQL v4 over bash's /dev/tcp: STARTUP, then SELECT release_version FROM system.local.
# Prints the release version; fails unless the node answers the query.
cql_probe() {
  local host=$1
  exec 3<>"/dev/tcp/$host/9042" || return 1
  # STARTUP {CQL_VERSION: 3.0.0}
  printf '\x04\x00\x00\x01\x01\x00\x00\x00\x16\x00\x01\x00\x0bCQL_VERSION\x00\x053.0.0' >&3
  local hdr
  hdr="$(head -c 9 <&3 | od -An -tx1 | tr -d ' \n')"
  [ "${hdr:0:10}" = 8400000102 ] || return 1          # READY
  local q="SELECT release_version FROM system.local"
  local qlen=${#q} blen=$((${#q} + 7))
  printf "\\x04\\x00\\x00\\x02\\x07$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' 0 0 0 "$blen")$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' 0 0 0 "$qlen")%s\\x00\\x01\\x00" "$q" >&3
  hdr="$(head -c 9 <&3 | od -An -tx1 | tr -d ' \n')"
  [ "${hdr:0:10}" = 8400000208 ] || return 1          # RESULT
  local len=$((16#${hdr:10:8}))
  local body; body="$(head -c "$len" <&3 | tr -c '[:print:]' '.')"
  exec 3<&-
  local v; v="$(grep -oE '[0-9]+\.[0-9]+\.[0-9]+[^.]*' <<<"${body##*release_version}" | head -n1)"
  [ -n "$v" ] || return 1
  echo "$v"
}

cql_check() {
  timeout 10 bash -c "$(declare -f cql_probe); cql_probe $(node_ip "$1")" 2>/dev/null
}

show_log_tail() {
  local d; d="$(node_dir "$1")"
  echo "----- tail of $d/logs/system.log -----" >&2
  tail -n 60 "$d/logs/system.log" >&2 2>/dev/null || echo "(no system.log)" >&2
  echo "----- tail of $d/logs/stdout.log -----" >&2
  tail -n 30 "$d/logs/stdout.log" >&2 2>/dev/null || echo "(no stdout.log)" >&2
  echo "-----" >&2
}

launch_node() {
  local i=$1
  local d; d="$(node_dir "$i")"
  [ -f "$d/conf/cassandra.yaml" ] || die "$d/conf/cassandra.yaml is missing: create the cluster with '$0 start --dir $DIR --nodes N' first"
  if pid="$(node_pid "$i")"; then
    log "node$i already running (pid $pid)"
    return 0
  fi
  local ip; ip="$(node_ip "$i")"
  if command -v ip >/dev/null 2>&1 && ! ip -o route get "$ip" 2>/dev/null | grep -q ' dev lo'; then
    die "$ip is not routed to lo here; add it with: ip addr add $ip/8 dev lo"
  fi
  # A cluster that is still stopping (e.g. the previous test binary's, stopped by its
  # watchdog once that process exited) frees its ports within seconds: wait for it.
  local port waited
  for port in "$ip:9042" "$ip:7000" "127.0.0.1:$(jmx_port "$i")"; do
    waited=0
    while port_open "${port%:*}" "${port##*:}" && [ "$waited" -lt "${CASSANDRA_PORT_WAIT:-90}" ]; do
      [ "$waited" -eq 0 ] && log "$port is in use; waiting up to ${CASSANDRA_PORT_WAIT:-90}s for it to be released"
      sleep 1
      waited=$((waited + 1))
    done
    if port_open "${port%:*}" "${port##*:}"; then
      die "$port is already in use (another Cassandra still running? stop it first, e.g. '$0 stop --dir <its dir>')"
    fi
  done
  mkdir -p "$d/logs" "$d/tmp" "$d/triggers"
  # JNA and the other native libraries are unpacked into tmp/ and must be executable there
  cp /bin/true "$d/tmp/.exec-check" 2>/dev/null && if ! "$d/tmp/.exec-check"; then
    die "$d/tmp cannot execute files (noexec mount?); put the cluster dir on another filesystem"
  fi
  rm -f "$d/tmp/.exec-check"
  local agent; agent="$(jamm_agent)"
  # shellcheck disable=SC2206
  local extra=(${CASSANDRA_JVM_OPTS:-})
  local replace=()
  # --replace: a wiped node takes its own place back (same address, token and host id) without
  # streaming; only acts on a first boot (empty system keyspace), ignored afterwards
  [ "$REPLACE" = 1 ] && replace=("-Dcassandra.replace_address_first_boot=$ip" -Dcassandra.allow_unsafe_replace=true)
  local args=(
    -cp "$LIB/*"
    "-Xms$HEAP" "-Xmx$HEAP" -Xss256k
    -XX:+UseG1GC -XX:ParallelGCThreads=1 -XX:ConcGCThreads=1 -XX:+ParallelRefProcEnabled
    -XX:MaxTenuringThreshold=1 -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300
    -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:+ExitOnOutOfMemoryError
    -ea -da:net.openhft...
    -Djava.net.preferIPv4Stack=true
    "${JPMS_OPTS[@]}"
    ${agent:+"$agent"}
    -Dcassandra-foreground=yes
    "-Dcassandra.config=file://$d/conf/cassandra.yaml"
    "-Dcassandra.storagedir=$d"
    "-Dcassandra.logdir=$d/logs"
    "-Dlogback.configurationFile=$d/conf/logback.xml"
    "-Dcassandra.jmx.local.port=$(jmx_port "$i")"
    -Dcom.sun.management.jmxremote.authenticate=false
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=5000
    -Dcassandra.test.messagingService.nonGracefulShutdown=true
    "-Djava.io.tmpdir=$d/tmp" "-Djna.tmpdir=$d/tmp" "-Dcassandra.triggers_dir=$d/triggers"
    "${extra[@]}"
    "${replace[@]}"
    org.apache.cassandra.service.CassandraDaemon
  )
  {
    echo "=== $(date -u +%FT%TZ) starting node$i: $JAVA ${args[*]}"
  } >>"$d/logs/stdout.log"
  # own session, no inherited stdio: callers reading our output get EOF when we exit
  # (setsid forks when it happens to be a group leader: the pid is written by what becomes java)
  rm -f "$d/pid"
  # Cassandra mlockall()s its memory when allowed (root has CAP_IPC_LOCK): that pins the whole
  # heap and more per node. Tests do not need it: drop the capability, keep the small rlimit.
  local nolock=()
  if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null 2>&1 && setpriv --bounding-set -ipc_lock true 2>/dev/null; then
    nolock=(setpriv --bounding-set -ipc_lock)
  fi
  (cd "$d" && ulimit -S -l 64 2>/dev/null; exec setsid "${nolock[@]}" bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$d/pid" "$JAVA" "${args[@]}" \
     </dev/null >>"$d/logs/stdout.log" 2>&1) &
  local pid=""
  for _ in $(seq 50); do
    [ -s "$d/pid" ] && pid="$(cat "$d/pid")" && break
    sleep 0.1
  done
  [ -n "$pid" ] || die "node$i: java did not start (see $d/logs/stdout.log)"
  LAUNCHED+=("$pid")
  log "node$i starting (pid $pid) on $ip, CQL $ip:9042, JMX 127.0.0.1:$(jmx_port "$i"), heap $HEAP"
}

wait_cql() {
  local i=$1 t0=$2
  local deadline=$((t0 + START_TIMEOUT))
  local v
  while :; do
    if v="$(cql_check "$i")"; then
      log "node$i answers CQL on $(node_ip "$i"):9042 (release $v) after $((SECONDS - t0)) s"
      return 0
    fi
    if ! node_pid "$i" >/dev/null; then
      show_log_tail "$i"
      die "node$i died while starting (logs: $(node_dir "$i")/logs)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_log_tail "$i"
      die "node$i did not answer CQL within $START_TIMEOUT s (it is still running: pid $(node_pid "$i"); logs: $(node_dir "$i")/logs)"
    fi
    sleep 1
  done
}

run_nodetool() {
  local i=$1; shift
  require_java17; ensure_lib
  local lb; lb="$(tools_logback)"
  "$JAVA" -cp "$LIB/*" -Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -XX:+PerfDisableSharedMem "${JPMS_OPTS[@]}" -Djava.net.preferIPv4Stack=true \
    "-Dlogback.configurationFile=$lb" \
    org.apache.cassandra.tools.NodeTool -h 127.0.0.1 -p "$(jmx_port "$i")" "$@"
}

running_nodes() {
  local k
  for ((k = 1; k <= MAX_NODES; k++)); do
    [ -d "$(node_dir "$k")" ] && node_pid "$k" >/dev/null && echo "$k"
  done
  return 0
}

# Every running node sees every running node UN, and one node reports a single schema version.
wait_settled() {
  local t0=$1
  [ "${CASSANDRA_SKIP_SETTLE:-0}" = 1 ] && return 0
  local deadline=$((t0 + START_TIMEOUT))
  local nodes; mapfile -t nodes < <(running_nodes)
  local want=${#nodes[@]} k ok out un
  while :; do
    ok=1
    for k in "${nodes[@]}"; do
      out="$(run_nodetool "$k" status 2>/dev/null || true)"
      un="$(grep -cE '^UN ' <<<"$out" || true)"
      if [ "$un" != "$want" ]; then ok=0; break; fi
    done
    if [ "$ok" = 1 ]; then
      out="$(run_nodetool "${nodes[0]}" describecluster 2>/dev/null || true)"
      local versions; versions="$(sed -n '/Schema versions:/,/^$/p' <<<"$out" | grep -cE '[0-9a-f]{8}-[0-9a-f]{4}-' || true)"
      if [ "$versions" = 1 ] && ! grep -q UNREACHABLE <<<"$out"; then
        log "cluster settled: nodes ${nodes[*]} all UN, one schema version ($((SECONDS - t0)) s since start)"
        return 0
      fi
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "$out" >&2
      die "nodes ${nodes[*]} did not all see each other UN with one schema version within $START_TIMEOUT s"
    fi
    sleep 2
  done
}

# ---------------------------------------------------------------- commands

DIR=""; NODES=""; NODE=""; PARTITIONER=""; CLUSTER_NAME_ARG=""; FIRST_NODE=1; REPLACE=0
REST=()

parse_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
      --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
      --node) NODE="${2:?--node needs a value}"; shift 2 ;;
      --partitioner) PARTITIONER="${2:?--partitioner needs a value}"; shift 2 ;;
      --cluster-name) CLUSTER_NAME_ARG="${2:?--cluster-name needs a value}"; shift 2 ;;
      --first-node) FIRST_NODE="${2:?--first-node needs a value}"; shift 2 ;;
      --replace) REPLACE=1; shift ;;
      --) shift; REST=("$@"); return 0 ;;
      *) if [ "$CMD" = nodetool ]; then REST=("$@"); return 0; fi
         die "unknown option '$1' (see '$0 help')" ;;
    esac
  done
}

need_dir() {
  [ -n "$DIR" ] || die "--dir is required"
  case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
  DIR="${DIR%/}"
}

need_node() {
  [[ "$NODE" =~ ^[1-9]$ ]] && [ "$NODE" -le "$MAX_NODES" ] || die "--node must be 1..$MAX_NODES"
}

cmd_start() {
  need_dir
  require_java17; ensure_lib
  read_cluster_env
  [ -n "$NODES" ] || NODES="$C_NODES"
  [[ "$NODES" =~ ^[1-9]$ ]] && [ "$NODES" -le "$MAX_NODES" ] || die "--nodes must be 1..$MAX_NODES"
  [[ "$FIRST_NODE" =~ ^[1-9]$ ]] && [ "$FIRST_NODE" -le "$NODES" ] || die "--first-node must be 1..$NODES"
  local part="${PARTITIONER:-${C_PARTITIONER:-$DEFAULT_PARTITIONER}}"
  local name="${CLUSTER_NAME_ARG:-${C_NAME:-ortelius-test}}"
  case "$part" in *.*) ;; *) part="org.apache.cassandra.dht.$part" ;; esac
  if [ -f "$DIR/cluster.env" ]; then
    [ -z "$PARTITIONER" ] || [ "$part" = "$C_PARTITIONER" ] || die "$DIR was created with partitioner $C_PARTITIONER, not $part"
    [ -z "$CLUSTER_NAME_ARG" ] || [ "$name" = "$C_NAME" ] || die "$DIR was created with cluster name '$C_NAME', not '$name'"
    [ "$NODES" -le "$C_NODES" ] || die "$DIR was created with $C_NODES nodes; its node configs (seeds, tokens) cannot grow to $NODES"
  else
    mkdir -p "$DIR"
    printf 'CLUSTER_NAME=%q\nCLUSTER_NODES=%q\nCLUSTER_PARTITIONER=%q\n' "$name" "$NODES" "$part" >"$DIR/cluster.env"
    C_NODES=$NODES
  fi
  local i
  for ((i = 1; i <= C_NODES; i++)); do
    [ -f "$(node_dir "$i")/conf/cassandra.yaml" ] || write_node_config "$i" "$C_NODES" "$name" "$part"
  done
  local t0=$SECONDS
  if [ "${CASSANDRA_PARALLEL_START:-1}" = 1 ]; then
    for ((i = FIRST_NODE; i <= NODES; i++)); do launch_node "$i"; done
    for ((i = FIRST_NODE; i <= NODES; i++)); do wait_cql "$i" "$t0"; done
  else
    for ((i = FIRST_NODE; i <= NODES; i++)); do
      local tn=$SECONDS
      launch_node "$i"
      wait_cql "$i" "$tn"
    done
  fi
  wait_settled "$t0"
  log "nodes $FIRST_NODE..$NODES ready in $((SECONDS - t0)) s"
}

cmd_start_node() {
  need_dir; need_node
  require_java17; ensure_lib
  [ -f "$(node_dir "$NODE")/conf/cassandra.yaml" ] || die "$(node_dir "$NODE") has no config; use 'start' to create the cluster"
  local t0=$SECONDS
  launch_node "$NODE"
  wait_cql "$NODE" "$t0"
  wait_settled "$t0"
}

stop_nodes() {
  local sig=$1; shift
  local pids=() nodes=() i pid
  for i in "$@"; do
    if pid="$(node_pid "$i")"; then
      kill "-$sig" "$pid" 2>/dev/null || true
      pids+=("$pid"); nodes+=("$i")
      log "node$i: sent SIG$sig to pid $pid"
    fi
  done
  [ ${#pids[@]} -gt 0 ] || { log "no running node to stop"; return 0; }
  local deadline=$((SECONDS + STOP_TIMEOUT)) alive
  [ "$sig" = KILL ] && deadline=$((SECONDS + 15))
  while :; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      [ "$sig" = KILL ] && die "pids ${alive[*]} survive SIGKILL"
      log "still running after $STOP_TIMEOUT s: ${alive[*]}; sending SIGKILL"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      sig=KILL; deadline=$((SECONDS + 15))
    fi
    sleep 0.5
  done
  for i in "${nodes[@]}"; do rm -f "$(node_dir "$i")/pid"; done
  log "stopped node(s) ${nodes[*]}"
}

cmd_stop() {
  need_dir
  if [ -n "$NODE" ]; then need_node; stop_nodes TERM "$NODE"; return; fi
  local all=() k
  for ((k = 1; k <= MAX_NODES; k++)); do [ -d "$(node_dir "$k")" ] && all+=("$k"); done
  stop_nodes TERM "${all[@]}"
}

cmd_kill() { need_dir; need_node; stop_nodes KILL "$NODE"; }

cmd_nodetool() {
  need_dir; need_node
  run_nodetool "$NODE" "${REST[@]}"
}

cmd_cqlsh_check() {
  need_dir; need_node
  cql_check "$NODE"
}

CMD="${1:-help}"; [ $# -gt 0 ] && shift
case "$CMD" in
  fetch) parse_opts "$@"; cmd_fetch ;;
  start) parse_opts "$@"; cmd_start ;;
  start-node) parse_opts "$@"; cmd_start_node ;;
  stop) parse_opts "$@"; cmd_stop ;;
  kill) parse_opts "$@"; cmd_kill ;;
  nodetool) parse_opts "$@"; cmd_nodetool ;;
  cqlsh-check) parse_opts "$@"; cmd_cqlsh_check ;;
  help|-h|--help) usage ;;
  *) echo "cassandra.sh: unknown command '$CMD'" >&2; usage ;;
esac
