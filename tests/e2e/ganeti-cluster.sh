#!/usr/bin/env bash
# Bring up / tear down a REAL one-node Ganeti 3.0 cluster (Debian 12 `ganeti`
# package, `fake` hypervisor, `diskless` + `file` disk templates) for hostkit's
# end-to-end tests.
#
# All of Ganeti's networking lives in a private network namespace (plus a UTS
# namespace giving the node its own hostname and a mount namespace from
# `ip netns exec` that bind-mounts /etc/netns/<ns>/hosts over /etc/hosts).
# The host's /etc/hosts, hostname and network are never touched; in the root
# namespace the test prefix is made `unreachable` so nothing routes it out.
#
# Usage: ganeti-cluster.sh up|down|status|env [--export]
#
#   up      install packages if missing, create namespace + cluster, start the
#           daemons, wait until `gnt-cluster info` answers. Idempotent: a
#           healthy cluster is left alone, leftovers of a broken one are torn
#           down first.
#   down    idempotent full teardown (cluster destroy, daemons, relays, holder,
#           namespace, route, /etc/netns/<ns>, job queue). Works after a
#           half-failed `up`. Exits non-zero if anything is left behind.
#   status  human-readable state; exit 0 = up and answering, 1 = degraded,
#           3 = down.
#   env     KEY=VALUE shell lines for tests (eval-able), e.g.
#             HK_GNT_HOLDER=1234
#             HK_GNT_NSENTER="nsenter -t 1234 -n -u -m"
#           `env --export` prefixes each line with `export `. Exit 1 if down.
#
# gnt-instance / gnt-job only talk to luxid's Unix socket, so they work from
# the root namespace too; anything that resolves names or touches the network
# (gnt-cluster init/destroy/verify, daemon-util) must run via $HK_GNT_NSENTER.
#
# Environment knobs (defaults in brackets):
#   HK_GNT_NS [hkgnt]               network namespace name
#   HK_GNT_STATE_ROOT [/run/hostkit-e2e]  state dir (pids, logs, sockets)
#   HK_GNT_NODE [node1.example.test]      node hostname
#   HK_GNT_CLUSTER [cluster.example.test] cluster name
#   HK_GNT_PREFIX [198.51.100]      /24 used inside the namespace
#                                   (.1 node, .10 master IP, .21-.23 inst1-3)
#   HK_GNT_BRIDGE [ganeti0]         portless bridge / master netdev
#   HK_GNT_OS [hostkit-dummy]       name of the dummy OS definition
#   HK_GNT_FILE_STORAGE_DIR [/srv/ganeti/file-storage]
#   HK_GNT_AMQP_RELAY [1]           relay ns 127.0.0.1:$HK_GNT_AMQP_PORT to the
#   HK_GNT_AMQP_PORT [5672]         host's 127.0.0.1:$HK_GNT_AMQP_PORT
#   HK_GNT_EXTRA_HOSTS []           extra "ip name..." lines (';'-separated)
#                                   for /etc/netns/<ns>/hosts
#
# Requires root. Works without a TTY and without systemd as PID 1.

set -euo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

NS=${HK_GNT_NS:-hkgnt}
STATE_ROOT=${HK_GNT_STATE_ROOT:-/run/hostkit-e2e}
STATE=$STATE_ROOT/$NS
LOCK=$STATE_ROOT/$NS.lock
NODE=${HK_GNT_NODE:-node1.example.test}
CLUSTER=${HK_GNT_CLUSTER:-cluster.example.test}
PREFIX=${HK_GNT_PREFIX:-198.51.100}
NET=$PREFIX.0/24
NODE_IP=$PREFIX.1
CLUSTER_IP=$PREFIX.10
BRIDGE=${HK_GNT_BRIDGE:-ganeti0}
OS_NAME=${HK_GNT_OS:-hostkit-dummy}
OS_DIR=/srv/ganeti/os/$OS_NAME
FILE_DIR=${HK_GNT_FILE_STORAGE_DIR:-/srv/ganeti/file-storage}
SHARED_FILE_DIR=/srv/ganeti/shared-file-storage
AMQP_RELAY=${HK_GNT_AMQP_RELAY:-1}
AMQP_PORT=${HK_GNT_AMQP_PORT:-5672}
AMQP_SOCK=$STATE/amqp.sock
GNT_LIB=/var/lib/ganeti
GNT_QUEUE=$GNT_LIB/queue
NETNS_ETC=/etc/netns/$NS
PACKAGES=(ganeti socat openssh-server iproute2)
MARKER=.hostkit-e2e   # marks files/dirs this script created

