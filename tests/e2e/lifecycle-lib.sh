# Helpers shared by the life-cycle scripts (lifecycle.sh, replace-pgqd.sh,
# initscripts.sh); sourced after tests/e2e/checks.sh, not run. The general ones
# (wait_for, alive, rabbit_eval, AMQP_URL, PGBIN, ...) come from lib.sh.

# shellcheck source=tests/e2e/lib.sh
. tests/e2e/lib.sh

PKGS="snf-cyclades-gtools skytools3 skytools3-ticker skytools3-walmgr calink ele-tools pacha"
DPKG_LOCK=/tmp/hk-dpkg.lock

# hold_dpkg_lock "$@": re-run the calling script under flock on the lock every script
# that installs packages takes, for its whole run: other scripts install and purge the
# same packages, and a purge between two of our steps would spoil the test.
hold_dpkg_lock() {
    if [ -z "${HK_DPKG_LOCK_HELD:-}" ]; then
        export HK_DPKG_LOCK_HELD=1
        exec flock "$DPKG_LOCK" bash "$0" "$@"
    fi
}

# apt_real ARGS...: apt-get as on a real host, where the maintainer scripts start,
# restart and stop services. This machine's policy-rc.d denies that (exit 101); a
# permissive one is bind-mounted over it in a mount namespace of this command only
# (the host's file is untouched). The services in APT_REAL_DENY (default: Debian's
# pgqd, which must not start beside the tests' ticker when it comes back at the end)
# stay denied.
APT_REAL_DENY=pgqd
apt_real() {
    local pol=$tmp/policy-rc.d s
    {
        # policy-rc.d [--quiet] ID ACTIONS [RUNLEVEL]
        printf '#!/bin/sh\n# tests/e2e/lifecycle-lib.sh\n[ "$1" = --quiet ] && shift\n'
        for s in $APT_REAL_DENY; do printf '[ "$1" = %s ] && exit 101\n' "$s"; done
        printf 'exit 0\n'
    } >"$pol"
    chmod 755 "$pol"
    unshare -m sh -c 'mount --bind "$0" /usr/sbin/policy-rc.d && exec apt-get "$@"' "$pol" \
        -y -q --no-install-recommends "$@" </dev/null
}

# purge_leftovers: purge what an earlier run left of the packages (Debian's pgqd comes
# back in the same transaction when the ticker goes, so postgresql-*-pgq3 stays).
purge_leftovers() {
    local p left=
    for p in $PKGS; do installed_pkg "$p" && left="$left $p"; done
    [ -z "$left" ] && return 0
    say "purging what an earlier run left:$left"
    for p in /etc/init.d/snf-ganeti-eventd /etc/init.d/skytools3 /etc/init.d/pacha; do
        [ -x $p ] && $p stop >/dev/null 2>&1
    done
    local swap=
    case " $left " in *" skytools3-ticker "*) [ "$had_pgqd" = 1 ] && swap=pgqd+ ;; esac
    # shellcheck disable=SC2086
    apt-get purge -y -q $left $swap >/dev/null 2>&1 || abort "purge$left"
}

# current_debs: the dist/*.deb of every package (not the -dbgsym ones).
current_debs() {
    local p d
    for p in $PKGS; do
        d=$(deb_for "$p") || return 1
        printf './%s\n' "$d"
    done
}

