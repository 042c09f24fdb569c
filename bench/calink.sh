#!/bin/bash
# calink's archive throughput beside `tar czf` of the same files, and a default run.
#
#   tar      tar czf OUT -C / <corpus paths>   (GNU tar piping into gzip -6)
#   tar+fsync the same, then `sync OUT` (fsync of the archive: calink makes its archive
#            durable before renaming it into place, tar does not)
#   calink   calink -c <ini naming the corpus paths>, no info items, no commands, with
#            scrubbing (the default) and with --no-scrub (then it does what tar does:
#            read, tar, gzip -6, write; plus a SHA-256 per file, the manifest and the
#            fsync + rename of the finished archive)
#   default  calink -c etc/calink/calink.ini: the default selection of a Debian host,
#            with its 1 s sampling window
#   sos      Debian's sosreport beside it, collecting a comparable set:
#            sos report --batch --tmp-dir OUT -z gzip --label hostkit -o SOS_PLUGINS
#            (the plugins matching calink.ini's selection; nothing uploaded). Skipped,
#            with a note, when `sos` is not installed (apt-get install sosreport).
#
# Each side runs ROUNDS times (rounds interleave the sides) into a fresh output
# directory; reported are the medians of wall time, CPU time (user + system, the
# figure least moved by other load on the host) and peak RSS (/usr/bin/time), the
# archive's size, the peak disk use and the input throughput (corpus bytes / wall time).
# The page cache is warmed by a first untimed read of the corpus, so every side reads
# from memory.
#
# Peak disk use is sampled (du of the side's output directory and of its TMPDIR, every
# 50 ms, and once more at the end): what a side writes besides the archive, a staging
# copy of the tree included, shows as peak disk above the archive's size. calink writes
# nothing but the archive, streamed, so for it the two are the same.
#
# Usage: bench/calink.sh   (env: ROUNDS=5 CORPUS="/usr/share/doc /etc" SOS_PLUGINS=...)
# Prints Markdown for BENCHMARKS.md on stdout, progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
read -r -a CORPUS <<<"${CORPUS:-/usr/share/doc /etc}"
OURS=$(pwd)/target/release/calink
say() { echo "calink-bench: $*" >&2; }
[ -x "$OURS" ] || cargo build --release --locked --bin calink >/dev/null
[ -x /usr/bin/time ] || { say "needs /usr/bin/time (package time)"; exit 1; }
# sos plugins for what etc/calink/calink.ini collects: host/release (os-release,
# hostname, hosts), kernel (uname), processor/memory (cpu, vmem, smem), process (ps),
# filesys (df, mounts, fstab), networking (ip addr/route, resolv.conf, interfaces),
# apt/dpkg (sources, dpkg -l), logs/systemd (syslog, journal, failed units), postgresql
# (its configs and logs, pg_lsclusters).
SOS_PLUGINS=${SOS_PLUGINS:-host,release,kernel,processor,memory,process,filesys,networking,apt,dpkg,logs,systemd,postgresql}
have_sos=yes
command -v sos >/dev/null || have_sos=

