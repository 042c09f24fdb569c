#!/bin/bash
# End-to-end test of the snf-cyclades-gtools Debian package, driven as an operator
# would: install the .deb from dist/ (`make deb` builds it), configure
# /etc/synnefo/gtools.conf and /etc/default/snf-ganeti-eventd, run the daemon through
# its init script against a fake Ganeti queue and the local RabbitMQ, check that a job
# change reaches a queue bound to the exchange, reload, stop, refuse a bad
# configuration, then purge and check that the package's files are gone.
#
# Needs root, RabbitMQ at 127.0.0.1:5672 (guest/guest; started if it is installed but
# down, and stopped again afterwards) and amqp-tools (installed with apt if missing).
# No Ganeti cluster is needed: the job queue and ssconf files are fakes in a temp dir.
# Everything touched is restored on exit: the daemon is stopped, the package purged,
# files that existed before under its conffile paths put back, the test exchange and
# queue deleted from RabbitMQ.
#
# The last line is `deb-eventd: N passed, M failed`; the exit status is 0 only if
# M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

PKG=snf-cyclades-gtools
NAME=snf-ganeti-eventd
DAEMON=/usr/sbin/$NAME
INIT=/etc/init.d/$NAME
DEFAULTS=/etc/default/$NAME
CONF=/etc/synnefo/gtools.conf
PIDFILE=/var/run/$NAME.pid
SPOOL=/var/spool/$NAME
ROOT=$(pwd)
FIXTURE=tests/fixtures/ganeti/job-versions/job-6-instance-startup-v4-waiting.json
AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'
EXCHANGE=hk-e2e-$$
QUEUE=hk-e2e-$$-q
NODE=node1.hk-e2e.test

installed=0
started_rabbit=0
exchange_declared=0
queue_declared=0
tmp=
backup=
finished=0

CHECKS_NAME=deb-eventd
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh

rabbit_eval() { rabbitmqctl -q eval "$1" >/dev/null 2>&1; }
exchange_resource() { printf 'rabbit_misc:r(<<"/">>, exchange, <<"%s">>)' "$EXCHANGE"; }
queue_resource() { printf 'rabbit_misc:r(<<"/">>, queue, <<"%s">>)' "$QUEUE"; }

