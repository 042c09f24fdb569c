#!/bin/bash
# hostkit pgqd beside Debian's C pgqd (3.5) on the same private PostgreSQL 15 cluster,
# with the same configuration: N databases with pgq and one queue each, each ticker
# run alone for a fixed time. Reports CPU seconds of the ticker process, its peak RSS,
# ticks made (rows added to pgq.tick over all databases) and the lag from
# pgq.insert_event to a batch being available (probed in one database while running).
#
# Usage: bench/pgqd.sh [sizes...]   (default: 10 100; env RUN_SECS, default 30; OURS, C_PGQD,
#        PROBE_SECS, TICKERS, PROFILE=callgrind, WARMUP_SECS, KEEP_LOGS: see below)
# Needs root (runs the private cluster as postgres). Prints Markdown for BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=("${@:-10 100}")
read -r -a SIZES <<<"${SIZES[*]}"
RUN_SECS=${RUN_SECS:-30}
PROBE_SECS=${PROBE_SECS:-10}
# TICKERS="c ours" (default both) runs only the named tickers.
TICKERS=${TICKERS:-c ours}
# PROFILE=callgrind counts the tickers' instructions instead of timing them.
PROFILE=${PROFILE:-}
WARMUP_SECS=${WARMUP_SECS:-10}
PORT=${PORT:-55432}
PGBIN=/usr/lib/postgresql/15/bin
DIR=$(mktemp -d /tmp/hk-pgqd-bench.XXXXXX)
chown postgres "$DIR"
# OURS=path runs another build of ours (e.g. the one before a change).
OURS=${OURS:-$(pwd)/target/release/pgqd}
# C_PGQD=path: the C daemon to compare with. /usr/bin/pgqd is hostkit's own once the
# skytools3-ticker package replaces Debian's pgqd (the e2e tests install it), so the
# binary is checked to be the C one and copied for the run, a package swap mid-run
# notwithstanding (an earlier run's "C" row at 100 databases was hostkit's pgqd).
C_PGQD=${C_PGQD:-/usr/bin/pgqd}

if [ ! -x "$C_PGQD" ]; then
    flock /tmp/hk-dpkg.lock env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends pgqd >/dev/null
fi
case $("$C_PGQD" -V 2>&1) in
"pgqd version "*) ;;
*) echo "$C_PGQD is not Debian's C pgqd ($("$C_PGQD" -V 2>&1 | head -1)); set C_PGQD" >&2; exit 1 ;;
esac
cp "$C_PGQD" "$DIR/c-pgqd"
C_PGQD=$DIR/c-pgqd
case " $TICKERS " in *" ours "*) [ -x "$OURS" ] || cargo build --release --locked --bin pgqd >/dev/null ;; esac