work=$(mktemp -d /tmp/calink-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

{
    echo "[files]"
    printf 'corpus = %s\n' "${CORPUS[0]}"
    for p in "${CORPUS[@]:1}"; do printf '    %s\n' "$p"; done
    echo "[calink]"
    echo "max_total_size = 100G"
} >"$work/corpus.ini"

bytes=$(du -sb --apparent-size "${CORPUS[@]}" 2>/dev/null | awk '{s += $1} END {print s}')
files=$(find "${CORPUS[@]}" -type f 2>/dev/null | wc -l)
say "corpus: ${CORPUS[*]}: $files files, $bytes bytes; warming the page cache"
tar cf - "${CORPUS[@]}" 2>/dev/null | cat >/dev/null

rel=()
for p in "${CORPUS[@]}"; do rel+=("${p#/}"); done

# Disk used (bytes, allocated blocks) under the directories given.
disk() { du -s -c -B1 "$@" 2>/dev/null | tail -1 | cut -f1; }

# sample DIR...: the most disk used under them, every 50 ms, into $work/peak (until killed).
sample() {
    local max=0 cur
    while :; do
        cur=$(disk "$@")
        if [ "${cur:-0}" -gt "$max" ]; then
            max=$cur
            echo "$max" >"$work/peak"
        fi
        sleep 0.05
    done
}

# run SIDE: one timed run into $work/out (TMPDIR $work/tmp), prints
# "wall_s rss_kb archive_bytes cpu_s peak_disk_bytes".
run() {
    rm -rf "$work/out" "$work/tmp"
    mkdir "$work/out" "$work/tmp"
    echo 0 >"$work/peak"
    # What the empty directories themselves take is not the side's.
    local base
    base=$(disk "$work/out" "$work/tmp")
    sample "$work/out" "$work/tmp" &
    local sampler=$!
    local t0 t1 st=0
    export TMPDIR=$work/tmp
    t0=$(date +%s.%N)
    case $1 in
    tar) /usr/bin/time -f "%M %U %S" -o "$work/rss" tar czf "$work/out/corpus.tar.gz" -C / "${rel[@]}" 2>/dev/null || st=$? ;;
    tar+fsync) /usr/bin/time -f "%M %U %S" -o "$work/rss" bash -c 'tar czf "$1/corpus.tar.gz" -C / "${@:2}" 2>/dev/null; s=$?; sync "$1/corpus.tar.gz"; exit $s' \
        sh "$work/out" "${rel[@]}" || st=$? ;;
    calink) /usr/bin/time -f "%M %U %S" -o "$work/rss" "$OURS" -c "$work/corpus.ini" -o "$work/out" >/dev/null 2>&1 || st=$? ;;
    calink-noscrub) /usr/bin/time -f "%M %U %S" -o "$work/rss" "$OURS" -c "$work/corpus.ini" -o "$work/out" --no-scrub >/dev/null 2>&1 || st=$? ;;
    default) /usr/bin/time -f "%M %U %S" -o "$work/rss" "$OURS" -c etc/calink/calink.ini -o "$work/out" >/dev/null 2>&1 || st=$? ;;
    sos) /usr/bin/time -f "%M %U %S" -o "$work/rss" sos report --batch --tmp-dir "$work/out" -z gzip \
        --label hostkit -o "$SOS_PLUGINS" >"$work/sos.log" 2>&1 || st=$? ;;
    esac
    t1=$(date +%s.%N)
    unset TMPDIR
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    local peak last
    peak=$(cat "$work/peak")
    last=$(disk "$work/out" "$work/tmp")
    [ "$last" -gt "$peak" ] && peak=$last
    peak=$((peak - base))
    # tar exits 1 for files that changed as it read them, calink 3 for anything skipped
    # or truncated: both still made their archive.
    case $st in 0 | 1 | 3) ;; *) say "$1 exited $st"; exit 1 ;; esac
    local size
    size=$(find "$work/out" -type f -name '*.tar.gz' -printf '%s\n' | head -1)
    local rss usr sys
    read -r rss usr sys < <(tail -1 "$work/rss")
    echo "$(echo "$t1 - $t0" | bc -l) $rss $size $(echo "$usr + $sys" | bc -l) $peak"
}

median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

SIDES=(tar tar+fsync calink-noscrub calink default)
if [ -n "$have_sos" ]; then
    SIDES+=(sos)
else
    say "sos is not installed (apt-get install sosreport): no sos column"
fi
# Rounds interleave the sides, so a burst of load elsewhere on the host hits them alike.
for r in $(seq "$ROUNDS"); do
    for side in "${SIDES[@]}"; do run "$side" >>"$work/results.$side"; done
    say "round $r done"
done

echo "| side | wall (median of $ROUNDS) | CPU user+sys | peak RSS | archive | peak disk | peak disk / archive | throughput (wall) |"
echo "|---|---|---|---|---|---|---|---|"
for side in "${SIDES[@]}"; do
    wall=$(awk '{print $1}' "$work/results.$side" | median)
    rss=$(awk '{print $2}' "$work/results.$side" | median)
    size=$(awk '{print $3}' "$work/results.$side" | median)
    cpu=$(awk '{print $4}' "$work/results.$side" | median)
    # Peak disk: the round that stood highest above its own archive.
    read -r peak psize < <(awk '{print $5 / $3, $5, $3}' "$work/results.$side" | sort -g | tail -1 | cut -d' ' -f2-)
    case $side in
    default | sos) tp="-" ;;
    *) tp=$(printf '%.0f MB/s' "$(echo "$bytes / $wall / 1000000" | bc -l)") ;;
    esac
    printf '| %s | %.2f s | %.2f s | %d MiB | %.2f MB | %.2f MB | %.2f | %s |\n' "$side" "$wall" "$cpu" $((rss / 1024)) \
        "$(echo "$size / 1000000" | bc -l)" "$(echo "$peak / 1000000" | bc -l)" \
        "$(echo "$peak / $psize" | bc -l)" "$tp"
done
echo
echo "Corpus: ${CORPUS[*]} ($files files, $(echo "$bytes / 1000000" | bc) MB), page cache warm; $(nproc) CPUs; $(date -u '+%Y-%m-%d %H:%M UTC')."
if [ -n "$have_sos" ]; then
    echo "sos: $(dpkg-query -W -f '${Package} ${Version}' sosreport 2>/dev/null): \`sos report --batch --tmp-dir OUT -z gzip --label hostkit -o $SOS_PLUGINS\`."
else
    echo "sos: not installed on this host (apt-get install sosreport), not measured."
fi
