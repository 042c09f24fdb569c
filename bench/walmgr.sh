#!/bin/bash
# hostkit walmgr beside Debian's pgbackrest (2.45) on the same real WAL segments.
#
# A private PostgreSQL 15 cluster (initdb by the script, Unix socket only) archives into
# a corpus directory while pgbench runs, until SEGMENTS full 16 MiB segments exist.
# Then, per compression setting and round, each side pushes every corpus segment into
# a fresh store/repository (one process per segment, as archive_command would run it)
# and gets every segment back into a fresh directory (as restore_command would), and
# every restored file is compared with the corpus (cmp; any difference aborts the run).
#
#   floor       push: dd bs=1M conv=fsync of the segment (none), or the gzip/zstd CLI
#               piped into dd conv=fsync (same level); get: the reverse (dd, or
#               gzip -dc / zstd -dc piped into dd conv=fsync). One fsync per file, no
#               directory fsync, no checksums, not atomic: a lower bound, not a peer.
#   pgbackrest  archive-push <absolute corpus path> / archive-get <name> <absolute dst>,
#               archive-async=n, compress-type gz|zst|none, compress-level 6|3.
#   walmgr      <master.ini> xarchive <absolute corpus path> <name> (cwd = data dir) /
#               <slave.ini> xrestore <name> <absolute dst> (cwd = an empty slave_data).
#
# All three run as postgres, one bash loop per (side, setting, round), timed with bash's
# `time` (wall, and user+system CPU of the loop and its children). Rounds rotate the
# order of the sides. Reported: medians over rounds.
#
# PARTS=async (see section 4) measures the background modes instead: archiving
# throughput under pgbench (walmgr archive_async = yes / parallel = N against pgbackrest
# archive-async=y / process-max=N, and both synchronous), and the replay time of a
# restored base backup fed by restore_command (walmgr restore_prefetch = 8 and 0 against
# pgbackrest archive-get with archive-async=y, against WAL already in pg_wal, and against
# a restore_command that only copies an uncompressed segment: the floor of any).
#
# Usage: bench/walmgr.sh   (env: SEGMENTS=32 ROUNDS=3 PORT=55433
#                           SETTINGS="none gzip:6 zstd:3" SIDES="floor pgbackrest walmgr"
#                           (SIDES may add pgbackrest-s3 walmgr-s3: the same push/get
#                           against an S3 service on loopback, moto's server behind TLS,
#                           pgbackrest with repo1-type=s3, walmgr with slave = s3://)
#                           PARTS="sync" or "async" (= "drain replay", each alone too) or "sync async"; PARALLEL=4
#                           BACKLOG=32 ASYNC_COMP=zstd:3 ASYNC_STORE=dir|s3: s3 puts both
#                           sides' stores of part 4 and 5 on the S3 service above)
# Needs root (runs the private cluster as postgres; installs pgbackrest and zstd if
# missing). Prints Markdown for BENCHMARKS.md on stdout, progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

SEGMENTS=${SEGMENTS:-32}
read -r -a PARTS <<<"${PARTS:-sync}"
PARALLEL=${PARALLEL:-4}
BACKLOG=${BACKLOG:-32}
ASYNC_COMP=${ASYNC_COMP:-zstd:3}
ASYNC_STORE=${ASYNC_STORE:-dir}
[[ $ASYNC_STORE =~ ^(dir|s3)$ ]] || { echo "walmgr-bench: ASYNC_STORE: '$ASYNC_STORE' is not dir or s3" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-55433}
read -r -a SETTINGS <<<"${SETTINGS:-none gzip:6 zstd:3}"
read -r -a SIDES <<<"${SIDES:-floor pgbackrest walmgr}"
PGBIN=/usr/lib/postgresql/15/bin
OURS=${OURS:-$(pwd)/target/release/walmgr}
SEGSIZE=16777216
for setting in "${SETTINGS[@]}"; do
    [[ $setting =~ ^(none|gzip:[1-9]|zstd:([1-9]|1[0-9]))$ ]] ||
        { echo "walmgr-bench: SETTINGS: '$setting' is not none, gzip:1-9 or zstd:1-19" >&2; exit 2; }
done