daemon_pids() { pidof "$DAEMON" 2>/dev/null || true; }
# A running process (a zombie not yet reaped by PID 1 does not count).
alive() {
    [ -n "${1:-}" ] && [ -d "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
dead() { ! alive "$1"; }

cleanup() {
    local rc=$? p f
    trap - EXIT INT TERM
    set +e
    if [ $finished = 0 ]; then
        say "cleaning up after an early exit"
    fi
    # Daemon: through the init script if it is still there, else by pid.
    if [ -n "$(daemon_pids)" ]; then
        if [ -x $INIT ]; then $INIT stop >/dev/null 2>&1; fi
        for p in $(daemon_pids); do kill -TERM "$p" 2>/dev/null; done
        sleep 1
        for p in $(daemon_pids); do kill -KILL "$p" 2>/dev/null; done
    fi
    if [ $installed = 1 ] && dpkg-query -W -f='${Status}' $PKG 2>/dev/null | grep -q 'ok installed\|config-files'; then
        apt-get purge -y -q $PKG >/dev/null 2>&1
    fi
    rm -f $PIDFILE
    # Files that were there before the test, under paths the package owns.
    if [ -n "$backup" ] && [ -d "$backup" ]; then
        for f in "$backup"/*; do
            [ -e "$f" ] || continue
            p=$(basename "$f" | tr '%' '/')
            mkdir -p "$(dirname "$p")"
            mv -f "$f" "$p"
        done
        rmdir "$backup" 2>/dev/null
    fi
    if [ $queue_declared = 1 ]; then
        amqp-delete-queue -u "$AMQP_URL" -q "$QUEUE" >/dev/null 2>&1
    fi
    if [ $exchange_declared = 1 ]; then
        rabbit_eval "rabbit_exchange:delete($(exchange_resource), false, <<\"hostkit-e2e\">>)."
    fi
    if [ $started_rabbit = 1 ]; then
        rabbitmqctl -q stop >/dev/null 2>&1
    fi
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deb-eventd: must run as root (it installs a package)" >&2; exit 1; }
deb=$(deb_for "$PKG") || exit 1
say "testing $deb"

if ! command -v amqp-get >/dev/null 2>&1; then
    say "installing amqp-tools"
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends amqp-tools >/dev/null ||
        abort "install amqp-tools"
fi
if ! command -v rabbitmqctl >/dev/null 2>&1; then
    abort "RabbitMQ is not installed (run \`make deps\`)"
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1
    started_rabbit=1
    rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 || abort "RabbitMQ does not start"
fi

if dpkg-query -W -f='${Status}' $PKG 2>/dev/null | grep -q 'ok installed\|config-files'; then
    say "$PKG is already installed (left over from an earlier run?): purging it first"
    [ -x $INIT ] && $INIT stop >/dev/null 2>&1
    apt-get purge -y -q $PKG >/dev/null 2>&1 || abort "purge the previously installed $PKG"
fi
if [ -n "$(daemon_pids)" ]; then
    abort "a $NAME process is already running: $(daemon_pids)"
fi

tmp=$(mktemp -d /tmp/hk-deb-e2e.XXXXXX)
chmod 755 "$tmp"
# Move aside anything already at the package's paths (dpkg would otherwise ask about
# an existing conffile), and put it back at the end.
backup=$tmp/backup
mkdir -p "$backup"
for f in $CONF $DEFAULTS $INIT /etc/logrotate.d/$NAME; do
    [ -e $f ] && mv -f $f "$backup/$(printf %s $f | tr / %)"
done

# ---- install -------------------------------------------------------------------------
say "installing"
installed=1
if apt-get install -y -q --no-install-recommends "./$deb" >"$tmp/apt-install.log" 2>&1; then
    ok "apt-get install ./$deb"
else
    cat "$tmp/apt-install.log"
    abort "apt-get install ./$deb"
fi
version=$(dpkg-query -W -f='${Version}' $PKG)
check "$NAME --version reports $version" \
    sh -c "$DAEMON --version | grep -qF -- '$version'"
check "man -w $NAME finds the manual page" sh -c "man -w $NAME >/dev/null"
check "conffile $CONF exists and is a conffile" \
    sh -c "[ -f $CONF ] && dpkg-query -W -f='\${Conffiles}' $PKG | grep -q ' $CONF '"
check "conffile $CONF (it holds the AMQP password) is 0640 root:root" \
    sh -c "[ \"\$(stat -c %a:%U:%G $CONF)\" = 640:root:root ]"
check "example config installed" test -f /usr/share/doc/$PKG/examples/gtools.conf
check "init script $INIT installed" test -x $INIT
check "defaults file $DEFAULTS installed" test -f $DEFAULTS
check "systemd unit installed" test -f /lib/systemd/system/$NAME.service
check "logrotate config is valid" sh -c "logrotate --debug /etc/logrotate.d/$NAME >/dev/null 2>&1"
check "snf-ganeti-hook and snf-progress-monitor installed" sh -c "test -x /usr/sbin/snf-ganeti-hook && test -x /usr/bin/snf-progress-monitor"
check "spool $SPOOL created with mode 0750" sh -c "[ \"\$(stat -c %a $SPOOL)\" = 750 ]"
check "rc links installed" sh -c "ls /etc/rc2.d/S*$NAME >/dev/null 2>&1"

# ---- configure -------------------------------------------------------------------------
queue=$tmp/queue
data=$tmp/data
log=$tmp/eventd.log
mkdir -p "$queue" "$data"
echo "$NODE" >"$data/ssconf_master_node"
echo "cluster.hk-e2e.test" >"$data/ssconf_cluster_name"
cat >$CONF <<EOF
# Written by tests/e2e/deb-eventd.sh
[gtools]
amqp_hosts = amqp://guest:guest@127.0.0.1:5672/%%2f
exchange_ganeti = $EXCHANGE
data_dir = $data
node_name = $NODE
amqp_connect_timeout = 5

[eventd]
queue_dir = $queue
log_file = $log
EOF
sed -i 's/^SNF_EVENTD_ENABLE=.*/SNF_EVENTD_ENABLE=true/' $DEFAULTS
grep -q '^SNF_EVENTD_ENABLE=true$' $DEFAULTS || echo 'SNF_EVENTD_ENABLE=true' >>$DEFAULTS

# The test's exchange (topic, durable) and a durable queue bound to it with '#'.
# amqp-tools cannot declare exchanges, and amqp-consume (the only one that binds)
# redeclares its queue as non-durable auto-delete, so the exchange and the binding
# are made with rabbitmqctl eval (the broker is local); amqp-tools do the rest.
if rabbit_eval "rabbit_exchange:declare($(exchange_resource), topic, true, false, false, [], <<\"hostkit-e2e\">>)."; then
    exchange_declared=1
    ok "declare exchange $EXCHANGE (topic, durable)"
else
    abort "declare exchange $EXCHANGE with rabbitmqctl eval"
fi
if amqp-declare-queue -u "$AMQP_URL" -d -q "$QUEUE" >/dev/null; then
    queue_declared=1
    ok "declare queue $QUEUE"
else
    abort "declare queue $QUEUE"
fi
if rabbit_eval "rabbit_binding:add({binding, $(exchange_resource), <<\"#\">>, $(queue_resource), []}, <<\"hostkit-e2e\">>)."; then
    ok "bind queue $QUEUE to $EXCHANGE with '#'"
else
    abort "bind queue $QUEUE to $EXCHANGE with rabbitmqctl eval"
fi
check "binding listed by rabbitmqctl" \
    sh -c "rabbitmqctl -q list_bindings source_name destination_name routing_key | grep -qP '^\\Q$EXCHANGE\\E\\t\\Q$QUEUE\\E\\t#\$'"

# ---- start -----------------------------------------------------------------------------
say "starting the daemon"
check "$INIT start returns 0" $INIT start
check "$INIT status returns 0" $INIT status
pid=$(tr -dc 0-9 <$PIDFILE 2>/dev/null)
check "pidfile names a running $NAME" \
    sh -c "[ -n '$pid' ] && [ \"\$(readlink /proc/$pid/exe)\" = $DAEMON ]"

# ---- a job change is published -----------------------------------------------------------
# As Ganeti writes job files: a temp file in the queue directory, renamed into place.
jobtmp=$(mktemp -p "$queue" .job-6-XXXXXX)
cat $FIXTURE >"$jobtmp"
chmod 0640 "$jobtmp"
mv -f "$jobtmp" "$queue/job-6"
got=0
: >"$tmp/msgs"
for _ in $(seq 1 50); do
    while amqp-get -u "$AMQP_URL" -q "$QUEUE" >>"$tmp/msgs" 2>/dev/null; do echo >>"$tmp/msgs"; done
    if grep '"ganeti-op-status"' "$tmp/msgs" | grep -qE '"status": ?"waiting"'; then
        got=1
        break
    fi
    sleep 0.2
done
if [ $got = 1 ]; then
    ok "ganeti-op-status message with status waiting arrived within 10 s"
else
    nok "ganeti-op-status message with status waiting arrived within 10 s"
    echo "  messages: $(cat "$tmp/msgs")"
    echo "  daemon log:"; sed 's/^/    /' "$log" 2>/dev/null | tail -20
fi
check "message is for job 6, instance inst1.example.test" \
    sh -c "grep -q '\"jobId\": \\?6' '$tmp/msgs' && grep -q 'inst1.example.test' '$tmp/msgs'"

# ---- the hook and the progress monitor -------------------------------------------------
# wait_for_msg PATTERN: poll the queue (10 s) until a message matching PATTERN arrived.
wait_for_msg() {
    for _ in $(seq 1 50); do
        while amqp-get -u "$AMQP_URL" -q "$QUEUE" >>"$tmp/msgs" 2>/dev/null; do echo >>"$tmp/msgs"; done
        grep -q "$1" "$tmp/msgs" && return 0
        sleep 0.2
    done
    return 1
}
for h in add modify reboot start stop; do
    link=/etc/ganeti/hooks/instance-$h-post.d/00-snf-ganeti-hook
    check "hook linked as $link" sh -c "[ \"\$(readlink -f $link)\" = /usr/sbin/snf-ganeti-hook ]"
done
check "man -w snf-ganeti-hook and snf-progress-monitor" sh -c "man -w snf-ganeti-hook >/dev/null && man -w snf-progress-monitor >/dev/null"
hookenv=$ROOT/tests/fixtures/ganeti/hook-env/instance-start-post-inst1-diskless.env
# As Ganeti runs it: through the symlink, clean environment, cwd /, stdin /dev/null.
check "post-hook run through its symlink exits 0" sh -c "cd / && env -i \$(grep -v '^#' $hookenv | grep -v '^PWD=' | sed 's/^GANETI_MASTER=.*/GANETI_MASTER=$NODE/') /etc/ganeti/hooks/instance-start-post.d/00-snf-ganeti-hook </dev/null"
check "ganeti-net-status from the hook arrived" wait_for_msg '"ganeti-net-status"'
check "snf-progress-monitor publishes a stream and exits 0" sh -c "printf '{\"type\":\"image-info\",\"messages\":[\"e2e\"]}garbage{\"type\":\"image-copy-progress\",\"progress\":50}' | snf-progress-monitor snf-e2e 2>/dev/null"
check "progress messages arrived" wait_for_msg '"image-copy-progress"'

# ---- reload ----------------------------------------------------------------------------
check "$INIT reload returns 0" $INIT reload
sleep 1
check "daemon pid unchanged after reload" \
    sh -c "[ \"\$(tr -dc 0-9 <$PIDFILE)\" = '$pid' ]"
check "daemon still running after reload" alive "$pid"
check "$INIT status returns 0 after reload" $INIT status
check "the daemon logged the reload" grep -q 'configuration reloaded' "$log"

# ---- logrotate -----------------------------------------------------------------------------
# The packaged rules, pointed at the test's log file: postrotate must make the daemon
# reopen it (the SIGHUP also reloads, which logs a line into the new file).
sed "s|^/var/log/$NAME.log |$log |" /etc/logrotate.d/$NAME >"$tmp/logrotate.conf"
check "logrotate -f with the packaged rules returns 0" \
    logrotate -f -s "$tmp/logrotate.state" "$tmp/logrotate.conf"
check "log rotated to $(basename "$log").1" grep -q 'configuration reloaded' "$log.1"
reopened=0
for _ in $(seq 1 25); do
    grep -q 'configuration reloaded' "$log" 2>/dev/null && { reopened=1; break; }
    sleep 0.2
done
check "the daemon reopened its log after postrotate" test $reopened = 1
check "daemon pid unchanged after logrotate" \
    sh -c "[ \"\$(tr -dc 0-9 <$PIDFILE)\" = '$pid' ]"

# ---- stop ------------------------------------------------------------------------------
check "$INIT stop returns 0" $INIT stop
$INIT status >/dev/null 2>&1
st=$?
check "$INIT status returns 3 when stopped (got $st)" test $st = 3
check "pidfile removed" test ! -e $PIDFILE
check "no $NAME process left" sh -c "[ -z \"\$(pidof $DAEMON)\" ]"
check "the daemon's pid $pid is gone" dead "$pid"

# ---- a bad configuration is refused ------------------------------------------------------
sed -i 's/^exchange_ganeti =/exchange_ganetti =/' $CONF
$INIT start >"$tmp/bad-start.log" 2>&1
st=$?
check "$INIT start with an unknown key fails (exit $st)" test $st != 0
check "the error names the unknown key" grep -q 'exchange_ganetti' "$tmp/bad-start.log"
check "no $NAME process after the failed start" sh -c "[ -z \"\$(pidof $DAEMON)\" ]"

# ---- purge -----------------------------------------------------------------------------
say "purging"
if apt-get purge -y -q $PKG >"$tmp/apt-purge.log" 2>&1; then
    ok "apt-get purge $PKG"
    installed=0
else
    cat "$tmp/apt-purge.log"
    nok "apt-get purge $PKG"
fi
check "binary removed" test ! -e $DAEMON
check "conffile removed" test ! -e $CONF
check "init script removed" test ! -e $INIT
check "defaults file removed" test ! -e $DEFAULTS
check "logrotate config removed" test ! -e /etc/logrotate.d/$NAME
check "systemd unit removed" test ! -e /lib/systemd/system/$NAME.service
check "spool removed" test ! -e $SPOOL
check "rc links removed" sh -c "! ls /etc/rc?.d/*$NAME >/dev/null 2>&1"
check "package fully gone from dpkg" \
    sh -c "! dpkg-query -W -f='\${Status}' $PKG 2>/dev/null | grep -q 'installed\|config-files'"

finished=1