cleanup() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    # KEEP_LOGS=DIR keeps the tickers' and the server's logs for a post-mortem.
    [ -z "${KEEP_LOGS:-}" ] || { mkdir -p "$KEEP_LOGS" && cp "$DIR"/*.log "$DIR"/lag-* "$DIR"/cg-* "$KEEP_LOGS"/ 2>/dev/null || true; }
    rm -rf "$DIR"
}
trap cleanup EXIT

runuser -u postgres -- "$PGBIN/initdb" -D "$DIR/data" -A trust >/dev/null
cat >>"$DIR/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
max_connections = 1700
shared_buffers = 256MB
EOF
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w start >/dev/null
PSQL=(psql -h "$DIR" -p "$PORT" -U postgres -X -q -tA)

# Create databases up to $1, each with pgq and queue q.
ensure_dbs() {
    local have
    have=$("${PSQL[@]}" -d postgres -c "select count(*) from pg_database where datname like 'bench_%'")
    for i in $(seq $((have + 1)) "$1"); do
        "${PSQL[@]}" -d postgres -c "create database bench_$i" >/dev/null
        # The priming event matters: pgq.ticker() counts new events as the event
        # sequence's last_value minus the last tick's, and a fresh sequence reads 1
        # both before and after its first nextval, so a queue's very first event is
        # not counted and waits for the idle tick, whose interval has doubled since
        # the queue was made (pgq.ticker(text), seq_getval). Unprimed, whichever
        # ticker ran first on fresh databases saw no batch for tens of seconds.
        "${PSQL[@]}" -d "bench_$i" -c "create extension pgq; select pgq.create_queue('q'); select pgq.register_consumer('q','c'); select pgq.insert_event('q','prime','x');" >/dev/null
    done
}

# ticks_since N T: ticks made at or after T, over all databases (by tick_time: the
# maintenance the tickers run may delete old ticks meanwhile).
ticks_since() {
    local n=0 t
    for i in $(seq 1 "$1"); do
        t=$("${PSQL[@]}" -d "bench_$i" -c "select count(*) from pgq.tick where tick_time >= '$2'")
        n=$((n + t))
    done
    echo "$n"
}

# age_ticks N: move every queue's ticks an hour back, so each ticker starts with every
# queue due for its idle tick. Without it the ticker run second found the idle ticks
# taken by the first (pgq ticks an idle queue once per ticker_idle_period), and the
# "ticks made" of the two differed by that (341 against 501 at 500 databases once).
age_ticks() {
    for i in $(seq 1 "$1"); do
        "${PSQL[@]}" -d "bench_$i" -c "update pgq.tick set tick_time = tick_time - interval '1 hour'" >/dev/null
    done
}

# Lag probe in bench_1: insert an event, poll next_batch until it has a batch.
probe_lag() {
    local out=$1 end=$(($(date +%s) + RUN_SECS - 8))
    : >"$out"
    sleep 3
    while [ "$(date +%s)" -lt "$end" ]; do
        "${PSQL[@]}" -d bench_1 -c "select pgq.finish_batch(b) from pgq.next_batch('q','c') b where b is not null" >/dev/null
        local t0 t1
        t0=$(date +%s%N)
        "${PSQL[@]}" -d bench_1 -c "select pgq.insert_event('q','t','x')" >/dev/null
        # Bounded: a batch that does not come within PROBE_SECS is a miss, counted and
        # reported, never a hang (the C pgqd once stopped ticking bench_1 for good).
        local deadline=$(($(date +%s) + PROBE_SECS)) b=
        while [ "$(date +%s)" -lt "$deadline" ]; do
            b=$("${PSQL[@]}" -d bench_1 -c "select pgq.next_batch('q','c')")
            [ -n "$b" ] && break
            sleep 0.05
        done
        t1=$(date +%s%N)
        if [ -z "$b" ]; then
            echo miss >>"$out"
            continue
        fi
        "${PSQL[@]}" -d bench_1 -c "select pgq.finish_batch($b)" >/dev/null
        echo $(((t1 - t0) / 1000000)) >>"$out"
    done
}

# run NAME BINARY N: run one ticker alone for RUN_SECS, print a table row.
run() {
    local name=$1 bin=$2 n=$3 cfg=$DIR/pgqd-$1.ini
    cat >"$cfg" <<EOF
[pgqd]
base_connstr = host=$DIR port=$PORT user=postgres
initial_database = postgres
logfile = $DIR/$name.log
syslog = 0
EOF
    local before after pid cpu rss lag xacts=
    age_ticks "$n"
    before=$("${PSQL[@]}" -d postgres -c "select now()")
    if [ "$PROFILE" = callgrind ]; then
        # Instruction counts, stable on a shared machine: start-up excluded (counters
        # zeroed after WARMUP_SECS), then RUN_SECS of steady ticking.
        valgrind -q --tool=callgrind --callgrind-out-file="$DIR/cg-${name// /-}.%p" "$bin" -q "$cfg" 2>/dev/null &
        pid=$!
        sleep "$WARMUP_SECS"
        callgrind_control -z "$pid" >/dev/null 2>&1
        xacts=$(total_xacts)
    else
        "$bin" -q "$cfg" 2>/dev/null &
        pid=$!
    fi
    probe_lag "$DIR/lag-$name" &
    local probe=$!
    sleep "$RUN_SECS"
    if [ "$PROFILE" = callgrind ]; then
        callgrind_control -d "$pid" >/dev/null 2>&1
        xacts=$(($(total_xacts) - xacts))
        sleep 1
    fi
    cpu=$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$pid/stat")
    rss=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    wait "$probe" 2>/dev/null || true
    after=$(ticks_since "$n" "$before")
    lag=$({ grep -v miss "$DIR/lag-$name" || true; } | sort -n | awk '{a[NR]=$1} END {if (NR) printf "%d ms (n=%d)", a[int((NR+1)/2)], NR; else print "-"}')
    local missed
    missed=$(grep -c miss "$DIR/lag-$name" || true)
    [ "$missed" = 0 ] || lag="$lag, $missed missed (no batch within ${PROBE_SECS} s)"
    if [ "$PROFILE" = callgrind ]; then
        local ir
        # Part 1 is the dump taken at the end of the run (the counters were zeroed at its
        # start); the file written at exit holds only the seconds after it.
        ir=$(awk '/^summary:/ {print $2}' "$DIR/cg-${name// /-}.$pid.1")
        printf '| %s | %s | %s | %s | %s |\n' "$n" "$name" "$ir" "$xacts" "$((ir / (xacts > 0 ? xacts : 1)))"
        return
    fi
    printf '| %s | %s | %s s | %s MB | %s | %s |\n' "$n" "$name" "$cpu" "$rss" "$after" "$lag"
}

# Transactions committed in the bench databases (each ticker, retry or maintenance
# round is one or a few).
total_xacts() {
    "${PSQL[@]}" -d postgres -c "select sum(xact_commit) from pg_stat_database where datname like 'bench_%'"
}

if [ "$PROFILE" = callgrind ]; then
    echo "| databases | ticker | instructions (${RUN_SECS} s, after ${WARMUP_SECS} s warm-up) | transactions in the bench databases | instructions per transaction |"
    echo "|---|---|---|---|---|"
else
    echo "| databases | ticker | CPU (${RUN_SECS} s run) | peak RSS | ticks made | median insert→batch lag |"
    echo "|---|---|---|---|---|---|"
fi
for n in "${SIZES[@]}"; do
    ensure_dbs "$n"
    case " $TICKERS " in *" c "*) run "C pgqd 3.5" "$C_PGQD" "$n" ;; esac
    case " $TICKERS " in *" ours "*) run "hostkit pgqd" "$OURS" "$n" ;; esac
done
