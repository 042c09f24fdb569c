#!/bin/bash
# calink's archive throughput beside `tar czf` of the same files, and a default run.
#
#   tar      tar czf OUT -C / <corpus paths>   (GNU tar piping into gzip -6)
#   calink   calink -c <ini naming the corpus paths>, no info items, no commands, with
#            scrubbing (the default) and with --no-scrub (then it does what tar does:
#            read, tar, gzip -6, write; plus a SHA-256 per file, the manifest and the
#            fsync + rename of the finished archive)
#   default  calink -c etc/calink/calink.ini: the default selection of a Debian host,
#            with its 1 s sampling window
#
# Each side runs ROUNDS times (rounds interleave the sides) into a fresh output
# directory; reported are the medians of wall time, CPU time (user + system, the
# figure least moved by other load on the host) and peak RSS (/usr/bin/time), the
# archive's size and the input throughput (corpus bytes / wall time). The page cache is warmed by a first untimed
# read of the corpus, so every side reads from memory. calink writes nothing but the
# archive (no copy of the tree), so its peak disk use is the archive's size.
#
# Usage: bench/calink.sh   (env: ROUNDS=5 CORPUS="/usr/share/doc /etc")
# Prints Markdown for BENCHMARKS.md on stdout, progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
read -r -a CORPUS <<<"${CORPUS:-/usr/share/doc /etc}"
OURS=$(pwd)/target/release/calink
say() { echo "calink-bench: $*" >&2; }
[ -x "$OURS" ] || cargo build --release --locked --bin calink >/dev/null
[ -x /usr/bin/time ] || { say "needs /usr/bin/time (package time)"; exit 1; }

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

# run SIDE: one timed run into $work/out, prints "wall_s rss_kb archive_bytes".
run() {
    rm -rf "$work/out"
    mkdir "$work/out"
    local t0 t1 st=0
    t0=$(date +%s.%N)
    case $1 in
    tar) /usr/bin/time -f "%M %U %S" -o "$work/rss" tar czf "$work/out/corpus.tar.gz" -C / "${rel[@]}" 2>/dev/null || st=$? ;;
    calink) /usr/bin/time -f "%M %U %S" -o "$work/rss" "$OURS" -c "$work/corpus.ini" -o "$work/out" >/dev/null 2>&1 || st=$? ;;
    calink-noscrub) /usr/bin/time -f "%M %U %S" -o "$work/rss" "$OURS" -c "$work/corpus.ini" -o "$work/out" --no-scrub >/dev/null 2>&1 || st=$? ;;
    default) /usr/bin/time -f "%M %U %S" -o "$work/rss" "$OURS" -c etc/calink/calink.ini -o "$work/out" >/dev/null 2>&1 || st=$? ;;
    esac
    t1=$(date +%s.%N)
    # tar exits 1 for files that changed as it read them, calink 3 for anything skipped
    # or truncated: both still made their archive.
    case $st in 0 | 1 | 3) ;; *) say "$1 exited $st"; exit 1 ;; esac
    local size
    size=$(find "$work/out" -type f -name '*.tar.gz' -printf '%s\n' | head -1)
    local rss usr sys
    read -r rss usr sys < <(tail -1 "$work/rss")
    echo "$(echo "$t1 - $t0" | bc -l) $rss $size $(echo "$usr + $sys" | bc -l)"
}

median() { sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }

SIDES=(tar calink-noscrub calink default)
# Rounds interleave the sides, so a burst of load elsewhere on the host hits them alike.
for r in $(seq "$ROUNDS"); do
    for side in "${SIDES[@]}"; do run "$side" >>"$work/results.$side"; done
    say "round $r done"
done

echo "| side | wall (median of $ROUNDS) | CPU user+sys | peak RSS | archive | throughput (wall) |"
echo "|---|---|---|---|---|---|"
for side in "${SIDES[@]}"; do
    wall=$(awk '{print $1}' "$work/results.$side" | median)
    rss=$(awk '{print $2}' "$work/results.$side" | median)
    size=$(awk '{print $3}' "$work/results.$side" | median)
    cpu=$(awk '{print $4}' "$work/results.$side" | median)
    if [ "$side" = default ]; then
        tp="-"
    else
        tp=$(printf '%.0f MB/s' "$(echo "$bytes / $wall / 1000000" | bc -l)")
    fi
    printf '| %s | %.2f s | %.2f s | %d MiB | %.1f MB | %s |\n' "$side" "$wall" "$cpu" $((rss / 1024)) \
        "$(echo "$size / 1000000" | bc -l)" "$tp"
done
echo
echo "Corpus: ${CORPUS[*]} ($files files, $(echo "$bytes / 1000000" | bc) MB), page cache warm; $(nproc) CPUs."
