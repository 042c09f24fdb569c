#!/bin/bash
# pacha's capture and commit beside etckeeper's on the same synthetic /etc-like tree,
# and the daemon's latency after a single-file edit.
#
#   tree       FILES files (default 2000) in 100 directories, 100 B - 8 KiB each, a few
#              symlinks, a 0600 and a setuid file
#   capture    pacha: the first commit after track;  etckeeper: `etckeeper init -d TREE`
#              + `etckeeper commit -d TREE` (git, its pre-commit metadata hook); median of 3,
#              each from an empty repository
#   commit     one file appended to, then `pacha commit` / `etckeeper commit -d TREE`
#              (median of ROUNDS)
#   daemon     `pacha daemon` (debounce 0.1 s, the default) running; one file appended
#              to; time until its commit is in the repository (median of ROUNDS)
#   push       pacha push of a 50-file state to 1 and to 5 nodes: bench/pacha-push.sh,
#              run last with the same binary
#
# etckeeper is not installed on the host (its package would put its own apt hook and
# /etc/.git in place): its .deb is fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` into a temporary directory, and its scripts run from there
# (ETCKEEPER_CONF_DIR pointing at the unpacked /etc/etckeeper, its bin first on PATH).
#
# Usage: bench/pacha.sh   (env: FILES=2000 ROUNDS=7 PACHA=path/to/release/pacha)
# Prints Markdown for BENCHMARKS.md on stdout, progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

FILES=${FILES:-2000}
ROUNDS=${ROUNDS:-7}
say() { echo "pacha-bench: $*" >&2; }

work=$(mktemp -d /tmp/pacha-bench.XXXXXX)
daemon_pid=
trap '[ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null; rm -rf "$work"' EXIT

# ---- the programs --------------------------------------------------------------------
if [ -z "${PACHA:-}" ]; then
    deb=$(ls dist/pacha_*.deb 2>/dev/null | grep -v dbgsym | head -1 || true)
    if [ -n "$deb" ]; then
        dpkg-deb -x "$deb" "$work/pacha-deb"
        PACHA=$work/pacha-deb/usr/bin/pacha
    else
        cargo build --release --locked --bin pacha >/dev/null
        PACHA=$(pwd)/target/release/pacha
    fi
fi
(cd "$work" && apt-get download etckeeper >/dev/null 2>&1) || { say "apt-get download etckeeper failed"; exit 1; }
dpkg-deb -x "$work"/etckeeper_*.deb "$work/ek"
export ETCKEEPER_CONF_DIR=$work/ek/etc/etckeeper
EK_PATH=$work/ek/usr/bin:$work/ek/usr/sbin:$PATH
# No push, no daily cron; git as the VCS.
sed -i 's/^#*VCS=.*/VCS="git"/' "$ETCKEEPER_CONF_DIR/etckeeper.conf"
etckeeper() { PATH=$EK_PATH "$work/ek/usr/bin/etckeeper" "$@"; }
ekversion=$(dpkg-deb -f "$work"/etckeeper_*.deb Version)

# ---- the tree ------------------------------------------------------------------------
make_tree() {
    local root=$1 i d
    mkdir -p "$root"
    for d in $(seq -w 0 99); do mkdir -p "$root/d$d"; done
    for i in $(seq 1 "$FILES"); do
        d=$(printf '%02d' $((i % 100)))
        head -c $(((i * 7919) % 8000 + 100)) /dev/urandom | base64 >"$root/d$d/f$i.conf"
    done
    for i in 1 2 3 4 5; do ln -s "d0$i/f$i.conf" "$root/link$i"; done
    chmod 0600 "$root/d01/f1.conf"
    chmod 4755 "$root/d02/f2.conf"
}
make_tree "$work/ptree"
cp -a "$work/ptree" "$work/etree"
sync

ms() { echo $(( ($2 - $1) / 1000000 )); }
now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# ---- capture and commit, both sides ---------------------------------------------------
cat >"$work/pacha.ini" <<INI
[pacha]
state_dir = $work/pstate
host = bench
log = $work/daemon.log
INI
P() { "$PACHA" -c "$work/pacha.ini" "$@"; }
: >"$work/p_capture"
: >"$work/e_capture"
# Rounds interleave the two sides, so writeback and other load on the host fall on both.
for r in 1 2 3; do
    rm -rf "$work/pstate"
    P track "$work/ptree" >/dev/null
    t0=$(now); P commit -m initial >/dev/null; t1=$(now)
    ms "$t0" "$t1" >>"$work/p_capture"
    rm -rf "$work/etree/.git" "$work/etree/.etckeeper" "$work/etree/.gitignore"
    t0=$(now)
    etckeeper init -d "$work/etree" >/dev/null 2>&1
    etckeeper commit -d "$work/etree" "initial" >/dev/null 2>&1
    t1=$(now)
    ms "$t0" "$t1" >>"$work/e_capture"
done
p_capture=$(median <"$work/p_capture")
e_capture=$(median <"$work/e_capture")
: >"$work/p_commit"
: >"$work/e_commit"
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r" >>"$work/ptree/d05/f5.conf"
    t0=$(now); P commit -m "round $r" >/dev/null; t1=$(now)
    ms "$t0" "$t1" >>"$work/p_commit"
    echo "round $r" >>"$work/etree/d05/f5.conf"
    t0=$(now); etckeeper commit -d "$work/etree" "round $r" >/dev/null 2>&1; t1=$(now)
    ms "$t0" "$t1" >>"$work/e_commit"
done
p_commit=$(median <"$work/p_commit")
say "pacha: capture ${p_capture} ms, commit ${p_commit} ms"

e_commit=$(median <"$work/e_commit")
ecommits=$(git -C "$work/etree" rev-list --count HEAD)
say "etckeeper $ekversion: capture ${e_capture} ms, commit ${e_commit} ms ($ecommits commits)"

# ---- the daemon ----------------------------------------------------------------------
"$PACHA" -c "$work/pacha.ini" daemon >/dev/null 2>&1 &
daemon_pid=$!
for _ in $(seq 1 100); do grep -q watching "$work/daemon.log" 2>/dev/null && break; sleep 0.05; done
head_of() { git --git-dir="$work/pstate/repo.git" rev-parse HEAD; }
: >"$work/d_lat"
for r in $(seq 1 "$ROUNDS"); do
    before=$(head_of)
    t0=$(now)
    echo "daemon $r" >>"$work/ptree/d07/f7.conf"
    while [ "$(head_of)" = "$before" ]; do :; done
    t1=$(now)
    ms "$t0" "$t1" >>"$work/d_lat"
    sleep 0.3
done
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=
d_lat=$(median <"$work/d_lat")
d_commit=$(grep -o 'in [0-9]*ms' "$work/daemon.log" | tail -"$ROUNDS" | tr -dc '0-9\n' | median)
say "daemon: edit to commit ${d_lat} ms (its commit ${d_commit} ms)"

cat <<MD
| $FILES-file tree | pacha | etckeeper $ekversion |
|---|---|---|
| initial capture (first commit / init + commit; median of 3) | $p_capture ms | $e_capture ms |
| commit after one file changed (median of $ROUNDS) | $p_commit ms | $e_commit ms |
| daemon: one-file edit to commit in the repository (median of $ROUNDS, debounce 0.1 s) | $d_lat ms (commit itself $d_commit ms) | — (no daemon) |
MD

# Push of a 50-file template state to 1 and to 5 nodes (five sshd on loopback ports):
# bench/pacha-push.sh, same binary.
echo
PACHA=$PACHA bash bench/pacha-push.sh
