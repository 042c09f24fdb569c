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
# Usage: bench/walmgr.sh   (env: SEGMENTS=32 ROUNDS=3 PORT=55433
#                           SETTINGS="none gzip:6 zstd:3" SIDES="floor pgbackrest walmgr")
# Needs root (runs the private cluster as postgres; installs pgbackrest and zstd if
# missing). Prints Markdown for BENCHMARKS.md on stdout, progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

SEGMENTS=${SEGMENTS:-32}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-55433}
read -r -a SETTINGS <<<"${SETTINGS:-none gzip:6 zstd:3}"
read -r -a SIDES <<<"${SIDES:-floor pgbackrest walmgr}"
PGBIN=/usr/lib/postgresql/15/bin
OURS=$(pwd)/target/release/walmgr
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
for side in "${SIDES[@]}"; do
    if [ "$side" = walmgr ] && [ ! -x "$OURS" ]; then
        cargo build --release --locked --bin walmgr >/dev/null
    fi
done
PGBR_VERSION=$(pgbackrest version | awk '{print $2}')

DIR=$(mktemp -d /tmp/hk-walmgr-bench.XXXXXX)
DATA=$DIR/data
CORPUS=$DIR/corpus
RUN=$DIR/run
LOG=$DIR/tools.log
cleanup() {
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1 || true
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
    push/pgbackrest) pgbackrest --config="$conf" --stanza=bench archive-push "$corpus/$n" ;;
    get/pgbackrest) pgbackrest --config="$conf" --stanza=bench archive-get "$n" "$dst/$n" ;;
    push/walmgr) "$walmgr" "$conf" xarchive "$corpus/$n" "$n" ;;
    get/walmgr) "$walmgr" "$conf" xrestore "$n" "$dst/$n" ;;
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
    pgbackrest)
        local pgcomp=$comp
        [ "$comp" = gzip ] && pgcomp=gz
        [ "$comp" = zstd ] && pgcomp=zst
        conf=$RUN/pgbackrest.conf
        {
            echo "[global]"
            echo "repo1-path=$store"
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
    walmgr)
        pushconf=$RUN/master.ini getconf=$RUN/slave.ini
        {
            echo "[walmgr]"
            echo "master_data = $DATA"
            echo "slave = $store"
            echo "compression = $comp"
            [ "$comp" = none ] || echo "compression_level = $level"
        } | as_pg tee "$pushconf" >/dev/null
        as_pg mkdir -p "$RUN/$side-slave"
        printf '[walmgr]\nslave = %s\nslave_data = %s\n' "$store" "$RUN/$side-slave" | as_pg tee "$getconf" >/dev/null
        as_pg "$OURS" "$getconf" setup >>"$LOG" 2>&1 || die "walmgr slave setup failed: $(tail -n 3 "$LOG")"
        ;;
    esac
    sync # start from a clean page cache writeback state (not timed)
    out=$(as_pg bash "$DIR/loop.sh" push "$side" "$comp" "$level" "$DATA" "$pushconf" "$store" "$dst" "$DIR/names" "$LOG" "$OURS" "$CORPUS") ||
        die "$side push ($comp) failed: $(tail -n 5 "$LOG")"
    read -r w u s <<<"$out"
    PUSH_WALL[$key]=$w
    PUSH_CPU[$key]=$(awk -v u="$u" -v s="$s" 'BEGIN {print u + s}')
    BYTES[$key]=$(du --apparent-size -sb "$store" | cut -f1)
    [ "$side" = walmgr ] && cwd=$RUN/$side-slave
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

if has walmgr && has pgbackrest; then
    echo
    echo "| compression | round | push time walmgr/pgbackrest | get time walmgr/pgbackrest | stored bytes walmgr/pgbackrest |"
    echo "|---|---|---|---|---|"
    for setting in "${SETTINGS[@]}"; do
        comp=${setting%%:*} level=${setting#*:}
        title=$comp
        [ "$comp" = none ] || title="$comp $level"
        pr=() gr=() br=()
        for r in $(seq 1 "$ROUNDS"); do
            pr+=("$(awk -v a="${PUSH_WALL[walmgr|$comp|$r]}" -v b="${PUSH_WALL[pgbackrest|$comp|$r]}" 'BEGIN {printf "%.2f", a / b}')")
            gr+=("$(awk -v a="${GET_WALL[walmgr|$comp|$r]}" -v b="${GET_WALL[pgbackrest|$comp|$r]}" 'BEGIN {printf "%.2f", a / b}')")
            br+=("$(awk -v a="${BYTES[walmgr|$comp|$r]}" -v b="${BYTES[pgbackrest|$comp|$r]}" 'BEGIN {printf "%.3f", a / b}')")
            printf '| %s | %s | %s | %s | %s |\n' "$title" "$r" "${pr[-1]}" "${gr[-1]}" "${br[-1]}"
        done
        printf '| %s | **median** | **%s** | **%s** | **%s** |\n' "$title" "$(median "${pr[@]}")" "$(median "${gr[@]}")" "$(median "${br[@]}")"
    done
fi