# pidof_file FILE: the pid in FILE if that process runs.
pidof_file() {
    local p
    p=$(tr -dc 0-9 <"$1" 2>/dev/null)
    [ -n "$p" ] && [ -d "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && echo "$p"
}

# running_ours: pids of processes running the packages' daemons (their binaries may be
# deleted already), zombies left out.
running_ours() {
    local p e
    for p in /proc/[0-9]*; do
        e=$(readlink "$p/exe" 2>/dev/null) || continue
        case $e in
        /usr/bin/pgqd* | /usr/bin/pacha* | /usr/sbin/snf-ganeti-eventd*)
            [ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" != Z ] && printf '%s ' "${p#/proc/}" ;;
        esac
    done
}

# free_port: a TCP port on 127.0.0.1 the kernel just had free (nothing listens on it).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---- a private PostgreSQL cluster (Unix socket in $tmp only) --------------------------
# start_cluster DIR PORT [EXTRA CONF LINES]: initdb and start as postgres.
start_cluster() {
    local dir=$1 port=$2
    # postgres makes the cluster and its socket in $tmp.
    chown postgres "$tmp"
    as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres >"$tmp/initdb.log" 2>&1 ||
        { cat "$tmp/initdb.log"; return 1; }
    {
        echo "# tests/e2e: Unix socket only, in the test directory"
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$tmp'"
        echo "fsync = off"
        [ -n "${3:-}" ] && printf '%s\n' "$3"
    } >>"$dir/postgresql.conf"
    as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$dir.log" -w start >/dev/null 2>&1 ||
        { cat "$dir.log"; return 1; }
}
stop_cluster() {
    pg_stop "$1"
    return 0
}
# psql_at PORT DB SQL: one query on the private cluster, unaligned tuples only.
psql_at() {
    as_pg "$PGBIN/psql" -h "$tmp" -p "$1" -U postgres -d "$2" -X -q -tA -v ON_ERROR_STOP=1 -c "$3"
}

# ---- RabbitMQ: a test exchange with a durable queue bound to it with '#' --------------
declare_exchange() {
    local ex=$1 q=$2
    rabbit_eval "rabbit_exchange:declare(rabbit_misc:r(<<\"/\">>, exchange, <<\"$ex\">>), topic, true, false, false, [], <<\"hostkit-e2e\">>)." &&
        amqp-declare-queue -u "$AMQP_URL" -d -q "$q" >/dev/null &&
        rabbit_eval "rabbit_binding:add({binding, rabbit_misc:r(<<\"/\">>, exchange, <<\"$ex\">>), <<\"#\">>, rabbit_misc:r(<<\"/\">>, queue, <<\"$q\">>), []}, <<\"hostkit-e2e\">>)."
}
delete_exchange() {
    amqp-delete-queue -u "$AMQP_URL" -q "$2" >/dev/null 2>&1
    rabbit_eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$1\">>), false, <<\"hostkit-e2e\">>)."
}
# drain_queue QUEUE FILE: append every message waiting in QUEUE to FILE.
drain_queue() {
    while amqp-get -u "$AMQP_URL" -q "$1" >>"$2" 2>/dev/null; do echo >>"$2"; done
}

# ---- a fake Ganeti master for snf-ganeti-eventd -----------------------------------------
JOB_FIXTURE=tests/fixtures/ganeti/job-versions/job-6-instance-startup-v4-waiting.json
# fake_ganeti DIR: ssconf files and an empty job queue under DIR.
fake_ganeti() {
    mkdir -p "$1/data" "$1/queue"
    echo node1.hk-e2e.test >"$1/data/ssconf_master_node"
    echo cluster.hk-e2e.test >"$1/data/ssconf_cluster_name"
}
# write_job QUEUE_DIR: job 6 written as Ganeti writes it (temp file, rename).
write_job() {
    local t
    t=$(mktemp -p "$1" .job-6-XXXXXX)
    cat $JOB_FIXTURE >"$t"
    chmod 0640 "$t"
    mv -f "$t" "$1/job-6"
}

# snapshot FILE: every path under the directories packages write to, for a before /
# after comparison that does not rely on dpkg's own lists. apt's and dpkg's own
# bookkeeping is left out.
snapshot() {
    find /etc /var/log /var/lib /var/spool /var/cache /run /var/run/ -xdev \
        \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache/apt \
        -o -path /var/log/apt -o -path /var/cache/debconf -o -path /var/lib/postgresql \
        -o -path /var/lib/rabbitmq -o -path /var/log/rabbitmq -o -path /run/user \
        -o -path /var/cache/hostkit-piuparts -o -path /var/cache/man -o -path /var/lib/systemd/deb-systemd-user-helper-enabled \) -prune \
        -o -print 2>/dev/null | sort -u >"$1"
}
# Names of what the hostkit packages create (programs, users, directories).
OURS='snf-|ganeti|synnefo|skytools|pgqd|walmgr|calink|ele_tools|ele-tools|pacha'
