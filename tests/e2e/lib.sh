# Helpers shared by the package end-to-end scripts beyond the counted checks (sourced
# after checks.sh, whose say/ok/nok/abort/as_pg and $tmp they use).

# alive PID: a running process (a zombie not yet reaped by PID 1 does not count).
alive() {
    [ -n "${1:-}" ] && [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
dead() { ! alive "$1"; }

# wait_for SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds.
wait_for() {
    local n=$(($1 * 5))
    shift
    while [ $n -gt 0 ]; do
        "$@" && return 0
        sleep 0.2
        n=$((n - 1))
    done
    return 1
}

# ---- files already at a package's paths -------------------------------------------------
# set_aside PATH...: move what exists at each PATH into $tmp/backup (dpkg would otherwise
# ask about an existing conffile); put_back moves it all back (in the cleanup).
set_aside() {
    local f
    mkdir -p "$tmp/backup"
    for f in "$@"; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        mv -f "$f" "$tmp/backup/$(printf %s "$f" | tr / %)"
    done
}
put_back() {
    local f p
    [ -n "${tmp:-}" ] && [ -d "$tmp/backup" ] || return 0
    for f in "$tmp"/backup/*; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        p=$(basename "$f" | tr '%' '/')
        mkdir -p "$(dirname "$p")"
        mv -f "$f" "$p"
    done
    rmdir "$tmp/backup" 2>/dev/null
}

# ---- RabbitMQ (the local broker) ----------------------------------------------------------
# amqp-tools cannot declare exchanges, and amqp-consume (the only one that binds)
# redeclares its queue as non-durable auto-delete, so exchanges and bindings are made
# with rabbitmqctl eval (the broker is local); amqp-tools do the rest.
AMQP_URL=${AMQP_URL:-'amqp://guest:guest@127.0.0.1:5672/%2f'}
rabbit_eval() { rabbitmqctl -q eval "$1" >/dev/null 2>&1; }
rabbit_res() { printf 'rabbit_misc:r(<<"/">>, %s, <<"%s">>)' "$1" "$2"; }
# rabbit_exchange NAME [QUEUE=KEY...]: declare a durable topic exchange and bind the
# (declared) queues to it, in one rabbitmqctl run (each starts an Erlang VM).
rabbit_exchange() {
    local x=$1 b e
    shift
    e="rabbit_exchange:declare($(rabbit_res exchange "$x"), topic, true, false, false, [], <<\"hostkit-e2e\">>)"
    for b in "$@"; do
        e="$e, ok = rabbit_binding:add({binding, $(rabbit_res exchange "$x"), <<\"${b#*=}\">>, $(rabbit_res queue "${b%%=*}"), []}, <<\"hostkit-e2e\">>)"
    done
    rabbit_eval "$e."
}
rabbit_drop_exchange() {
    rabbit_eval "rabbit_exchange:delete($(rabbit_res exchange "$1"), false, <<\"hostkit-e2e\">>)."
}
# rabbit_queue NAME: declare a durable queue.
rabbit_queue() { amqp-declare-queue -u "$AMQP_URL" -d -q "$1" >/dev/null; }
rabbit_drop_queue() { amqp-delete-queue -u "$AMQP_URL" -q "$1" >/dev/null 2>&1; }
# amqp_drain QUEUE FILE: append every message waiting in QUEUE to FILE, one per line.
amqp_drain() {
    while amqp-get -u "$AMQP_URL" -q "$1" >>"$2" 2>/dev/null; do echo >>"$2"; done
}
# ensure_rabbit: RabbitMQ answers (started detached if installed but down; sets
# started_rabbit=1 so the cleanup stops it again).
ensure_rabbit() {
    command -v rabbitmqctl >/dev/null 2>&1 || abort "RabbitMQ is not installed (run \`make deps\`)"
    if ! command -v amqp-get >/dev/null 2>&1; then
        say "installing amqp-tools"
        apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends amqp-tools >/dev/null ||
            abort "install amqp-tools"
    fi
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        say "starting RabbitMQ"
        rabbitmq-server -detached >/dev/null 2>&1
        started_rabbit=1
        rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 || abort "RabbitMQ does not start"
    fi
}

# ---- private PostgreSQL clusters ------------------------------------------------------------
# Unix sockets in $tmp only (listen_addresses = ''), so the port is only a socket's name
# and the system's PostgreSQL is never touched.
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
# pg_init DIR PORT [CONF-LINE...]: initdb DIR (trust, superuser postgres), socket in $tmp.
pg_init() {
    local dir=$1 port=$2 line
    shift 2
    as_pg "$PGBIN/initdb" -D "$dir" -A trust -U postgres >"$tmp/initdb-$(basename "$dir").log" 2>&1 || {
        cat "$tmp/initdb-$(basename "$dir").log"
        return 1
    }
    {
        echo "# tests/e2e: Unix socket only, in the test directory"
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$tmp'"
        for line in "$@"; do echo "$line"; done
    } >>"$dir/postgresql.conf"
}
pg_start() { # pg_start DIR LOG [pg_ctl -o OPTIONS]
    as_pg "$PGBIN/pg_ctl" -D "$1" -l "$2" ${3:+-o "$3"} -w -t 60 start >/dev/null 2>&1
}
pg_stop() { [ -f "$1/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$1" -m immediate -w stop >/dev/null 2>&1; }
# pq PORT SQL [DB]: one value from a private cluster.
pq() {
    as_pg "$PGBIN/psql" -h "$tmp" -p "$1" -U postgres -d "${3:-postgres}" -X -q -tA -v ON_ERROR_STOP=1 -c "$2"
}
# pg_run LABEL COMMAND...: COMMAND as postgres, output in $tmp/LABEL.out/.err, its status.
pg_run() {
    local label=$1
    shift
    as_pg "$@" >"$tmp/$label.out" 2>"$tmp/$label.err"
}
show_err() {
    echo "    stderr of $1:"
    sed 's/^/      /' "$tmp/$1.err" | tail -15
}

# ---- Debian's pgqd and skytools3-ticker -----------------------------------------------------
# skytools3-ticker replaces Debian's C pgqd (Conflicts, Replaces and Provides: pgqd) in
# the install transaction itself: removing it alone first would also remove
# postgresql-15-pgq3 (the pgq extension), which depends on pgqd. pgqd_note records what
# is installed before; the purge transaction then names pgqd+ ($pgqd_swap) so Debian's
# pgqd comes back, and pgqd_restore (in the cleanup) re-installs whatever is missing.
had_pgqd=0
pgqd_auto=0
pgqd_removed=0
pgq_pkgs=
pgqd_swap=
pgqd_note() {
    if dpkg-query -W -f='${Status}' pgqd 2>/dev/null | grep -q 'ok installed'; then
        had_pgqd=1
        pgqd_swap=pgqd+
        apt-mark showauto pgqd 2>/dev/null | grep -qx pgqd && pgqd_auto=1
        say "Debian's pgqd $(dpkg-query -W -f='${Version}' pgqd) is installed: replaced" \
            "by skytools3-ticker, re-installed at the end"
    fi
    # The pgq extension packages (they depend on pgqd): they must survive the swap.
    pgq_pkgs=$(dpkg-query -W -f='${Package} ${Status}\n' 'postgresql-*-pgq3' 2>/dev/null |
        awk '/ok installed/ { print $1 }' | tr '\n' ' ')
}
pgqd_restore() {
    local p
    if [ $pgqd_removed = 1 ]; then
        say "re-installing Debian's pgqd"
        apt-get install -y -q --no-install-recommends pgqd >/dev/null 2>&1 ||
            echo "$CHECKS_NAME: error: could not re-install Debian's pgqd" >&2
    fi
    for p in $pgq_pkgs; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
            say "re-installing $p"
            apt-get install -y -q --no-install-recommends "$p" >/dev/null 2>&1 ||
                echo "$CHECKS_NAME: error: could not re-install $p" >&2
        fi
    done
    if [ $had_pgqd = 1 ] && [ $pgqd_auto = 1 ]; then
        apt-mark auto pgqd >/dev/null 2>&1
    fi
}
