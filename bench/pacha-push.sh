#!/bin/bash
# pacha push of a 50-file state to 1 and to 5 nodes, beside the transport's floor.
#
#   push     pacha push <node> bench: render 50 files, one bundle per node over ssh,
#            `pacha apply-bundle` on the node (plan, stage with owner and mode, fsync,
#            rename, fsync each directory, commit to the node's history, report)
#   noop     the same push again: every file unchanged (ssh + compare, nothing written)
#   tar|ssh  tar c of the same 50 files | ssh node tar x (no checks, no fsync, no
#            history): what the bytes alone cost over the same ssh
#
# Each node is its own sshd on a loopback port (root logs in with a key this script
# makes; host keys checked); the 5-node case is a meta-node of the five, pushed in
# include order. Each side runs ROUNDS times into fresh node roots (rounds interleave
# the sides); reported are median wall times.
#
# Usage: bench/pacha-push.sh   (env: ROUNDS=5 PACHA=target/release/pacha)
# Prints Markdown for BENCHMARKS.md on stdout, progress on stderr. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
PACHA=${PACHA:-$(pwd)/target/release/pacha}
say() { echo "pacha-push-bench: $*" >&2; }
if [ ! -x "$PACHA" ]; then
    cargo build --release --locked --bin pacha >/dev/null
fi
PACHA=$(readlink -f "$PACHA")
[ -x /usr/sbin/sshd ] || { say "needs /usr/sbin/sshd (openssh-server)"; exit 1; }
install -d -m 0755 /run/sshd

work=$(mktemp -d /tmp/pacha-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N "" -C pacha-bench-user -f "$work/id"
: >"$work/known_hosts"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 50 files of 1-8 KiB over 5 directories, like an app's configuration.
master=$work/master
for i in $(seq -w 1 50); do
    d=$master/templates/bench/bench/d$((10#$i % 5))
    mkdir -p "$d"
    head -c $((1024 * (1 + 10#$i % 8))) /dev/urandom | base64 >"$d/f$i.conf"
done

ports=()
for n in 1 2 3 4 5; do
    port=$(free_port)
    ports+=("$port")
    d=$work/sshd$n
    mkdir -p "$d"
    ssh-keygen -q -t ed25519 -N "" -C "pacha-bench-host$n" -f "$d/host"
    echo "[127.0.0.1]:$port $(cat "$d/host.pub")" >>"$work/known_hosts"
    cp "$work/id.pub" "$d/authorized_keys"
    cat >"$d/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $d/host
PidFile none
AuthorizedKeysFile $d/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
UsePAM no
LogLevel ERROR
EOF
    /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/log" &
    pids+=($!)

    node=node$n
    cat >"$work/$node.ini" <<EOF
[pacha]
host = $node
state_dir = $work/$node-history
[nodes]
node_root = $work/$node-root
EOF
    mkdir -p "$master/nodes/$node"
    {
        echo "[node]"
        echo "address = 127.0.0.1:$port"
        echo "command = $PACHA -c $work/$node.ini"
        echo "apps = bench"
        for f in "$master"/templates/bench/bench/d*/f*.conf; do
            rel=${f#"$master/templates/bench/bench/"}
            echo "[$rel]"
            echo "dest = /etc/bench/$rel"
            echo "mode = 0640"
        done
    } >"$master/nodes/$node/$node.conf"
done
mkdir -p "$master/nodes/five"
echo "[node]
include_nodes = ['node1.conf', 'node2.conf', 'node3.conf', 'node4.conf', 'node5.conf']" >"$master/nodes/five/five.conf"
cat >"$work/master.ini" <<EOF
[pacha]
host = master
state_dir = $work/master-history
[ssh]
identity = $work/id
known_hosts = $work/known_hosts
[nodes]
master_root = $master
EOF

SSH=(ssh -F /dev/null -i "$work/id" -o IdentitiesOnly=yes -o UserKnownHostsFile="$work/known_hosts"
    -o StrictHostKeyChecking=yes -o BatchMode=yes -o LogLevel=ERROR -l root)
for p in "${ports[@]}"; do
    for _ in $(seq 50); do "${SSH[@]}" -p "$p" 127.0.0.1 true 2>/dev/null && break; sleep 0.1; done
done

now() { date +%s.%N; }
fresh() { for n in 1 2 3 4 5; do rm -rf "$work/node$n-root" "$work/node$n-history"; mkdir -p "$work/node$n-root"; done; }
# The nodes' histories track their roots (so each push is also a commit).
track() { for n in $(seq 1 "$1"); do "$PACHA" -c "$work/node$n.ini" track "$work/node$n-root" >/dev/null; done; }

declare -A T
time_push() { # target count -> seconds for a full push then a no-op push
    local target=$1 count=$2 t0 t1 t2
    fresh
    track "$count"
    t0=$(now)
    "$PACHA" -c "$work/master.ini" push "$target" bench >/dev/null
    t1=$(now)
    "$PACHA" -c "$work/master.ini" push "$target" bench >/dev/null
    t2=$(now)
    T[push-$count]+="$(echo "$t1 - $t0" | bc) "
    T[noop-$count]+="$(echo "$t2 - $t1" | bc) "
}
time_tar() { # count
    local count=$1 t0 t1
    fresh
    t0=$(now)
    for n in $(seq 1 "$count"); do
        tar -C "$master/templates/bench/bench" -cf - . |
            "${SSH[@]}" -p "${ports[$((n - 1))]}" 127.0.0.1 "mkdir -p $work/node$n-root/etc/bench && tar -C $work/node$n-root/etc/bench -xf -"
    done
    t1=$(now)
    T[tar-$count]+="$(echo "$t1 - $t0" | bc) "
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.3f", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

for r in $(seq 1 "$ROUNDS"); do
    say "round $r/$ROUNDS"
    time_push node1 1
    time_tar 1
    time_push five 5
    time_tar 5
done

echo "| nodes | pacha push (50 files created) | pacha push again (50 unchanged) | tar \| ssh tar x (floor) |"
echo "|---|---|---|---|"
for c in 1 5; do
    printf '| %s | %s s | %s s | %s s |\n' "$c" \
        "$(echo "${T[push-$c]}" | median)" "$(echo "${T[noop-$c]}" | median)" "$(echo "${T[tar-$c]}" | median)"
done
echo
echo "Medians of $ROUNDS rounds, $(date -u +%Y-%m-%d), pacha binary: ${PACHA#"$(pwd)/"}"