log()  { printf '[ganeti-cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
warn() { log "WARNING: $*"; }
die()  { log "ERROR: $*"; exit 1; }
now()  { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# ---------------------------------------------------------------- helpers ---

pid_alive() { # running (zombies do not count: PID 1 here may reap late)
    [[ -n ${1:-} && -d /proc/$1 ]] && kill -0 "$1" 2>/dev/null &&
        [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

read_pidfile() { [[ -r $1 ]] && tr -dc '0-9' <"$1"; }

ns_exists() { [[ -e /run/netns/$NS ]]; }

ns_inode() { ns_exists && stat -L -c %i "/run/netns/$NS" 2>/dev/null; }

pid_net_inode() { stat -L -c %i "/proc/$1/ns/net" 2>/dev/null; }

# Holder pid if it is alive, in our netns and carries our hostname.
holder_pid() {
    local pid ino
    pid=$(read_pidfile "$STATE/holder.pid") || return 1
    pid_alive "$pid" || return 1
    ino=$(ns_inode) || return 1
    [[ $(pid_net_inode "$pid") == "$ino" ]] || return 1
    [[ $(nsenter -t "$pid" -u hostname 2>/dev/null) == "$NODE" ]] || return 1
    printf '%s\n' "$pid"
}

# Pids of all processes whose network namespace is ours: by the live netns
# name and by the inode recorded at `up` (covers a namespace whose name was
# already removed while processes linger).
ns_member_pids() {
    local inos=() ino p pino
    ino=$(ns_inode) && inos+=("$ino")
    ino=$(read_pidfile "$STATE/netns.ino") && [[ -n $ino ]] && inos+=("$ino")
    ((${#inos[@]})) || return 0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" ]] && continue
        pino=$(pid_net_inode "$p") || continue
        for ino in "${inos[@]}"; do
            [[ $pino == "$ino" ]] && { echo "$p"; break; }
        done
    done
}

# A pid to nsenter into: the holder, else any surviving member of the netns
# that still has our hostname (its mount ns carries the /etc/hosts bind).
ns_target() {
    local p
    p=$(holder_pid) && { echo "$p"; return 0; }
    for p in $(ns_member_pids); do
        [[ $(nsenter -t "$p" -u hostname 2>/dev/null) == "$NODE" ]] && { echo "$p"; return 0; }
    done
    return 1
}

# Run a command inside net+uts+mount namespaces of $TARGET.
in_ns() { nsenter -t "$TARGET" -n -u -m -- "$@"; }

# Start a detached process (own session, stdin/out/err redirected) and record
# its real pid in $1 (written by the process itself before exec, so setsid's
# fork-or-not behaviour does not matter). $2 = log file, rest = command.
spawn() {
    local pidfile=$1 logf=$2 i pid
    shift 2
    rm -f "$pidfile" "$pidfile.tmp"
    setsid sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
        </dev/null >>"$logf" 2>&1 9>&- &
    for ((i = 0; i < 100; i++)); do
        pid=$(read_pidfile "$pidfile") && [[ -n $pid ]] && { echo "$pid"; return 0; }
        sleep 0.05
    done
    return 1
}

kill_pids() { # kill_pids <what> pid... : TERM, wait up to 3 s, then KILL
    local what=$1 p i left
    shift
    local pids=()
    for p in "$@"; do pid_alive "$p" && pids+=("$p"); done
    ((${#pids[@]})) || return 0
    log "stopping $what: $(for p in "${pids[@]}"; do printf '%s(%s) ' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-60)"; done)"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        left=()
        for p in "${pids[@]}"; do pid_alive "$p" && [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]] && left+=("$p"); done
        ((${#left[@]})) || return 0
        sleep 0.1
    done
    warn "$what did not exit on TERM, killing: ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 0.2
}

daemon_util() {
    local c
    for c in /usr/lib/ganeti/daemon-util /usr/lib/ganeti/3.0/usr/lib/ganeti/daemon-util \
             /usr/lib/x86_64-linux-gnu/ganeti/daemon-util; do
        [[ -x $c ]] && { echo "$c"; return 0; }
    done
    c=$(find /usr/lib /usr/share -name daemon-util -type f -perm -u+x 2>/dev/null | head -n1)
    [[ -n $c ]] && { echo "$c"; return 0; }
    return 1
}

# Start every daemon that is not running. Not `daemon-util start-all`: on
# bookworm its `start-stop-daemon --start --oknodo --pidfile` refuses to match
# the non-root-owned pidfile of an already running ganeti-confd ("matching
# only on non-root pidfile ... is insecure", exit 2), so start-all is not
# idempotent. `check` also passes --name, which start-stop-daemon accepts.
ensure_daemons() { # ensure_daemons <daemon-util>; needs $TARGET
    local du=$1 d rc=0
    clear_stale_pidfiles
    for d in $("$du" list-start-daemons); do
        timeout 30 nsenter -t "$TARGET" -n -u -m -- "$du" check "$d" 9>&- && continue
        if ! timeout 60 nsenter -t "$TARGET" -n -u -m -- "$du" start "$d" </dev/null >&2 9>&-; then
            # ganeti-kvmd has nothing to do without the kvm hypervisor
            [[ $d == ganeti-kvmd ]] || { warn "could not start $d"; rc=1; }
        fi
    done
    return $rc
}

# A daemon that died without cleaning up (SIGKILL, killed namespace) leaves
# its pidfile; for the non-root-owned ones start-stop-daemon then refuses to
# start the daemon again (same "insecure" error as above), which breaks the
# next `gnt-cluster init`. Remove pidfiles whose process is gone.
clear_stale_pidfiles() {
    local f p
    for f in /var/run/ganeti/ganeti-*.pid; do
        [[ -e $f ]] || continue
        p=$(read_pidfile "$f") || p=""
        if [[ -n $p ]] && pid_alive "$p" &&
            [[ $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]] &&
            [[ $(cat "/proc/$p/comm" 2>/dev/null) == ganeti-* ]]; then
            continue
        fi
        rm -f "$f"
    done
}

cluster_exists() { [[ -e $GNT_LIB/config.data || -e $GNT_LIB/ssconf_cluster_name ]]; }

clear_queue() {
    [[ -d $GNT_QUEUE ]] || return 0
    rm -rf "$GNT_QUEUE"/archive/* "$GNT_QUEUE"/job-* "$GNT_QUEUE"/lock \
           "$GNT_QUEUE"/serial "$GNT_QUEUE"/version "$GNT_QUEUE"/drain
}

# Processes that look like Ganeti daemons (anywhere on the machine).
ganeti_pids() {
    local p comm
    for p in /proc/[0-9]*; do
        comm=$(cat "$p/comm" 2>/dev/null) || continue
        [[ $comm == ganeti-* ]] || continue
        [[ $(awk '{print $3}' "$p/stat" 2>/dev/null) == Z ]] && continue
        [[ $comm == ganeti-cluster* ]] && continue   # this script if renamed
        echo "${p#/proc/}"
    done
}

route_present() { [[ -n $(ip route show type unreachable "$NET" 2>/dev/null) ]]; }

# ---------------------------------------------------------------- pieces ----

ensure_packages() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        local t
        t=$(now)
        log "installing missing packages: ${missing[*]}"
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
        log "packages installed in $(since "$t")"
    fi
    command -v nsenter >/dev/null && command -v unshare >/dev/null && command -v setsid >/dev/null ||
        die "util-linux tools nsenter/unshare/setsid missing"
    ssh-keygen -A >/dev/null   # Ganeti reads the host keys even with --no-ssh-init
}

write_hosts() {
    [[ -d /etc/netns ]] || { mkdir -p /etc/netns && : >"$STATE/created-etc-netns"; }
    mkdir -p "$NETNS_ETC"
    {
        echo "# generated by hostkit tests/e2e/ganeti-cluster.sh (namespace $NS)"
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        echo "$NODE_IP $NODE ${NODE%%.*}"
        echo "$CLUSTER_IP $CLUSTER ${CLUSTER%%.*}"
        local i dom=${NODE#*.}
        for i in 1 2 3; do echo "$PREFIX.$((20 + i)) inst$i.$dom inst$i"; done
        if [[ -n ${HK_GNT_EXTRA_HOSTS:-} ]]; then
            tr ';' '\n' <<<"$HK_GNT_EXTRA_HOSTS"
        fi
    } >"$NETNS_ETC/hosts"
    # Names not in hosts must fail fast and never leave the namespace: point
    # the resolver at the namespace's own (closed) loopback.
    if [[ -e /etc/resolv.conf ]]; then
        printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$NETNS_ETC/resolv.conf"
    fi
}

write_ganeti_files() {
    mkdir -p /etc/ganeti "$FILE_DIR" "$SHARED_FILE_DIR"
    local f=/etc/ganeti/file-storage-paths
    if ! grep -qxF "$FILE_DIR" "$f" 2>/dev/null; then
        [[ -e $f ]] || echo "# generated by hostkit tests/e2e/ganeti-cluster.sh" >"$f"
        echo "$FILE_DIR" >>"$f"
    fi
    grep -qxF "$SHARED_FILE_DIR" "$f" || echo "$SHARED_FILE_DIR" >>"$f"

    # Dummy OS definition, API 20, one variant "default"; every script succeeds.
    mkdir -p "$OS_DIR"
    : >"$OS_DIR/$MARKER"
    echo 20 >"$OS_DIR/ganeti_api_version"
    : >"$OS_DIR/parameters.list"
    echo default >"$OS_DIR/variants.list"
    local s
    for s in create export import rename verify; do
        printf '#!/bin/sh\n# hostkit e2e dummy OS: %s does nothing\n%s\nexit 0\n' "$s" \
            "$([[ $s == import ]] && echo 'cat >/dev/null' || true)" >"$OS_DIR/$s"
        chmod 0755 "$OS_DIR/$s"
    done
}

setup_netns() {
    ip netns add "$NS"
    stat -L -c %i "/run/netns/$NS" >"$STATE/netns.ino"
    ip -n "$NS" link set lo up
    ip -n "$NS" link add "$BRIDGE" type bridge
    ip -n "$NS" addr add "$NODE_IP/24" dev "$BRIDGE"
    ip -n "$NS" link set "$BRIDGE" up
    route_present || ip route add unreachable "$NET"
}

start_holder() {
    local pid i
    pid=$(spawn "$STATE/holder.pid" "$STATE/holder.log" \
        ip netns exec "$NS" unshare --uts sh -c 'hostname "$1" && exec sleep infinity' sh "$NODE") ||
        die "holder did not start (see $STATE/holder.log)"
    for ((i = 0; i < 50; i++)); do
        holder_pid >/dev/null && break
        pid_alive "$pid" || die "holder exited (see $STATE/holder.log)"
        sleep 0.1
    done
    holder_pid >/dev/null || die "holder $pid never got hostname $NODE"
    TARGET=$pid
    log "holder pid $pid (netns $NS, hostname $(in_ns hostname))"
    # Sanity: inside, the node name must resolve to the bridge address.
    local got
    got=$(in_ns getent hosts "$NODE" | awk '{print $1; exit}')
    [[ $got == "$NODE_IP" ]] || die "$NODE resolves to '$got' inside the namespace, expected $NODE_IP"
}

start_relays() {
    [[ $AMQP_RELAY == 1 ]] || return 0
    local p
    p=$(spawn "$STATE/relay-root.pid" "$STATE/relay-root.log" \
        socat "UNIX-LISTEN:$AMQP_SOCK,fork,unlink-early,mode=600" "TCP:127.0.0.1:$AMQP_PORT") ||
        die "root-namespace socat relay did not start"
    p=$(spawn "$STATE/relay-ns.pid" "$STATE/relay-ns.log" \
        nsenter -t "$TARGET" -n -u -m -- \
        socat "TCP-LISTEN:$AMQP_PORT,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$AMQP_SOCK") ||
        die "namespace socat relay did not start"
    sleep 0.3
    pid_alive "$(read_pidfile "$STATE/relay-root.pid")" || die "root relay died (see $STATE/relay-root.log)"
    pid_alive "$(read_pidfile "$STATE/relay-ns.pid")" || die "namespace relay died (see $STATE/relay-ns.log)"
    log "AMQP relay: ns 127.0.0.1:$AMQP_PORT -> $AMQP_SOCK -> host 127.0.0.1:$AMQP_PORT"
}

wait_cluster() { # wait_cluster <seconds>
    local deadline=$((SECONDS + $1))
    while ((SECONDS < deadline)); do
        timeout 20 nsenter -t "$TARGET" -n -u -m -- gnt-cluster info >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

# ---------------------------------------------------------------- commands --

cmd_up() {
    need_root
    local t0 t
    t0=$(now)
    if TARGET=$(holder_pid) && cluster_exists && wait_cluster 5; then
        if [[ $AMQP_RELAY == 1 ]] &&
            ! { pid_alive "$(read_pidfile "$STATE/relay-root.pid")" &&
                pid_alive "$(read_pidfile "$STATE/relay-ns.pid")"; }; then
            log "restarting AMQP relays"
            kill_pids "AMQP relays" "$(read_pidfile "$STATE/relay-root.pid")" \
                "$(read_pidfile "$STATE/relay-ns.pid")"
            start_relays
        fi
        log "cluster already up (holder $TARGET)"
        return 0
    fi
    if ns_exists || [[ -d $STATE ]] || cluster_exists || route_present || [[ -d $NETNS_ETC ]]; then
        log "leftovers found, tearing down first"
        do_down || die "could not clean up leftovers"
    fi

    ensure_packages
    local du
    du=$(daemon_util) || die "ganeti daemon-util not found"

    mkdir -p "$STATE"
    write_hosts
    write_ganeti_files
    clear_queue
    clear_stale_pidfiles

    t=$(now)
    setup_netns
    start_holder
    log "namespace + holder ready in $(since "$t")"

    start_relays

    t=$(now)
    log "gnt-cluster init $CLUSTER"
    timeout 300 nsenter -t "$TARGET" -n -u -m -- gnt-cluster init \
        --enabled-hypervisors=fake \
        --enabled-disk-templates=diskless,file \
        --ipolicy-disk-templates=diskless,file \
        --file-storage-dir="$FILE_DIR" \
        --master-netdev="$BRIDGE" \
        --master-netmask=24 \
        --nic-parameters="mode=bridged,link=$BRIDGE" \
        --no-ssh-init \
        --no-etc-hosts \
        "$CLUSTER" >&2 9>&- || die "gnt-cluster init failed (run '$0 down' to clean up)"
    log "gnt-cluster init took $(since "$t")"

    # init normally starts everything already; start whatever is missing.
    t=$(now)
    ensure_daemons "$du" || die "daemons did not start"
    wait_cluster 90 || die "gnt-cluster info does not answer after 90 s"
    log "daemons answering after $(since "$t")"

    {
        echo "ns=$NS"
        echo "node=$NODE"
        echo "cluster=$CLUSTER"
    } >"$STATE/info"
    log "cluster $CLUSTER up in $(since "$t0"); holder $TARGET"
    log "use: eval \"\$($0 env)\"; \$HK_GNT_NSENTER gnt-cluster verify"
}

# `gnt-cluster destroy` refuses while instances exist: remove what a failed
# test left behind (instances, then networks) first.
remove_leftovers() {
    local i n g ids j
    # Unfinished jobs (e.g. a test's `gnt-debug delay`) would hold locks the
    # removals and the destroy need: cancel / kill them.
    ids=$(timeout 30 gnt-job list --no-headers -o id,status 2>/dev/null |
        awk '$2 ~ /^(queued|waiting|running|canceling)$/ { print $1 }' | tr '\n' ' ')
    if [[ -n ${ids// /} ]]; then
        log "cancelling unfinished jobs: $ids"
        # shellcheck disable=SC2086
        timeout 60 gnt-job cancel --force --kill --yes-do-it $ids >&2 || warn "gnt-job cancel failed"
        for ((j = 0; j < 30; j++)); do
            [[ -z $(timeout 30 gnt-job list --no-headers -o status $ids 2>/dev/null |
                grep -E '^(queued|waiting|running|canceling)$') ]] && break
            sleep 1
        done
    fi
    for i in $(timeout 30 gnt-instance list --no-headers -o name 2>/dev/null); do
        log "removing leftover instance $i"
        timeout 120 gnt-instance remove --force --ignore-failures --shutdown-timeout=0 "$i" >&2 ||
            warn "could not remove instance $i"
    done
    for n in $(timeout 30 gnt-network list --no-headers -o name 2>/dev/null); do
        log "removing leftover network $n"
        for g in $(timeout 30 gnt-group list --no-headers -o name 2>/dev/null); do
            timeout 60 gnt-network disconnect "$n" "$g" >/dev/null 2>&1 || true
        done
        timeout 60 gnt-network remove "$n" >&2 || warn "could not remove network $n"
    done
}

# Full teardown; returns non-zero if anything is left behind.
do_down() {
    local rc=0 du="" t p f i busy
    du=$(daemon_util 2>/dev/null) || du=""
    # An interrupted `up` may leave `gnt-cluster init` running in the
    # namespace (timeout(1) puts it in its own process group). Let it finish
    # (bounded), then kill it, before tearing down underneath it.
    for ((i = 0; i < 120; i++)); do
        busy=()
        for p in $(ns_member_pids); do
            [[ $(cat "/proc/$p/comm" 2>/dev/null) == gnt-* ]] && busy+=("$p")
        done
        ((${#busy[@]})) || break
        ((i == 0)) && log "waiting for running Ganeti commands in the namespace: ${busy[*]}"
        sleep 1
    done
    ((${#busy[@]})) && kill_pids "stuck Ganeti commands" "${busy[@]}"
    TARGET=$(ns_target) || TARGET=""

    if [[ -n $TARGET && -n $du ]]; then
        if cluster_exists; then
            t=$(now)
            # destroy is a job + node RPC: the daemons must be running for it.
            ensure_daemons "$du" 2>/dev/null || true
            if wait_cluster 20; then
                remove_leftovers
                log "gnt-cluster destroy"
                if ! timeout 180 nsenter -t "$TARGET" -n -u -m -- gnt-cluster destroy --yes-do-it >&2; then
                    warn "gnt-cluster destroy failed"
                fi
            else
                warn "cluster does not answer, cannot destroy it; will wipe its files"
            fi
            log "cleanup + destroy took $(since "$t")"
        fi
        t=$(now)
        timeout 120 nsenter -t "$TARGET" -n -u -m -- "$du" stop-all >&2 || warn "daemon-util stop-all failed"
        log "stop-all took $(since "$t")"
    elif cluster_exists; then
        warn "cluster config present but namespace/holder gone: cannot destroy cleanly"
    fi

    # Relays (root-side one is not in the netns), then everything in the netns
    # (daemons that ignored stop-all, ns relay, holder) - all started by us.
    local pids=()
    for f in relay-root relay-ns; do
        p=$(read_pidfile "$STATE/$f.pid" 2>/dev/null) || continue
        [[ -n $p && $(cat "/proc/$p/comm" 2>/dev/null) == socat ]] && pids+=("$p")
    done
    kill_pids "AMQP relays" "${pids[@]}"
    mapfile -t pids < <(ns_member_pids)
    kill_pids "namespace processes" "${pids[@]}"
    rm -f "$AMQP_SOCK"

    if ns_exists; then
        ip netns delete "$NS" || { warn "ip netns delete $NS failed"; rc=1; }
    fi
    while route_present; do
        ip route del unreachable "$NET" || { warn "could not delete route"; rc=1; break; }
    done
    rm -rf "$NETNS_ETC"
    if [[ -e $STATE/created-etc-netns ]]; then rmdir /etc/netns 2>/dev/null || true; fi

    # A cluster destroy that failed (or never could run) leaves the
    # configuration behind; wipe it so the next `gnt-cluster init` works.
    if cluster_exists; then
        warn "cluster files left behind, removing them from $GNT_LIB"
        find "$GNT_LIB" -maxdepth 1 -type f -delete
        if [[ -d $FILE_DIR ]] && [[ -n $(ls -A "$FILE_DIR") ]]; then
            warn "removing leftover instance disk files under $FILE_DIR"
            rm -rf "${FILE_DIR:?}"/*
        fi
        rm -rf "$GNT_LIB"/crypto/* 2>/dev/null || true
    fi
    clear_queue
    clear_stale_pidfiles
    # The fake hypervisor's and instance runtime state of the old cluster.
    rm -rf /var/run/ganeti/fake-hypervisor/* /var/run/ganeti/instance-disks/* 2>/dev/null || true
    if [[ -e $OS_DIR/$MARKER ]]; then rm -rf "$OS_DIR"; fi
    rm -rf "$STATE"

    # Verification.
    local left
    left=$(ganeti_pids | tr '\n' ' ')
    if [[ -n $left ]]; then
        warn "Ganeti processes still running (not started by this script?): $left"
        ps -o pid,ppid,comm,args -p "${left// /,}" >&2 2>/dev/null || true
        rc=1
    fi
    ns_exists && { warn "namespace $NS still exists"; rc=1; }
    route_present && { warn "route $NET still present"; rc=1; }
    return $rc
}

cmd_down() {
    need_root
    local t0
    t0=$(now)
    if do_down; then
        log "down complete in $(since "$t0"): no namespace, route, holder or Ganeti process left"
    else
        log "down finished with leftovers after $(since "$t0")"
        return 1
    fi
}

cmd_status() {
    need_root
    local rc=0 p
    if ! ns_exists && [[ ! -d $STATE ]] && ! cluster_exists && ! route_present; then
        echo "down: no namespace $NS, no state, no cluster"
        [[ -z $(ganeti_pids) ]] || echo "note: unrelated Ganeti processes running: $(ganeti_pids | tr '\n' ' ')"
        return 3
    fi
    echo "namespace $NS: $(ns_exists && echo present || echo MISSING)"
    echo "unreachable route $NET: $(route_present && echo present || echo MISSING)"
    if TARGET=$(holder_pid); then
        echo "holder: $TARGET (hostname $(nsenter -t "$TARGET" -u hostname))"
    else
        echo "holder: NOT RUNNING"
        rc=1
    fi
    for f in relay-root relay-ns; do
        p=$(read_pidfile "$STATE/$f.pid" 2>/dev/null) || continue
        echo "$f: $p $(pid_alive "$p" && echo running || echo DEAD)"
    done
    echo "ganeti processes: $(for p in $(ganeti_pids); do printf '%s(%s) ' "$(cat /proc/"$p"/comm 2>/dev/null)" "$p"; done)"
    if [[ -n ${TARGET:-} ]] && timeout 20 nsenter -t "$TARGET" -n -u -m -- gnt-cluster info >/dev/null 2>&1; then
        echo "cluster: $CLUSTER answering (master $(cat "$GNT_LIB/ssconf_master_node" 2>/dev/null))"
        timeout 20 gnt-instance list 2>/dev/null | sed 's/^/  /' || true
    else
        echo "cluster: NOT ANSWERING"
        rc=1
    fi
    ns_exists && route_present || rc=1
    return $rc
}

cmd_env() {
    local pid prefix=""
    [[ ${1:-} == --export ]] && prefix="export "
    pid=$(holder_pid) || { echo "ganeti-cluster: not up (no holder for namespace $NS)" >&2; return 1; }
    local kv=(
        "HK_GNT_NS=$NS"
        "HK_GNT_HOLDER=$pid"
        "HK_GNT_NSENTER=nsenter -t $pid -n -u -m"
        "HK_GNT_NODE=$NODE"
        "HK_GNT_CLUSTER=$CLUSTER"
        "HK_GNT_CLUSTER_IP=$CLUSTER_IP"
        "HK_GNT_NODE_IP=$NODE_IP"
        "HK_GNT_BRIDGE=$BRIDGE"
        "HK_GNT_OS=$OS_NAME+default"
        "HK_GNT_FILE_STORAGE_DIR=$FILE_DIR"
        "HK_GNT_HOSTS_FILE=$NETNS_ETC/hosts"
        "HK_GNT_STATE=$STATE"
    )
    [[ $AMQP_RELAY == 1 ]] && kv+=("HK_GNT_AMQP_SOCK=$AMQP_SOCK" "HK_GNT_AMQP_URL=amqp://127.0.0.1:$AMQP_PORT")
    local e k v
    for e in "${kv[@]}"; do
        k=${e%%=*} v=${e#*=}
        if [[ $v =~ ^[A-Za-z0-9_./:+@%,-]*$ ]]; then
            printf '%s%s=%s\n' "$prefix" "$k" "$v"
        else
            printf '%s%s="%s"\n' "$prefix" "$k" "$v"
        fi
    done
}

usage() { sed -n '2,/^$/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }

main() {
    local cmd=${1:-}
    shift || true
    case $cmd in
        up|down)
            need_root
            mkdir -p "$STATE_ROOT"
            exec 9>"$LOCK"
            flock -w 600 9 || die "another ganeti-cluster.sh run holds $LOCK"
            "cmd_$cmd" "$@"
            ;;
        status) cmd_status "$@" ;;
        env) cmd_env "$@" ;;
        -h|--help|help) usage ;;
        *) usage ;;
    esac
}

main "$@"