say() { echo "walmgr-bench: $*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

for pkg in pgbackrest zstd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
    say "installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >/dev/null ||
        { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" >/dev/null; }
done
has_part() { local p; for p in "${PARTS[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }
# async = drain (section 4) + replay (section 5); either may be asked for alone.
want_drain() { has_part async || has_part drain; }
want_replay() { has_part async || has_part replay; }
bg_parts() { want_drain || want_replay; }
if [ ! -x "$OURS" ]; then
    cargo build --release --locked --bin walmgr >/dev/null
fi
PGBR_VERSION=$(pgbackrest version | awk '{print $2}')

DIR=$(mktemp -d /tmp/hk-walmgr-bench.XXXXXX)
DATA=$DIR/data
CORPUS=$DIR/corpus
RUN=$DIR/run
LOG=$DIR/tools.log
S3_PID=
cleanup() {
    # shellcheck disable=SC2086 # two pids
    [ -n "$S3_PID" ] && kill $S3_PID 2>/dev/null
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
    [ -d "$RUN/replay" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$RUN/replay" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
chmod 755 "$DIR"
chown postgres: "$DIR"
as_pg() { runuser -u postgres -- "$@"; }
as_pg mkdir "$CORPUS" "$RUN"
as_pg touch "$LOG"

# --- 1. the cluster and its corpus of real segments --------------------------------
say "initdb + pgbench until $SEGMENTS segments are archived"
as_pg "$PGBIN/initdb" -D "$DATA" -A trust >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$DIR'
archive_mode = on
archive_command = 'cp %p $CORPUS/.%f.tmp && mv $CORPUS/.%f.tmp $CORPUS/%f'
max_wal_size = 4GB
EOF
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DIR/pg.log" -w start >/dev/null
PSQL=(as_pg psql -h "$DIR" -p "$PORT" -U postgres -X -q -tA)
"${PSQL[@]}" -d postgres -c "create database bench"
as_pg "$PGBIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -i -s 20 -q bench >/dev/null 2>&1
if want_replay; then
    # The base backup the replay part restores (its WAL: the corpus from here on).
    as_pg "$PGBIN/pg_basebackup" -h "$DIR" -p "$PORT" -U postgres -D "$DIR/base" -X none -c fast >/dev/null
    BASE_START=$(sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]*\))$/\1/p' "$DIR/base/backup_label")
fi
# Segments after this one hold pgbench's OLTP WAL (updates, full-page images) rather
# than the bulk load: keep at least half the corpus from there, and take the newest N.
FIRST_RUN=$("${PSQL[@]}" -d postgres -c "select pg_walfile_name(pg_switch_wal())")
full_segs() { find "$CORPUS" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -size "${SEGSIZE}c" -printf '%f\n' | sort; }
deadline=$((SECONDS + 900))
while [ "$(full_segs | wc -l)" -lt "$SEGMENTS" ] ||
    [ "$(full_segs | awk -v f="$FIRST_RUN" '($1 "") > (f "")' | wc -l)" -lt $(((SEGMENTS + 1) / 2)) ]; do
    [ "$SECONDS" -lt "$deadline" ] || die "only $(full_segs | wc -l) segments archived after 900 s (see $DIR/pg.log)"
    as_pg "$PGBIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -c 2 -j 2 -T 10 bench >/dev/null 2>&1
    "${PSQL[@]}" -d postgres -c "select pg_switch_wal()" >/dev/null
    sleep 1
done
full_segs | tail -n "$SEGMENTS" >"$DIR/names"
FROM_RUN=$(awk -v f="$FIRST_RUN" '($1 "") > (f "")' "$DIR/names" | wc -l)
# The corpus stays as it is from here: archive nothing more into it.
"${PSQL[@]}" -d postgres -c "alter system set archive_command = '/bin/true'" -c "select pg_reload_conf()" -c checkpoint >/dev/null
sync
mapfile -t NAMES <"$DIR/names"
[ "${#NAMES[@]}" -eq "$SEGMENTS" ] || die "corpus has ${#NAMES[@]} segments, want $SEGMENTS"
RAW=$((SEGMENTS * SEGSIZE))
say "corpus: ${NAMES[0]} .. ${NAMES[-1]} ($SEGMENTS segments, $FROM_RUN from timed pgbench runs)"

# --- the S3 service for the -s3 sides: moto's server behind socat's TLS (a CA of this run)
s3_sides() {
    local s
    bg_parts && [ "$ASYNC_STORE" = s3 ] && return 0
    for s in "${SIDES[@]}"; do case $s in *-s3) return 0 ;; esac; done
    return 1
}
S3_BUCKET=bench
if s3_sides; then
    MOTO=$(command -v moto_server || echo /opt/hostkit-test/moto/bin/moto_server)
    [ -x "$MOTO" ] || die "moto_server not found (run tests/setup-host.sh)"
    S3_DIR=$DIR/s3
    mkdir -p "$S3_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca -keyout "$S3_DIR/ca.key" \
        -out "$S3_DIR/ca.pem" >/dev/null 2>&1 &&
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$S3_DIR/key.pem" \
            -out "$S3_DIR/req.pem" >/dev/null 2>&1 &&
        printf 'subjectAltName = IP:127.0.0.1, DNS:127.0.0.1\n' >"$S3_DIR/san.cnf" &&
        openssl x509 -req -in "$S3_DIR/req.pem" -CA "$S3_DIR/ca.pem" -CAkey "$S3_DIR/ca.key" \
            -CAcreateserial -days 2 -extfile "$S3_DIR/san.cnf" -out "$S3_DIR/cert.pem" >/dev/null 2>&1 ||
        die "openssl: could not make the service's certificate"
    chmod 755 "$S3_DIR" && chmod 644 "$S3_DIR"/*.pem
    port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
    MOTO_PORT=$(port) S3_PORT=$(port)
    "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$S3_DIR/moto.log" 2>&1 &
    S3_PID=$!
    # TLS in front of it by socat: moto's own TLS (werkzeug) ends connections without a
    # close_notify, which pgbackrest's OpenSSL 3 reports as an error.
    command -v socat >/dev/null || die "socat is not installed (run tests/setup-host.sh)"
    socat "OPENSSL-LISTEN:$S3_PORT,bind=127.0.0.1,reuseaddr,fork,verify=0,cert=$S3_DIR/cert.pem,key=$S3_DIR/key.pem" \
        "TCP:127.0.0.1:$MOTO_PORT" 2>"$S3_DIR/socat.log" &
    S3_PID="$S3_PID $!"
    S3_URL=https://127.0.0.1:$S3_PORT
    for _ in $(seq 150); do curl -s -o /dev/null --cacert "$S3_DIR/ca.pem" "$S3_URL/" && break; sleep 0.2; done
    curl -sf -o /dev/null --cacert "$S3_DIR/ca.pem" -X PUT "$S3_URL/$S3_BUCKET" ||
        die "moto_server: could not create bucket $S3_BUCKET (see $S3_DIR/moto.log)"
    # (moto_server may be a pyenv shim: the python beside it, else the one on PATH)
    MOTO_VERSION=$({ "$(dirname "$MOTO")/python" -c 'import moto; print(moto.__version__)' ||
        python3 -c 'import moto; print(moto.__version__)'; } 2>/dev/null || echo "?")
    say "S3 service: moto_server $MOTO_VERSION at $S3_URL (TLS by socat)"
fi
# pgbr_s3 PATH: the [global] lines of a pgbackrest repository at PATH in the bucket.
S3_KEYS=(AKIABENCHBENCHBENCH0 bench-secret)
pgbr_s3() {
    echo "repo1-type=s3"
    echo "repo1-path=$1"
    echo "repo1-s3-bucket=$S3_BUCKET"
    echo "repo1-s3-endpoint=127.0.0.1"
    echo "repo1-storage-port=$S3_PORT"
    echo "repo1-storage-ca-file=$S3_DIR/ca.pem"
    echo "repo1-s3-region=us-east-1"
    echo "repo1-s3-uri-style=path"
    echo "repo1-s3-key=${S3_KEYS[0]}"
    echo "repo1-s3-key-secret=${S3_KEYS[1]}"
}
# s3_bytes PREFIX: the bytes stored under PREFIX in the bucket (one listing page holds
# them: two or three objects per segment).
s3_bytes() {
    curl -sf --cacert "$S3_DIR/ca.pem" "$S3_URL/$S3_BUCKET?list-type=2&max-keys=1000&prefix=$1/" |
        grep -o '<Size>[0-9]*</Size>' | tr -dc '0-9\n' | awk '{t += $1} END {print t + 0}'
}

if has_part sync; then
# --- 2. the timed loops (run as postgres) -------------------------------------------
# loop.sh KIND SIDE COMP LEVEL CWD CONF STORE DST NAMES LOG WALMGR CORPUS
# prints "<wall s> <user s> <sys s>" of the whole loop.
cat >"$DIR/loop.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
kind=$1 side=$2 comp=$3 level=$4 cwd=$5 conf=$6 store=$7 dst=$8 names=$9 log=${10} walmgr=${11} corpus=${12}
mapfile -t segs <"$names"
cd "$cwd"
ext=; [ "$comp" = gzip ] && ext=.gz; [ "$comp" = zstd ] && ext=.zst
one() {
    local n=$1
    case $kind/$side in
    push/floor)
        case $comp in
        none) dd if="$corpus/$n" of="$store/$n" bs=1M conv=fsync status=none ;;
        gzip) gzip -"$level" -c "$corpus/$n" | dd of="$store/$n$ext" bs=1M iflag=fullblock conv=fsync status=none ;;
        zstd) zstd -q -"$level" -c "$corpus/$n" | dd of="$store/$n$ext" bs=1M iflag=fullblock conv=fsync status=none ;;
        esac ;;
    get/floor)
        case $comp in
        none) dd if="$store/$n" of="$dst/$n" bs=1M conv=fsync status=none ;;
        gzip) gzip -dc "$store/$n$ext" | dd of="$dst/$n" bs=1M iflag=fullblock conv=fsync status=none ;;
        zstd) zstd -q -dc "$store/$n$ext" | dd of="$dst/$n" bs=1M iflag=fullblock conv=fsync status=none ;;
        esac ;;
    push/pgbackrest*) pgbackrest --config="$conf" --stanza=bench archive-push "$corpus/$n" ;;
    get/pgbackrest*) pgbackrest --config="$conf" --stanza=bench archive-get "$n" "$dst/$n" ;;
    push/walmgr*) "$walmgr" "$conf" xarchive "$corpus/$n" "$n" ;;
    get/walmgr*) "$walmgr" "$conf" xrestore "$n" "$dst/$n" ;;
    esac
}
all() {
    local n
    for n in "${segs[@]}"; do
        one "$n" >>"$log" 2>&1 || { echo "$kind $side $comp: $n failed (exit $?)" >>"$log"; return 1; }
    done
}
TIMEFORMAT='%3R %3U %3S'
{ time all; } 2>&1
EOF
chown postgres: "$DIR/loop.sh"

# bench_side SIDE COMP LEVEL ROUND: fresh store, push all, get all, cmp all, record.
declare -A PUSH_WALL PUSH_CPU GET_WALL GET_CPU BYTES
# shellcheck disable=SC2034 # the CPU arrays are read through med's nameref
bench_side() {
    local side=$1 comp=$2 level=$3 round=$4 key="$1|$2|$4"
    local store=$RUN/$side-store dst=$RUN/$side-get cwd=$DATA conf=- pushconf getconf out
    as_pg rm -rf "$RUN/$side-store" "$RUN/$side-get" "$RUN/$side-slave"
    as_pg mkdir -p "$dst"
    case $side in
    floor)
        as_pg mkdir -p "$store"
        pushconf=- getconf=- ;;
    pgbackrest | pgbackrest-s3)
        local pgcomp=$comp
        [ "$comp" = gzip ] && pgcomp=gz
        [ "$comp" = zstd ] && pgcomp=zst
        conf=$RUN/pgbackrest.conf
        {
            echo "[global]"
            if [ "$side" = pgbackrest-s3 ]; then
                pgbr_s3 "/$side-$comp-$round"
            else
                echo "repo1-path=$store"
            fi
            echo "lock-path=$RUN/pgbackrest-lock"
            echo "spool-path=$RUN/pgbackrest-spool"
            echo "log-level-console=warn"
            echo "log-level-stderr=warn"
            echo "log-level-file=off"
            echo "archive-async=n"
            echo "compress-type=$pgcomp"
            [ "$comp" = none ] || echo "compress-level=$level"
            echo "[bench]"
            echo "pg1-path=$DATA"
            echo "pg1-port=$PORT"
            echo "pg1-socket-path=$DIR"
        } | as_pg tee "$conf" >/dev/null
        as_pg pgbackrest --config="$conf" --stanza=bench stanza-create >>"$LOG" 2>&1 ||
            die "pgbackrest stanza-create failed (see $LOG): $(tail -n 3 "$LOG")"
        pushconf=$conf getconf=$conf ;;
    walmgr | walmgr-s3)
        pushconf=$RUN/master.ini getconf=$RUN/slave.ini
        local where=$store s3=
        if [ "$side" = walmgr-s3 ]; then
            where=s3://$S3_BUCKET/$side-$comp-$round
            s3=$(printf 's3_endpoint = %s\ns3_ca_file = %s\ns3_access_key_id = %s\ns3_secret_access_key = %s\n' \
                "$S3_URL" "$S3_DIR/ca.pem" "${S3_KEYS[0]}" "${S3_KEYS[1]}")
        fi
        {
            echo "[walmgr]"
            echo "master_data = $DATA"
            echo "slave = $where"
            echo "compression = $comp"
            [ "$comp" = none ] || echo "compression_level = $level"
            [ -z "$s3" ] || echo "$s3"
        } | as_pg tee "$pushconf" >/dev/null
        as_pg mkdir -p "$RUN/$side-slave"
        { printf '[walmgr]\nslave = %s\nslave_data = %s\nrestore_prefetch = 0\n' "$where" "$RUN/$side-slave"
          [ -z "$s3" ] || echo "$s3"; } | as_pg tee "$getconf" >/dev/null
        chmod 600 "$pushconf" "$getconf"
        as_pg "$OURS" "$getconf" setup >>"$LOG" 2>&1 || die "walmgr slave setup failed: $(tail -n 3 "$LOG")"
        ;;
    esac
    sync # start from a clean page cache writeback state (not timed)
    out=$(as_pg bash "$DIR/loop.sh" push "$side" "$comp" "$level" "$DATA" "$pushconf" "$store" "$dst" "$DIR/names" "$LOG" "$OURS" "$CORPUS") ||
        die "$side push ($comp) failed: $(tail -n 5 "$LOG")"
    read -r w u s <<<"$out"
    PUSH_WALL[$key]=$w
    PUSH_CPU[$key]=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
    case $side in
    *-s3) BYTES[$key]=$(s3_bytes "$side-$comp-$round") ;;
    *) BYTES[$key]=$(du --apparent-size -sb "$store" | cut -f1) ;;
    esac
    case $side in walmgr*) cwd=$RUN/$side-slave ;; esac
    sync
    out=$(as_pg bash "$DIR/loop.sh" get "$side" "$comp" "$level" "$cwd" "$getconf" "$store" "$dst" "$DIR/names" "$LOG" "$OURS" "$CORPUS") ||
        die "$side get ($comp) failed: $(tail -n 5 "$LOG")"
    read -r w u s <<<"$out"
    GET_WALL[$key]=$w
    GET_CPU[$key]=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
    local n
    for n in "${NAMES[@]}"; do
        cmp -s "$CORPUS/$n" "$dst/$n" || die "$side ($comp, round $round): restored $n differs from the corpus segment"
    done
    say "round $round $comp $side: push ${PUSH_WALL[$key]} s, get ${GET_WALL[$key]} s, ${BYTES[$key]} bytes stored, all $SEGMENTS restored segments identical"
    as_pg rm -rf "$dst" "$store"
    sync
}

for round in $(seq 1 "$ROUNDS"); do
    # rotate the order of the sides every round
    order=()
    for i in $(seq 0 $((${#SIDES[@]} - 1))); do
        order+=("${SIDES[$(((i + round - 1) % ${#SIDES[@]}))]}")
    done
    for setting in "${SETTINGS[@]}"; do
        comp=${setting%%:*} level=${setting#*:}
        [ "$comp" = none ] && level=0
        for side in "${order[@]}"; do
            bench_side "$side" "$comp" "$level" "$round"
        done
    done
done

# --- 3. report ------------------------------------------------------------------------
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
# med ARRAYNAME SIDE COMP: median over rounds
med() {
    local -n arr=$1
    local vals=() r
    for r in $(seq 1 "$ROUNDS"); do vals+=("${arr[$2|$3|$r]}"); done
    median "${vals[@]}"
}
ms() { awk -v t="$1" -v n="$SEGMENTS" 'BEGIN {printf "%.1f", 1000 * t / n}'; }
rate() { awk -v t="$1" -v n="$SEGMENTS" 'BEGIN {printf "%.1f", n / t}'; }
label() {
    case $1 in
    floor) echo "floor (dd conv=fsync${2:+, $2 CLI})" ;;
    pgbackrest) echo "pgbackrest $PGBR_VERSION" ;;
    walmgr) echo "hostkit walmgr" ;;
    pgbackrest-s3) echo "pgbackrest $PGBR_VERSION, S3" ;;
    walmgr-s3) echo "hostkit walmgr, S3" ;;
    esac
}
has() { local s; for s in "${SIDES[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

echo "$SEGMENTS segments of 16 MiB ($((RAW / 1048576)) MiB) from pgbench ($((SEGMENTS - FROM_RUN)) bulk load -i -s 20, $FROM_RUN timed runs), $ROUNDS rounds, medians; ms per segment include process start and fsync; CPU = user+system of the loop and its children."
echo
echo "| compression | side | push seg/s | push ms/seg (CPU) | get seg/s | get ms/seg (CPU) | stored | stored/raw |"
echo "|---|---|---|---|---|---|---|---|"
for setting in "${SETTINGS[@]}"; do
    comp=${setting%%:*} level=${setting#*:}
    title=$comp
    [ "$comp" = none ] || title="$comp $level"
    cli=
    [ "$comp" = none ] || cli="${comp} -$level"
    for side in "${SIDES[@]}"; do
        pw=$(med PUSH_WALL "$side" "$comp") pc=$(med PUSH_CPU "$side" "$comp")
        gw=$(med GET_WALL "$side" "$comp") gc=$(med GET_CPU "$side" "$comp")
        b=$(med BYTES "$side" "$comp")
        printf '| %s | %s | %s | %s (%s) | %s | %s (%s) | %s | %s |\n' "$title" "$(label "$side" "$cli")" \
            "$(rate "$pw")" "$(ms "$pw")" "$(ms "$pc")" "$(rate "$gw")" "$(ms "$gw")" "$(ms "$gc")" \
            "$(awk -v b="$b" 'BEGIN {printf "%.1f MiB", b / 1048576}')" \
            "$(awk -v b="$b" -v r="$RAW" 'BEGIN {printf "%.1f%%", 100 * b / r}')"
    done
done

for pair in "walmgr pgbackrest" "walmgr-s3 pgbackrest-s3"; do
    read -r ours theirs <<<"$pair"
    has "$ours" && has "$theirs" || continue
    echo
    echo "| compression | round | push time $ours/$theirs | get time $ours/$theirs | stored bytes $ours/$theirs |"
    echo "|---|---|---|---|---|"
    for setting in "${SETTINGS[@]}"; do
        comp=${setting%%:*} level=${setting#*:}
        title=$comp
        [ "$comp" = none ] || title="$comp $level"
        pr=() gr=() br=()
        for r in $(seq 1 "$ROUNDS"); do
            pr+=("$(awk -v a="${PUSH_WALL[$ours|$comp|$r]}" -v b="${PUSH_WALL[$theirs|$comp|$r]}" 'BEGIN {printf "%.2f", a / b}')")
            gr+=("$(awk -v a="${GET_WALL[$ours|$comp|$r]}" -v b="${GET_WALL[$theirs|$comp|$r]}" 'BEGIN {printf "%.2f", a / b}')")
            br+=("$(awk -v a="${BYTES[$ours|$comp|$r]}" -v b="${BYTES[$theirs|$comp|$r]}" 'BEGIN {printf "%.3f", a / b}')")
            printf '| %s | %s | %s | %s | %s |\n' "$title" "$r" "${pr[-1]}" "${gr[-1]}" "${br[-1]}"
        done
        printf '| %s | **median** | **%s** | **%s** | **%s** |\n' "$title" "$(median "${pr[@]}")" "$(median "${gr[@]}")" "$(median "${br[@]}")"
    done
done
fi

if bg_parts; then
# --- 4. archiving throughput under pgbench -------------------------------------------
# Per side and round: archive_command = '' while a bulk insert leaves BACKLOG segments
# ready in pg_wal (not timed); then pgbench starts (-c 2 -j 2), the side's
# archive_command is set and reloaded, and the time until pg_stat_archiver reports the
# newest of those segments archived is the drain time (segments/s = BACKLOG / time).
# walmgr-async: archive_async = yes, parallel = PARALLEL; pgbackrest-async: archive-async=y,
# process-max=PARALLEL; the -sync sides are the same tools without it. Between sides
# every background helper is waited for (walmgr's pusher lock, pgbackrest's processes).
ACOMP=${ASYNC_COMP%%:*} ALEVEL=${ASYNC_COMP#*:}
[[ $ASYNC_COMP =~ ^(none|gzip:[1-9]|zstd:([1-9]|1[0-9]))$ ]] || die "ASYNC_COMP: '$ASYNC_COMP'"
[ "$ACOMP" = none ] && ALEVEL=0
PGBR_COMP=$ACOMP
[ "$ACOMP" = gzip ] && PGBR_COMP=gz
[ "$ACOMP" = zstd ] && PGBR_COMP=zst
ASIDES=(walmgr-sync walmgr-async pgbackrest-sync pgbackrest-async)
sql() { "${PSQL[@]}" -d postgres -c "$1"; }
set_archive_command() {
    sql "alter system set archive_command = '$1'" >/dev/null
    sql "select pg_reload_conf()" >/dev/null
}
ready_count() { find "$DATA/pg_wal/archive_status" -name '*.ready' | wc -l; }
newest_ready() { find "$DATA/pg_wal/archive_status" -name '[0-9A-F]*.ready' -printf '%f\n' | sed 's/\.ready$//' | grep -E '^[0-9A-F]{24}$' | sort | tail -n 1; }
pgbr_conf() { # pgbr_conf FILE STORE-NAME ASYNC(y|n) [PG1-PATH]
    {
        echo "[global]"
        if [ "$ASYNC_STORE" = s3 ]; then
            pgbr_s3 "/$2"
        else
            echo "repo1-path=$RUN/$2"
        fi
        echo "lock-path=$RUN/pgbackrest-lock"
        echo "spool-path=$RUN/pgbackrest-spool"
        echo "log-level-console=warn"
        echo "log-level-stderr=warn"
        echo "log-level-file=off"
        echo "archive-async=$3"
        echo "process-max=$PARALLEL"
        echo "archive-get-queue-max=128MB"
        echo "compress-type=$PGBR_COMP"
        [ "$ACOMP" = none ] || echo "compress-level=$ALEVEL"
        echo "[bench]"
        echo "pg1-path=${4:-$DATA}"
        echo "pg1-port=$PORT"
        echo "pg1-socket-path=$DIR"
    } | as_pg tee "$1" >/dev/null
}
# walmgr's store STORE-NAME: a directory in $RUN, or a prefix in the bucket (with the
# s3_* lines every ini of it needs).
wstore() { if [ "$ASYNC_STORE" = s3 ]; then echo "s3://$S3_BUCKET/$1"; else echo "$RUN/$1"; fi; }
wkeys() {
    [ "$ASYNC_STORE" = s3 ] || return 0
    printf 's3_endpoint = %s\ns3_ca_file = %s\ns3_access_key_id = %s\ns3_secret_access_key = %s\n' \
        "$S3_URL" "$S3_DIR/ca.pem" "${S3_KEYS[0]}" "${S3_KEYS[1]}"
}
# wini FILE LINES...: an ini only its owner reads (it may hold the S3 secret).
wini() {
    local f=$1
    shift
    { echo "[walmgr]"; printf '%s\n' "$@"; wkeys; } | as_pg tee "$f" >/dev/null
    chmod 600 "$f"
}
walmgr_ini() { # walmgr_ini FILE STORE-NAME ASYNC(yes|no)
    {
        echo "[walmgr]"
        echo "master_data = $DATA"
        echo "slave = $(wstore "$2")"
        wkeys
        echo "compression = $ACOMP"
        [ "$ACOMP" = none ] || echo "compression_level = $ALEVEL"
        echo "archive_async = $3"
        echo "parallel = $PARALLEL"
        echo "spool_dir = $RUN/walmgr-spool"
        echo "logfile = $LOG"
    } | as_pg tee "$1" >/dev/null
    chmod 600 "$1"
}
# Background archivers keep pushing WAL that autovacuum and checkpoints still write after
# pgbench stops, so they are stopped (by pid: the pusher's lock file; pgbackrest's async
# processes of this bench's configuration) before the next side's backlog is made.
helpers_gone() {
    local pids fg i
    for i in $(seq 1 600); do
        pids=$(pgrep -u postgres -f -- "$RUN/async-pgbackrest.conf .*archive-push:async|$RUN/async-master.ini xpush" || true)
        # PostgreSQL's archive_command still running: waited for, not killed.
        fg=$(pgrep -u postgres -f -- "$RUN/async-pgbackrest.conf .*archive-push |$RUN/async-master.ini xarchive" || true)
        [ -n "$pids$fg" ] || return 0
        # The helpers serve the foreground call still running: stopped after it.
        # shellcheck disable=SC2086 # a list of pids
        [ -n "$fg" ] || kill $pids 2>/dev/null || true
        sleep 0.2
    done
    die "background archivers still running after 120 s: $pids $fg"
}
declare -A DRAIN RATE BL
want_drain && for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((${#ASIDES[@]} - 1))); do
        side=${ASIDES[$(((i + round - 1) % ${#ASIDES[@]}))]}
        store=async-$side-$round
        set_archive_command ''
        helpers_gone
        as_pg rm -rf "$RUN/$store" "$RUN/walmgr-spool" "$RUN/pgbackrest-spool"
        case $side in
        walmgr-*)
            mode=no; [ "$side" = walmgr-async ] && mode=yes
            walmgr_ini "$RUN/async-master.ini" "$store" "$mode"
            wini "$RUN/async-slave.ini" "slave = $(wstore "$store")"
            as_pg "$OURS" "$RUN/async-slave.ini" setup >>"$LOG" 2>&1
            cmd="$OURS $RUN/async-master.ini xarchive %p %f" ;;
        pgbackrest-*)
            mode=n; [ "$side" = pgbackrest-async ] && mode=y
            pgbr_conf "$RUN/async-pgbackrest.conf" "$store" "$mode"
            as_pg pgbackrest --config="$RUN/async-pgbackrest.conf" --stanza=bench stanza-create >>"$LOG" 2>&1 ||
                die "pgbackrest stanza-create failed: $(tail -n 3 "$LOG")"
            cmd="pgbackrest --config=$RUN/async-pgbackrest.conf --stanza=bench archive-push %p" ;;
        esac
        # The backlog: real rows (not empty switched segments), left ready in pg_wal.
        sql "create table if not exists filler (g int, t text)" >/dev/null
        while [ "$(ready_count)" -lt "$BACKLOG" ]; do
            sql "insert into filler select g, md5(g::text) || md5((g + 1)::text) from generate_series(1, 200000) g" >/dev/null
        done
        sql "select pg_switch_wal()" >/dev/null
        sleep 1
        backlog=$(ready_count) target=$(newest_ready)
        sync
        as_pg "$PGBIN/pgbench" -h "$DIR" -p "$PORT" -U postgres -n -c 2 -j 2 -T 600 bench >/dev/null 2>&1 &
        load=$!
        t0=$(date +%s.%N)
        set_archive_command "$cmd"
        until [ "$(sql "select coalesce(last_archived_wal, '') >= '$target' from pg_stat_archiver")" = t ]; do
            sleep 0.1
            awk -v t0="$t0" -v t="$(date +%s.%N)" 'BEGIN {exit !(t - t0 > 900)}' && die "$side: $target not archived after 900 s"
        done
        t1=$(date +%s.%N)
        kill "$load" 2>/dev/null || true
        wait "$load" 2>/dev/null || true
        DRAIN[$side|$round]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        RATE[$side|$round]=$(awk -v n="$backlog" -v t="${DRAIN[$side|$round]}" 'BEGIN {printf "%.2f", n / t}')
        BL[$side|$round]=$backlog
        sql "truncate filler" >/dev/null
        failed=$(sql "select failed_count from pg_stat_archiver")
        say "round $round async $side: $backlog segments (up to $target) archived in ${DRAIN[$side|$round]} s under pgbench (archiver failures so far: $failed)"
    done
done
set_archive_command ''
helpers_gone

if want_replay; then
# --- 5. replay of a restored base backup --------------------------------------------
# The base backup taken before the corpus run, restored into a fresh copy (recovery.signal,
# archive_mode off) and started; timed from pg_ctl start until pg_is_in_recovery() is
# false (end of the archive: promoted). WAL = the corpus from the backup's start segment,
# stored (not timed) in a walmgr store and a pgbackrest repository (ASYNC_COMP).
# local: the same segments copied into the copy's pg_wal, no restore_command.
# floor-cp: restore_command = cp from a directory of the uncompressed segments: what any
# restore_command costs (a shell, a process, PostgreSQL's own fsync of each restored
# segment), with nothing to fetch, check or decompress.
mapfile -t RANGE < <(find "$CORPUS" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -printf '%f\n' | sort | awk -v s="$BASE_START" '$1 >= s')
say "replay range: ${RANGE[0]} .. ${RANGE[-1]} (${#RANGE[@]} segments)"
RSTORE=replay-store RREPO=replay-repo
as_pg rm -rf "$RUN/$RSTORE" "$RUN/$RREPO" "$RUN/walmgr-spool"
walmgr_ini "$RUN/replay-master.ini" "$RSTORE" no
for pf in 0 8; do
    wini "$RUN/replay-slave-$pf.ini" "slave = $(wstore "$RSTORE")" "restore_prefetch = $pf" "logfile = $LOG"
done
as_pg "$OURS" "$RUN/replay-slave-0.ini" setup >>"$LOG" 2>&1
pgbr_conf "$RUN/replay-pgbackrest.conf" "$RREPO" y
as_pg pgbackrest --config="$RUN/replay-pgbackrest.conf" --stanza=bench stanza-create >>"$LOG" 2>&1 || die "stanza-create (replay)"
# archive-get takes a relative %p from pg1-path: the copy being recovered.
pgbr_conf "$RUN/replay-get-pgbackrest.conf" "$RREPO" y "$RUN/replay"
for n in "${RANGE[@]}"; do
    (cd "$DATA" && as_pg "$OURS" "$RUN/replay-master.ini" xarchive "$CORPUS/$n" "$n") >>"$LOG" 2>&1 || die "walmgr xarchive $n"
    as_pg pgbackrest --config="$RUN/replay-pgbackrest.conf" --stanza=bench --archive-async=n archive-push "$CORPUS/$n" >>"$LOG" 2>&1 || die "pgbackrest archive-push $n"
done
as_pg mkdir -p "$RUN/replay-plain"
for n in "${RANGE[@]}"; do as_pg cp "$CORPUS/$n" "$RUN/replay-plain/$n"; done
RPORT=$((PORT + 1))
declare -A REPLAY REPLAY_ROWS
RSIDES=(local floor-cp walmgr-prefetch-0 walmgr-prefetch-8 pgbackrest-async-get)
for round in $(seq 1 "$ROUNDS"); do
    for i in $(seq 0 $((${#RSIDES[@]} - 1))); do
        side=${RSIDES[$(((i + round - 1) % ${#RSIDES[@]}))]}
        copy=$RUN/replay
        as_pg rm -rf "$copy" "$RUN/pgbackrest-spool"
        as_pg cp -a "$DIR/base" "$copy"
        case $side in
        local)
            for n in "${RANGE[@]}"; do as_pg cp "$CORPUS/$n" "$copy/pg_wal/$n"; done ;;
        floor-cp)
            as_pg touch "$copy/recovery.signal"
            echo "restore_command = 'cp $RUN/replay-plain/%f %p'" | as_pg tee -a "$copy/postgresql.conf" >/dev/null ;;
        walmgr-prefetch-*)
            as_pg touch "$copy/recovery.signal"
            echo "restore_command = '$OURS $RUN/replay-slave-${side##*-}.ini xrestore %f %p %r'" | as_pg tee -a "$copy/postgresql.conf" >/dev/null ;;
        pgbackrest-async-get)
            as_pg touch "$copy/recovery.signal"
            echo "restore_command = 'pgbackrest --config=$RUN/replay-get-pgbackrest.conf --stanza=bench archive-get %f \"%p\"'" | as_pg tee -a "$copy/postgresql.conf" >/dev/null ;;
        esac
        sync
        t0=$(date +%s.%N)
        as_pg "$PGBIN/pg_ctl" -D "$copy" -l "$RUN/replay.log" -o "-p $RPORT -c archive_mode=off -c hot_standby=on" start >/dev/null ||
            die "$side: pg_ctl start failed: $(tail -n 8 "$RUN/replay.log")"
        until [ "$(as_pg psql -h "$DIR" -p "$RPORT" -U postgres -X -q -tA -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do
            sleep 0.05
            awk -v t0="$t0" -v t="$(date +%s.%N)" 'BEGIN {exit !(t - t0 > 900)}' && die "$side: not promoted after 900 s (see $RUN/replay.log)"
        done
        t1=$(date +%s.%N)
        REPLAY[$side|$round]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        rows=$(as_pg psql -h "$DIR" -p "$RPORT" -U postgres -X -q -tA -d bench -c 'select count(*) from pgbench_history')
        as_pg "$PGBIN/pg_ctl" -D "$copy" -m immediate stop >/dev/null
        used=
        [ "$side" = walmgr-prefetch-8 ] && used=", $(grep -c 'restored from the prefetch spool' "$LOG") segments from the prefetch spool so far"
        say "round $round replay $side: ${REPLAY[$side|$round]} s, pgbench_history $rows rows$used"
        REPLAY_ROWS[$side|$round]=$rows
    done
done
as_pg rm -rf "$RUN/replay" "$RUN/replay-plain"
for key in "${!REPLAY_ROWS[@]}"; do
    [ "${REPLAY_ROWS[$key]}" = "${REPLAY_ROWS[local|1]}" ] || die "replay $key: ${REPLAY_ROWS[$key]} history rows, local replay ${REPLAY_ROWS[local|1]}"
done
fi

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
amed() { # amed ARRAY SIDE
    local -n arr=$1
    local vals=() r
    for r in $(seq 1 "$ROUNDS"); do vals+=("${arr[$2|$r]}"); done
    median "${vals[@]}"
}
echo
where="a directory store / pgbackrest repository"
[ "$ASYNC_STORE" = s3 ] && where="an S3 store (moto $MOTO_VERSION behind TLS) / pgbackrest repo1-type=s3 on the same service"
if want_drain; then
echo "Archiving into $where under pgbench (-c 2 -j 2): a backlog of at least $BACKLOG ready 16 MiB segments (bulk insert), $ASYNC_COMP, parallel / process-max = $PARALLEL; $ROUNDS rounds, medians."
echo
echo "| side | segments/s (rounds: segments in s) |"
echo "|---|---|"
for side in "${ASIDES[@]}"; do
    vals=$(for r in $(seq 1 "$ROUNDS"); do printf '%s in %s s, ' "${BL[$side|$r]}" "${DRAIN[$side|$r]}"; done)
    printf '| %s | **%s** (%s) |\n' "$side" "$(amed RATE "$side")" "${vals%, }"
done
fi
if want_replay; then
echo
echo "Replay of a restored base backup through ${#RANGE[@]} segments ($((${#RANGE[@]} * 16)) MiB of WAL, ${ASYNC_COMP}) from $where, until promoted; $ROUNDS rounds, medians."
echo
echo "| side | replay s (rounds) | vs local pg_wal |"
echo "|---|---|---|"
for side in "${RSIDES[@]}"; do
    vals=$(for r in $(seq 1 "$ROUNDS"); do printf '%s ' "${REPLAY[$side|$r]}"; done)
    m=$(amed REPLAY "$side") l=$(amed REPLAY local)
    printf '| %s | %s (%s) | %s |\n' "$side" "$m" "${vals% }" "$(awk -v a="$m" -v b="$l" 'BEGIN {printf "%.2fx", a / b}')"
done
fi
fi
