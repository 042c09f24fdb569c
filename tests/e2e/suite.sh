#!/bin/bash
# The whole suite on one host, from the installed .debs only (dist/, `make deb`), as an
# operator runs it: every package installed at once, every program running together.
#
#   pacha        installed first: its apt hook records /etc and then every package
#                change; its daemon (enabled in /etc/default/pacha) commits what the
#                other packages and this script change under /etc.
#   gtools       a real one-node Ganeti cluster (tests/e2e/ganeti-cluster.sh, in its own
#                namespaces), the packaged hook symlinks, snf-ganeti-eventd started by
#                its init script: instance add/start/reboot/stop/remove reach queues
#                bound to the exchange by their exact routing keys.
#   walmgr       a private PostgreSQL cluster whose archive_command the packaged
#                `walmgr setup` sets, pgbench traffic archived, a backup restored into a
#                second cluster that replays the store until its rows are the primary's,
#                then promoted.
#   skytools     pgqd started by /etc/init.d/skytools3 -> scriptmgr, ticking a queue
#                in the primary that a consumer reads.
#   ele-tools    ele_report run as /etc/cron.d/ele-tools says (its user, environment and
#                command parsed from the line), the admin database (in the system's
#                PostgreSQL) then holds both clusters.
#   calink       run with its packaged configuration: the archive holds the other
#                programs' configurations and logs, with their secrets (an AMQP password
#                in gtools.conf, a libpq password in pgqd.ini and the walmgr ini)
#                masked.
# Then each package's operator checks (reload, logrotate, stop, a bad configuration),
# the purge of every package, and what a purge must leave behind.
#
# Needs root, RabbitMQ at 127.0.0.1:5672 (guest/guest), PostgreSQL at 127.0.0.1:5432
# (trust, superuser postgres) with the pgq extension, PostgreSQL 15's server binaries,
# and what ganeti-cluster.sh installs (Debian's ganeti). Everything is undone on exit:
# cluster and namespaces down, daemons stopped, packages purged (Debian's pgqd back if
# it was installed), files that were at the packages' paths put back, the test's
# RabbitMQ user, exchange and queues and its admin database dropped.
#
# The last line is `suite: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

CHECKS_NAME=suite
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lib.sh
. tests/e2e/lib.sh
# Phases with the seconds since the start: where the suite's time goes.
say() { echo "$CHECKS_NAME: [${SECONDS}s] $*"; }

PACKAGES=(snf-cyclades-gtools skytools3 skytools3-ticker skytools3-walmgr ele-tools calink)
GANETI=tests/e2e/ganeti-cluster.sh
# gtools
EVENTD=/usr/sbin/snf-ganeti-eventd
EV_INIT=/etc/init.d/snf-ganeti-eventd
EV_DEFAULTS=/etc/default/snf-ganeti-eventd
GTOOLS=/etc/synnefo/gtools.conf
EV_PID=/var/run/snf-ganeti-eventd.pid
EV_LOG=/var/log/snf-ganeti-eventd.log
SPOOL=/var/spool/snf-ganeti-eventd
NODE=node1.example.test
INSTANCE=inst1.example.test
EXCHANGE=hk-e2e-suite-$$
Q_OP=$EXCHANGE-op
Q_NET=$EXCHANGE-net
Q_ALL=$EXCHANGE-all
RK_OP=ganeti.$INSTANCE.event.op
RK_NET=ganeti.$INSTANCE.event.net
AMQP_USER=hk-e2e-$$
# skytools
SKY_INIT=/etc/init.d/skytools3
SKY_CONF=/etc/skytools.ini
JOB=/etc/skytools/pgqd.ini
PGQD=/usr/bin/pgqd
PGQD_PID=/var/run/skytools/pgqd.pid
PGQD_LOG=/var/log/skytools/pgqd.log
# walmgr
WALMGR=/usr/bin/walmgr
WALDIR=/etc/skytools/walmgr
WAL_LOG=/var/log/postgresql/wal-master-e2e.log
# Only the names of the Unix sockets in $tmp (no TCP): any value is free.
PORT=55481
RPORT=55482
# ele-tools
REPORT_INI=/etc/ele_tools/report.ini
CRON=/etc/cron.d/ele-tools
ADMIN_DB=hk_e2e_admin_$$
PSQL=(psql -h 127.0.0.1 -U postgres -X -q -tA -v ON_ERROR_STOP=1)
# calink
CALINK=/usr/bin/calink
CALINK_CONF=/etc/calink/calink.ini
# pacha
PACHA=/usr/bin/pacha
PACHA_STATE=/var/lib/pacha
PACHA_LOGDIR=/var/log/pacha

installed=0
cluster_up=0
started_rabbit=0
rabbit_made=0
admin_made=0
pacha_logdir_made=0
tmp=
finished=0

# The test's secrets: none may appear in calink's archive.
SECRET_AMQP=amqp$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
SECRET_PG=pg$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')

admin_sql() { "${PSQL[@]}" -d "$ADMIN_DB" -c "$1"; }
eventd_pids() { pidof "$EVENTD" 2>/dev/null || true; }
# Live pgqd processes of user skytools (the first fork stays a zombie where PID 1 does
# not reap).
job_pids() {
    ps -u skytools -o pid=,stat=,comm= 2>/dev/null |
        awk '$3 == "pgqd" && $2 !~ /^Z/ { printf "%s%s", s, $1; s = " " }'
}
no_job() { [ -z "$(job_pids)" ]; }
# pacha_log PATH: the commits pacha recorded for PATH.
pacha_log() { $PACHA log "$1" 2>/dev/null; }

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    set +e
    if [ $finished = 0 ]; then
        say "cleaning up after an early exit"
        if [ -n "$tmp" ]; then
            for p in "$tmp"/primary.log "$tmp"/restored.log $EV_LOG $PGQD_LOG; do
                [ -f "$p" ] && { echo "  $p:"; tail -15 "$p" | sed 's/^/    /'; }
            done
        fi
    fi
    [ -x /etc/init.d/pacha ] && /etc/init.d/pacha stop >/dev/null 2>&1
    if [ $cluster_up = 1 ]; then
        bash $GANETI down >"$tmp/ganeti-down.log" 2>&1 ||
            { echo "  ganeti-cluster.sh down:"; tail -20 "$tmp/ganeti-down.log"; }
    fi
    if [ -n "$(eventd_pids)" ]; then
        [ -x $EV_INIT ] && $EV_INIT stop >/dev/null 2>&1
        for p in $(eventd_pids); do kill -TERM "$p" 2>/dev/null; done
    fi
    if [ -n "$(job_pids)" ]; then
        [ -x $SKY_INIT ] && $SKY_INIT stop >/dev/null 2>&1
        for p in $(job_pids); do kill -INT "$p" 2>/dev/null; done
        sleep 1
        for p in $(job_pids); do kill -KILL "$p" 2>/dev/null; done
    fi
    if [ -n "$tmp" ]; then
        pg_stop "$tmp/restored"
        pg_stop "$tmp/primary"
    fi
    rm -rf $JOB $WALDIR
    rm -f $WAL_LOG
    if [ $installed = 1 ]; then
        # Debian's pgqd back in the same transaction (pgqd+), so that nothing depending
        # on pgqd (postgresql-15-pgq3) goes with skytools3-ticker.
        if [ $pgqd_removed = 1 ] && installed_pkg skytools3-ticker; then
            apt-get purge -y -q "${PACKAGES[@]}" pgqd+ >/dev/null 2>&1 && pgqd_removed=0
        fi
        for p in "${PACKAGES[@]}" pacha; do
            installed_pkg $p && apt-get purge -y -q $p >/dev/null 2>&1
        done
        # The history of /etc the package's hook made (a purge keeps it).
        rm -rf $PACHA_STATE
    fi
    [ $pacha_logdir_made = 1 ] && rm -rf $PACHA_LOGDIR
    rm -f $EV_PID
    put_back
    if [ $admin_made = 1 ]; then
        "${PSQL[@]}" -d postgres -c "drop database if exists $ADMIN_DB with (force)" >/dev/null 2>&1
    fi
    if [ $rabbit_made = 1 ]; then
        for p in $Q_OP $Q_NET $Q_ALL; do rabbit_drop_queue "$p"; done
        rabbit_drop_exchange "$EXCHANGE"
        rabbitmqctl -q delete_user "$AMQP_USER" >/dev/null 2>&1
    fi
    [ $started_rabbit = 1 ] && rabbitmqctl -q stop >/dev/null 2>&1
    pgqd_restore
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ==== preconditions =======================================================================
[ "$(id -u)" = 0 ] || { echo "suite: must run as root (it installs packages)" >&2; exit 1; }
debs=()
for p in "${PACKAGES[@]}" pacha; do
    found=$(deb_for "$p") || exit 1
    debs+=("./$found")
done
pacha_deb=${debs[-1]}
unset 'debs[-1]'
say "testing ${debs[*]} $pacha_deb"
[ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pgbench" ] ||
    abort "no $PGBIN/initdb or pgbench (install postgresql-15 and postgresql-contrib: \`make deps\`)"
"${PSQL[@]}" -d postgres -c 'select 1' >/dev/null 2>&1 ||
    abort "PostgreSQL does not answer at 127.0.0.1:5432 as postgres (run \`make deps\`)"
[ "$("${PSQL[@]}" -d postgres -c "select count(*) from pg_available_extensions where name = 'pgq'")" = 1 ] ||
    abort "the pgq extension is not available (install postgresql-15-pgq3)"
command -v jq >/dev/null 2>&1 || abort "no jq (run \`make deps\`)"
ensure_rabbit

for p in "${PACKAGES[@]}" pacha; do
    if installed_pkg $p; then
        say "$p is already installed (left over from an earlier run?): purging it first"
        for i in $EV_INIT $SKY_INIT /etc/init.d/pacha; do [ -x $i ] && $i stop >/dev/null 2>&1; done
        apt-get purge -y -q $p >/dev/null 2>&1 || abort "purge the previously installed $p"
    fi
done
[ -z "$(eventd_pids)" ] || abort "a snf-ganeti-eventd is already running: $(eventd_pids)"
no_job || abort "a pgqd of user skytools is already running: $(job_pids)"
bash $GANETI status >/dev/null 2>&1
[ $? = 3 ] || say "a Ganeti cluster of ganeti-cluster.sh is up or half up: \`up\` reuses or rebuilds it"

tmp=$(mktemp -d /tmp/hk-suite-e2e.XXXXXX)
chmod 755 "$tmp"
chown postgres: "$tmp"
# What is already at the packages' paths goes aside (dpkg would ask about an existing
# conffile, scriptmgr would start other jobs) and comes back at the end.
set_aside $GTOOLS $EV_DEFAULTS $EV_INIT /etc/logrotate.d/snf-ganeti-eventd \
    $SKY_CONF $SKY_INIT /etc/logrotate.d/skytools3 /etc/skytools/*.ini $REPORT_INI $CRON \
    $CALINK_CONF /etc/pacha/pacha.ini /etc/default/pacha /etc/init.d/pacha /etc/apt/apt.conf.d/05pacha
# A history a purge left (pacha keeps it) would be this run's otherwise.
[ -e $PACHA_STATE ] && say "$PACHA_STATE exists (an earlier purge left it): set aside, put back at the end"
set_aside $PACHA_STATE
pgqd_note

# ==== install =============================================================================
say "installing pacha, then the other packages in one transaction"
installed=1
if apt-get install -y -q --no-install-recommends "$pacha_deb" >"$tmp/apt-pacha.log" 2>&1; then
    ok "apt-get install $pacha_deb"
else
    cat "$tmp/apt-pacha.log"
    abort "apt-get install $pacha_deb"
fi
[ $had_pgqd = 1 ] && pgqd_removed=1
if apt-get install -y -q --no-install-recommends "${debs[@]}" >"$tmp/apt-install.log" 2>&1; then
    ok "apt-get install ${debs[*]}"
else
    cat "$tmp/apt-install.log"
    abort "apt-get install ${debs[*]}"
fi
version=$(dpkg-query -W -f='${Version}' snf-cyclades-gtools)
if [ $had_pgqd = 1 ]; then
    check "Debian's pgqd removed by the install (Conflicts: pgqd)" \
        sh -c "! dpkg-query -W -f='\${Status}' pgqd 2>/dev/null | grep -q 'ok installed'"
fi
for p in $pgq_pkgs; do
    check "$p still installed (skytools3-ticker provides pgqd)" \
        sh -c "dpkg-query -W -f='\${Status}' $p | grep -q 'ok installed'"
done

# ---- snf-cyclades-gtools, as installed (moved from deb-eventd.sh) -------------------------
check "snf-ganeti-eventd --version reports $version" sh -c "$EVENTD --version | grep -qF -- '$version'"
check "man -w snf-ganeti-eventd finds the manual page" sh -c "man -w snf-ganeti-eventd >/dev/null"
check "conffile $GTOOLS exists and is a conffile" \
    sh -c "[ -f $GTOOLS ] && dpkg-query -W -f='\${Conffiles}' snf-cyclades-gtools | grep -q ' $GTOOLS '"
check "conffile $GTOOLS (it holds the AMQP password) is 0640 root:root" \
    sh -c "[ \"\$(stat -c %a:%U:%G $GTOOLS)\" = 640:root:root ]"
check "example config installed" test -f /usr/share/doc/snf-cyclades-gtools/examples/gtools.conf
check "init script $EV_INIT installed" test -x $EV_INIT
check "defaults file $EV_DEFAULTS installed" test -f $EV_DEFAULTS
check "systemd unit snf-ganeti-eventd.service installed" test -f /lib/systemd/system/snf-ganeti-eventd.service
check "logrotate config of snf-ganeti-eventd is valid" \
    sh -c "logrotate --debug /etc/logrotate.d/snf-ganeti-eventd >/dev/null 2>&1"
check "snf-ganeti-hook and snf-progress-monitor installed" \
    sh -c "test -x /usr/sbin/snf-ganeti-hook && test -x /usr/bin/snf-progress-monitor"
check "man -w snf-ganeti-hook and snf-progress-monitor" \
    sh -c "man -w snf-ganeti-hook >/dev/null && man -w snf-progress-monitor >/dev/null"
check "spool $SPOOL created with mode 0750" sh -c "[ \"\$(stat -c %a $SPOOL)\" = 750 ]"
check "rc links of snf-ganeti-eventd installed" sh -c "ls /etc/rc2.d/S*snf-ganeti-eventd >/dev/null 2>&1"
HOOKS="add reboot start stop modify"
for h in $HOOKS; do
    link=/etc/ganeti/hooks/instance-$h-post.d/00-snf-ganeti-hook
    check "hook linked as $link" sh -c "[ \"\$(readlink -f $link)\" = /usr/sbin/snf-ganeti-hook ]"
done

# ---- calink, as installed (moved from deb-calink.sh) ----------------------------------------
check "$CALINK belongs to calink" sh -c "dpkg -S $CALINK | grep -q '^calink: '"
check "calink --version reports $version" sh -c "$CALINK --version | grep -qF -- '${version%%-*}'"
check "man -w calink finds the manual page" \
    sh -c "[ \"\$(man -w calink)\" = /usr/share/man/man1/calink.1.gz ]"
check "the manual page of calink renders without warnings" \
    sh -c "[ -z \"\$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=w calink 2>&1 >/dev/null)\" ]"
check "$CALINK_CONF is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' calink | grep -q ' $CALINK_CONF '"

# ---- pacha recorded the installation -----------------------------------------------------------
# The first apt run after pacha's own installation records /etc, then the transaction.
check "pacha committed the transaction with its package changes" \
    sh -c "git --git-dir=$PACHA_STATE/repo.git log -1 --format=%B | grep -qx '+snf-cyclades-gtools $version'"
git --git-dir=$PACHA_STATE/repo.git show --name-only --format= HEAD >"$tmp/pacha-install.files" 2>/dev/null
for f in etc/synnefo/gtools.conf etc/skytools.ini etc/cron.d/ele-tools etc/ele_tools/report.ini \
    etc/calink/calink.ini etc/init.d/skytools3 etc/ganeti/hooks/instance-start-post.d/00-snf-ganeti-hook; do
    check "... with /$f" grep -qx "$f" "$tmp/pacha-install.files"
done

# ---- pacha's daemon on /etc --------------------------------------------------------------------
# Its log where calink looks for it.
if [ ! -d $PACHA_LOGDIR ]; then mkdir -p $PACHA_LOGDIR && pacha_logdir_made=1; fi
sed -i "s|^log = .*|log = $PACHA_LOGDIR/pacha.log|" /etc/pacha/pacha.ini
sed -i 's/^ENABLED=.*/ENABLED=yes/' /etc/default/pacha
check "/etc/init.d/pacha start (enabled)" /etc/init.d/pacha start
check "/etc/init.d/pacha status" /etc/init.d/pacha status

# ==== RabbitMQ: a user of the test's, its exchange, queues bound by routing key ============
rabbit_made=1
check "RabbitMQ user $AMQP_USER with a password of the test's" \
    sh -c "rabbitmqctl -q add_user '$AMQP_USER' '$SECRET_AMQP' >/dev/null 2>&1 &&
           rabbitmqctl -q set_permissions -p / '$AMQP_USER' '.*' '.*' '.*' >/dev/null 2>&1"
for q in $Q_OP $Q_NET $Q_ALL; do rabbit_queue "$q" || abort "declare queue $q"; done
rabbit_exchange "$EXCHANGE" "$Q_OP=$RK_OP" "$Q_NET=$RK_NET" "$Q_ALL=#" ||
    abort "declare exchange $EXCHANGE and bind the queues with rabbitmqctl eval"
rabbitmqctl -q list_bindings source_name destination_name routing_key >"$tmp/bindings" 2>&1
check "$Q_OP bound by $RK_OP, $Q_NET by $RK_NET, $Q_ALL by # (rabbitmqctl list_bindings)" \
    sh -c "printf '%s\t%s\t%s\n' $EXCHANGE $Q_OP $RK_OP $EXCHANGE $Q_NET $RK_NET $EXCHANGE $Q_ALL '#' |
           grep -vxFf '$tmp/bindings' | grep -q . && exit 1 || exit 0"

# ==== gtools: configure, the Ganeti cluster, eventd by its init script ===================
# As an operator edits the shipped file: the commented keys set.
sed -i -e "s|^#amqp_hosts = .*|amqp_hosts = amqp://$AMQP_USER:$SECRET_AMQP@127.0.0.1:5672/%%2f|" \
    -e "s|^#exchange_ganeti = .*|exchange_ganeti = $EXCHANGE|" \
    -e "s|^#node_name = .*|node_name = $NODE|" $GTOOLS
check "gtools.conf edited (amqp_hosts, exchange_ganeti, node_name)" \
    sh -c "[ \"\$(grep -cE '^(amqp_hosts|exchange_ganeti|node_name) = ' $GTOOLS)\" = 3 ]"
grep -q '^SNF_EVENTD_ENABLE=true$' $EV_DEFAULTS || sed -i 's/^SNF_EVENTD_ENABLE=.*/SNF_EVENTD_ENABLE=true/' $EV_DEFAULTS

say "bringing up the Ganeti cluster"
cluster_up=1
if bash $GANETI up >"$tmp/ganeti-up.log" 2>&1; then
    ok "ganeti-cluster.sh up"
else
    tail -30 "$tmp/ganeti-up.log"
    abort "ganeti-cluster.sh up"
fi
eval "$(bash $GANETI env)"

say "starting snf-ganeti-eventd"
check "$EV_INIT start returns 0" $EV_INIT start
check "$EV_INIT status returns 0" $EV_INIT status
ev_pid=$(tr -dc 0-9 <$EV_PID 2>/dev/null)
check "pidfile names a running snf-ganeti-eventd" \
    sh -c "[ -n '$ev_pid' ] && [ \"\$(readlink /proc/$ev_pid/exe)\" = $EVENTD ]"
check "eventd logs to $EV_LOG" wait_for 10 grep -q ' started: ' $EV_LOG

# ---- the instance's life -------------------------------------------------------------------
OPS="OP_INSTANCE_CREATE OP_INSTANCE_STARTUP OP_INSTANCE_REBOOT OP_INSTANCE_SET_PARAMS OP_INSTANCE_SHUTDOWN OP_INSTANCE_REMOVE"
gnt() {
    if timeout 300 "$@" </dev/null >>"$tmp/gnt.log" 2>&1; then ok "$*"; else nok "$*"; tail -5 "$tmp/gnt.log"; fi
}
gnt gnt-instance add -t diskless -o "$HK_GNT_OS" -n $NODE --net 0 -B memory=128M \
    --no-ip-check --no-install --no-start $INSTANCE
gnt gnt-instance startup $INSTANCE
gnt gnt-instance reboot $INSTANCE
gnt gnt-instance modify -B memory=256M $INSTANCE
gnt gnt-instance shutdown $INSTANCE
gnt gnt-instance remove -f $INSTANCE

: >"$tmp/op.json"
: >"$tmp/net.json"
# Every op reached success, and the add, start, reboot and modify post-hooks (stop
# sends nothing) each published a ganeti-net-status.
all_arrived() {
    amqp_drain $Q_OP "$tmp/op.json"
    amqp_drain $Q_NET "$tmp/net.json"
    [ "$(jq -s --arg i $INSTANCE '[.[] | select(.instance == $i and .status == "success")] | length' "$tmp/op.json")" -ge 6 ] &&
        [ "$(jq -s '[.[] | select(.type == "ganeti-net-status")] | length' "$tmp/net.json")" -ge 4 ]
}
if wait_for 60 all_arrived; then
    ok "every op's success and four net-status messages arrived within 60 s"
else
    nok "every op's success and four net-status messages arrived within 60 s"
    echo "  op: $(jq -c '[.operation, .status]' "$tmp/op.json" | tr '\n' ' ')"
    echo "  net: $(wc -l <"$tmp/net.json") message(s)"
    tail -10 $EV_LOG | sed 's/^/    /'
fi
for op in $OPS; do
    seq=$(jq -rs --arg i $INSTANCE --arg op "$op" '[.[] | select(.type == "ganeti-op-status" and
        .instance == $i and .operation == $op) | .status] |
        reduce .[] as $s ([]; if any(.[]; . == $s) then . else . + [$s] end) | join(",")' "$tmp/op.json")
    check "$op on $RK_OP: queued,waiting,running,success (got $seq)" test "$seq" = queued,waiting,running,success
done
check "every op status names its job (a numeric jobId)" \
    test "$(jq -s '[.[] | select((.jobId | type) != "number")] | length' "$tmp/op.json")" = 0
check "every message on $Q_OP is an op status of cluster.example.test" \
    test "$(jq -s '[.[] | select(.type != "ganeti-op-status" or .cluster != "cluster.example.test")] | length' "$tmp/op.json")" = 0
mac=$(jq -rs '[.[] | select(.operation == "OP_INSTANCE_CREATE" and .status == "success")][0].instance_nics[0].mac' "$tmp/op.json")
check "the create's success names the NIC (bridged on ganeti0, mac $mac)" \
    test "$(jq -rs '[.[] | select(.operation == "OP_INSTANCE_CREATE" and .status == "success")][0].instance_nics[0] | .link + " " + .mode' "$tmp/op.json")" = "ganeti0 bridged"
check "the modify's success carries the new memory (beparams memory 256)" \
    test "$(jq -s '[.[] | select(.operation == "OP_INSTANCE_SET_PARAMS" and .status == "success")][0].job_fields.beparams.memory' "$tmp/op.json")" = 256
check "exactly the add, start, reboot and modify hooks published on $RK_NET" \
    test "$(jq -s 'length' "$tmp/net.json")" = 4
check "every net-status names $INSTANCE with that mac on ganeti0" \
    test "$(jq -s --arg i $INSTANCE --arg m "$mac" '[.[] | select(.instance == $i and .nics[0].mac == $m and .nics[0].link == "ganeti0")] | length' "$tmp/net.json")" = 4
check "nothing left unsent in the spool" \
    sh -c "[ -z \"\$(find $SPOOL -type f -name '*.msgs' 2>/dev/null)\" ]"

# ---- snf-progress-monitor (moved from deb-eventd.sh) ------------------------------------------
: >"$tmp/all.json"
check "snf-progress-monitor publishes a stream and exits 0" \
    sh -c "printf '{\"type\":\"image-info\",\"messages\":[\"e2e\"]}garbage{\"type\":\"image-copy-progress\",\"progress\":50}' | snf-progress-monitor snf-e2e 2>/dev/null"
progress_arrived() { amqp_drain $Q_ALL "$tmp/all.json"; grep -q '"image-copy-progress"' "$tmp/all.json"; }
check "progress messages arrived" wait_for 10 progress_arrived

# ==== PostgreSQL: a primary archived by the packaged walmgr ================================
say "a private PostgreSQL primary in $tmp, archived by walmgr"
PRIMARY=$tmp/primary
RESTORED=$tmp/restored
STORE=$tmp/store
pg_init "$PRIMARY" $PORT "cluster_name = 'hke2e_primary'" "wal_level = replica" ||
    abort "initdb $PRIMARY"
pg_start "$PRIMARY" "$tmp/primary.log" || { tail "$tmp/primary.log"; abort "start the primary"; }
ok "primary started (socket $tmp/.s.PGSQL.$PORT)"
# The walmgr configuration where the other programs see it (calink collects
# /etc/skytools/*, pacha tracks /etc), readable by postgres only; its libpq password is
# one of the secrets calink must mask (trust authentication ignores it).
mkdir -p $WALDIR
cat >$WALDIR/wal-master.ini <<EOF
# Written by tests/e2e/suite.sh
[wal-master]
job_name = wal-master-e2e
logfile = $WAL_LOG
master_db = host=$tmp port=$PORT user=postgres dbname=postgres password=$SECRET_PG
master_data = $PRIMARY
master_bin = $PGBIN
master_restart_cmd = $PGBIN/pg_ctl -D $PRIMARY -l $tmp/primary.log -m fast -w restart
setup_method = alter_system
slave = $STORE
EOF
cat >$WALDIR/wal-slave.ini <<EOF
# Written by tests/e2e/suite.sh
[wal-slave]
job_name = wal-slave-e2e
logfile = $WAL_LOG
slave = $STORE
slave_data = $RESTORED
slave_bin = $PGBIN
EOF
chown root:postgres $WALDIR/*.ini
chmod 0640 $WALDIR/*.ini
if pg_run setup $WALMGR $WALDIR/wal-master.ini setup; then
    ok "walmgr wal-master.ini setup returns 0"
else
    nok "walmgr wal-master.ini setup returns 0"
    show_err setup
fi
wait_for 30 pq $PORT 'select 1' >/dev/null 2>&1 || abort "the primary does not answer after setup"
check "archive_mode is on" test "$(pq $PORT 'show archive_mode')" = on
ac=$(pq $PORT 'show archive_command' 2>/dev/null)
check "archive_command is the packaged walmgr's xarchive ($ac)" \
    test "$ac" = "$WALMGR $WALDIR/wal-master.ini xarchive %p %f"

# ==== skytools: pgqd by the init script, ticking a queue in the primary =====================
say "pgqd through $SKY_INIT"
pq $PORT "create database hke2e_pgq" >/dev/null || abort "create database hke2e_pgq"
if pq $PORT "create extension pgq; select pgq.create_queue('q');
        select pgq.set_queue_config('q', 'ticker_max_count', '1');
        select pgq.set_queue_config('q', 'ticker_max_lag', '0');
        select pgq.register_consumer('q', 'c');" hke2e_pgq >/dev/null; then
    ok "pgq queue q with consumer c in the primary's hke2e_pgq"
else
    abort "create the pgq queue and consumer"
fi
# root:skytools 0640: it holds a password (another secret calink must mask).
cat >$JOB <<EOF
# Written by tests/e2e/suite.sh
[pgqd]
base_connstr = host=$tmp port=$PORT user=postgres password=$SECRET_PG
database_list = hke2e_pgq
logfile = $PGQD_LOG
pidfile = $PGQD_PID
syslog = 0
ticker_period = 0.5
stats_period = 1
EOF
chown root:skytools $JOB
chmod 0640 $JOB
check "$SKY_INIT start returns 0" $SKY_INIT start
pgqd_pid=$(tr -dc 0-9 <$PGQD_PID 2>/dev/null)
check "pidfile names a running pgqd of user skytools" \
    sh -c "[ -n '$pgqd_pid' ] && [ \"\$(readlink /proc/$pgqd_pid/exe)\" = $PGQD ] && [ \"\$(ps -o user= -p $pgqd_pid)\" = skytools ]"
check "scriptmgr status shows the job running" \
    sh -c "scriptmgr $SKY_CONF status 2>&1 | grep -qE '^pgqd +pgqd +running \\(pid $pgqd_pid\\)'"
payload=hk-e2e-payload-$$
pq $PORT "select pgq.insert_event('q', 'hk-e2e', '$payload')" hke2e_pgq >/dev/null &&
    ok "insert an event into q" || nok "insert an event into q"
: >"$tmp/events"
batched() {
    local b
    b=$(pq $PORT "select pgq.next_batch('q', 'c')" hke2e_pgq 2>/dev/null)
    [ -n "$b" ] || return 1
    pq $PORT "select ev_type, ev_data from pgq.get_batch_events($b)" hke2e_pgq >>"$tmp/events" 2>/dev/null
    pq $PORT "select pgq.finish_batch($b)" hke2e_pgq >/dev/null 2>&1
    grep -qF "hk-e2e|$payload" "$tmp/events"
}
if wait_for 20 batched; then
    ok "pgqd ticked: the event arrived in a batch of consumer c"
else
    nok "pgqd ticked: the event arrived in a batch of consumer c"
    tail -10 $PGQD_LOG | sed 's/^/    /'
fi

# ==== walmgr: pgbench traffic archived, a backup, a restored cluster that catches up ========
say "pgbench traffic, backup, restore"
if as_pg "$PGBIN/pgbench" -h "$tmp" -p $PORT -U postgres -i -q -s 1 postgres >"$tmp/pgbench-init.log" 2>&1; then
    ok "pgbench -i -s 1"
else
    cat "$tmp/pgbench-init.log"
    abort "pgbench -i"
fi
if pg_run backup $WALMGR $WALDIR/wal-master.ini backup; then
    ok "walmgr wal-master.ini backup returns 0 (while pgqd ticks)"
else
    nok "walmgr wal-master.ini backup returns 0 (while pgqd ticks)"
    show_err backup
fi
# Traffic after the backup: the restored cluster has it only from the archive.
if as_pg "$PGBIN/pgbench" -h "$tmp" -p $PORT -U postgres -n -c 2 -t 300 postgres >"$tmp/pgbench.log" 2>&1; then
    ok "pgbench -c 2 -t 300 after the backup"
else
    cat "$tmp/pgbench.log"
    nok "pgbench -c 2 -t 300 after the backup"
fi
rows="select (select count(*) from pgbench_history) || ' ' || (select sum(abalance) from pgbench_accounts) || ' ' || (select sum(bbalance) from pgbench_branches)"
want=$(pq $PORT "$rows")
check "pgbench wrote history ($want)" test "${want%% *}" = 600
last=$(pq $PORT "select pg_walfile_name(pg_current_wal_lsn())")
pq $PORT 'select pg_switch_wal()' >/dev/null
archived() { [ -f "$STORE/logs.complete/$last.meta" ]; }
check "the segment holding the traffic ($last) archived within 60 s" wait_for 60 archived
check "pg_stat_archiver: no failure" test "$(pq $PORT 'select failed_count from pg_stat_archiver')" = 0
check "walmgr wal-slave.ini verify returns 0" pg_run verify $WALMGR $WALDIR/wal-slave.ini verify
if pg_run restore $WALMGR $WALDIR/wal-slave.ini restore; then
    ok "walmgr wal-slave.ini restore returns 0"
else
    nok "walmgr wal-slave.ini restore returns 0"
    show_err restore
fi
if pg_start "$RESTORED" "$tmp/restored.log" "-p $RPORT -c hot_standby=on -c cluster_name=hke2e_restored"; then
    ok "restored cluster started (socket $tmp/.s.PGSQL.$RPORT)"
else
    nok "restored cluster started"
    tail -20 "$tmp/restored.log"
fi
check "the restored cluster is in recovery" test "$(pq $RPORT 'select pg_is_in_recovery()')" = t
caught_up() { [ "$(pq $RPORT "$rows" 2>/dev/null)" = "$want" ]; }
check "the restored cluster replayed the archive: history, accounts and branches equal the primary's" \
    wait_for 60 caught_up
check "walmgr wal-slave.ini boot returns 0" pg_run boot $WALMGR $WALDIR/wal-slave.ini boot
promoted() { [ "$(pq $RPORT 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; }
check "the restored cluster was promoted within 60 s" wait_for 60 promoted
check "the promoted cluster has the pgq queue of the primary too" \
    test "$(pq $RPORT "select count(*) from pgq.queue where queue_name = 'q'" hke2e_pgq)" = 1

# ==== ele-tools: ele_report as cron runs it, both clusters in the admin database =============
say "ele_report as $CRON says"
if "${PSQL[@]}" -d postgres -c "create database $ADMIN_DB" >/dev/null; then
    admin_made=1
else
    abort "create database $ADMIN_DB"
fi
"${PSQL[@]}" -d "$ADMIN_DB" -f /usr/share/ele-tools/create_schema.sql >"$tmp/schema.log" 2>&1 ||
    { cat "$tmp/schema.log"; abort "load the installed schema into $ADMIN_DB"; }
host=$(hostname)
admin_sql "INSERT INTO utility.ele_environment (env_name) VALUES ('e2e');
   INSERT INTO utility.ele_server (environment_id, hostname) SELECT environment_id, '$host' FROM utility.ele_environment;
   INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port)
        SELECT environment_id, 'hke2e_primary', 'hke2e_primary', $PORT FROM utility.ele_environment;
   INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port)
        SELECT environment_id, 'hke2e_restored', 'hke2e_restored', $RPORT FROM utility.ele_environment" >/dev/null ||
    abort "admin rows"
# As an operator edits the shipped report.ini: the admin database and the clusters.
sed -i -e "/^\[Upstream\]/,/^\[/ { s|^db_host =.*|db_host = 127.0.0.1|; s|^db_user =.*|db_user = postgres|; s|^db_name =.*|db_name = $ADMIN_DB| }" \
    -e "/^\[Discovery\]/,/^\[/ { s|^socket_dirs =.*|socket_dirs = $tmp|; s|^ports =.*|ports = $PORT, $RPORT| }" $REPORT_INI
# The cron line: NAME=value lines set the environment, a job line is five time fields,
# the user, the command.
cron_env=(HOME="$(getent passwd postgres | cut -d: -f6)" LOGNAME=postgres)
while IFS= read -r line; do
    case $line in
        '#'* | '') ;;
        [A-Za-z_]*=*) cron_env+=("$line") ;;
        *) read -r _ _ _ _ _ cron_user cron_cmd <<<"$line" ;;
    esac
done <$CRON
check "the cron line runs as postgres ($cron_user)" test "${cron_user:-}" = postgres
check "its command runs /usr/bin/ele_report ($cron_cmd)" sh -c "printf %s '${cron_cmd:-}' | grep -q /usr/bin/ele_report"
(cd / && runuser -u "$cron_user" -- env -i "${cron_env[@]}" /bin/sh -c "$cron_cmd") >"$tmp/cron.out" 2>&1
st=$?
check "the cron job exits 0 (got $st)" test $st = 0
check "it printed nothing (no mail from cron)" test ! -s "$tmp/cron.out"
[ -s "$tmp/cron.out" ] && sed 's/^/    /' "$tmp/cron.out" | head
got=$(admin_sql "SELECT string_agg(base_name || '|' || db_port || '|' || is_online || '|' || pgdata, ' ' ORDER BY db_port)
                 FROM utility.v_flat_instance")
check "v_flat_instance holds both clusters, online, with their data directories" \
    test "$got" = "hke2e_primary|$PORT|true|$PRIMARY hke2e_restored|$RPORT|true|$RESTORED"
check "ele_report's cache is in /var/cache/ele_tools" sh -c "[ -n \"\$(ls -A /var/cache/ele_tools)\" ]"

# ==== snf-cyclades-gtools operator checks (moved from deb-eventd.sh) =========================
check "$EV_INIT reload returns 0" $EV_INIT reload
check "daemon pid unchanged after reload" wait_for 5 sh -c "[ \"\$(tr -dc 0-9 <$EV_PID)\" = '$ev_pid' ]"
check "daemon still running after reload" alive "$ev_pid"
check "$EV_INIT status returns 0 after reload" $EV_INIT status
check "the daemon logged the reload" wait_for 5 grep -q 'configuration reloaded' $EV_LOG
# The packaged rules as logrotate runs them: postrotate makes the daemon reopen its log
# (the SIGHUP also reloads, which logs a line into the new file).
check "logrotate -f with the packaged rules returns 0" \
    logrotate -f -s "$tmp/logrotate.state" /etc/logrotate.d/snf-ganeti-eventd
check "log rotated to $EV_LOG.1" grep -q 'configuration reloaded' $EV_LOG.1
check "the daemon reopened its log after postrotate" wait_for 5 grep -q 'configuration reloaded' $EV_LOG
check "daemon pid unchanged after logrotate" sh -c "[ \"\$(tr -dc 0-9 <$EV_PID)\" = '$ev_pid' ]"

# ==== calink with its packaged configuration ===============================================
say "calink"
mkdir "$tmp/out"
(cd "$tmp" && $CALINK -o "$tmp/out" >"$tmp/calink.out" 2>"$tmp/calink.err")
st=$?
check "a run with the packaged configuration exits 0 or 3 (exit $st)" sh -c "[ $st = 0 ] || [ $st = 3 ]"
[ -s "$tmp/calink.err" ] && sed 's/^/    stderr: /' "$tmp/calink.err" | tail -5
archive=$(cat "$tmp/calink.out")
check "stdout names the archive ($archive)" test -f "$archive"
check "the archive is in the output directory, nothing else is" \
    sh -c "[ \"\$(ls -A '$tmp/out')\" = \"\$(basename '$archive')\" ]"
tar -tzf "$archive" >"$tmp/list" 2>/dev/null
check "the archive lists" test -s "$tmp/list"
top=$(basename "$archive" .tar.gz)
for m in manifest.json calink.log "$top.json" "$top-commands.log" files/etc/os-release; do
    check "the archive holds $top/$m" grep -qxF "$top/$m" "$tmp/list"
done
for m in $GTOOLS $EV_DEFAULTS $EV_LOG $JOB $SKY_CONF $PGQD_LOG $WALDIR/wal-master.ini $WAL_LOG \
    $REPORT_INI $CALINK_CONF /etc/pacha/pacha.ini $PACHA_LOGDIR/pacha.log; do
    check "the archive holds the other programs' $m" grep -qxF "$top/files$m" "$tmp/list"
done
tar -xzf "$archive" -C "$tmp" 2>/dev/null
a=$tmp/$top
check "/etc/os-release is stored byte-identical" cmp -s /etc/os-release "$a/files/etc/os-release"
check "the manifest is calink's" grep -q '"program": "calink"' "$a/manifest.json"
check "the JSON has the loadavg item" grep -q '"last_pid"' "$a/$top.json"
check "the commands log has dpkg -l" grep -qx 'command: dpkg -l' "$a/$top-commands.log"
check "the commands log has the exit codes" grep -qx 'exit code: 0' "$a/$top-commands.log"
check "the commands log lists the hostkit packages" grep -q "^skytools3-ticker $version install ok installed" "$a/$top-commands.log"
check "the stored eventd log is the daemon's" grep -q 'configuration reloaded' "$a/files$EV_LOG"
check "gtools.conf is stored with its AMQP password masked" \
    grep -qxF "amqp_hosts = amqp://$AMQP_USER:********@127.0.0.1:5672/%%2f" "$a/files$GTOOLS"
check "pgqd.ini is stored with its password masked" grep -q "^base_connstr = .* password=\\*\\*\\*\\*\\*\\*\\*\\*" "$a/files$JOB"
check "wal-master.ini is stored with its password masked" grep -q "^master_db = .* password=\\*\\*\\*\\*\\*\\*\\*\\*" "$a/files$WALDIR/wal-master.ini"
check "neither secret is anywhere in the archive" \
    sh -c "! gzip -dc '$archive' | grep -aqE '$SECRET_AMQP|$SECRET_PG'"
check "the manifest counts the masked secrets (at least 3)" \
    test "$(jq '[.. | objects | .scrubbed? | numbers] | add // 0' "$a/manifest.json" 2>/dev/null || echo 0)" -ge 3
mkdir "$tmp/dry"
$CALINK --dry-run -o "$tmp/dry" >"$tmp/dry.out" 2>&1
st=$?
check "calink --dry-run exits 0" test $st = 0
check "--dry-run lists /etc/os-release" grep -q '^file /etc/os-release' "$tmp/dry.out"
check "--dry-run writes nothing" sh -c "[ -z \"\$(ls -A '$tmp/dry')\" ]"
mkdir "$tmp/obf"
$CALINK --obfuscate --obfuscation-map "$tmp/map/obfuscation.json" -o "$tmp/obf" >"$tmp/obf.out" 2>"$tmp/obf.err"
st=$?
check "calink --obfuscate exits 0 or 3 (exit $st)" sh -c "[ $st = 0 ] || [ $st = 3 ]"
obf=$(cat "$tmp/obf.out")
check "the obfuscated archive never names $host" \
    sh -c "[ -f '$obf' ] && ! gzip -dc '$obf' | grep -aqiw -- '$host' && ! echo '$obf' | grep -qiw -- '$host'"
check "the obfuscation map is 0600" sh -c "[ \"\$(stat -c %a '$tmp/map/obfuscation.json')\" = 600 ]"
$CALINK -o /proc >/dev/null 2>"$tmp/ro.err"
st=$?
check "an unwritable output directory exits 1 (exit $st)" test $st = 1
check "... with one line naming it" sh -c "[ \"\$(wc -l <'$tmp/ro.err')\" = 1 ] && grep -q '^calink: .*/proc' '$tmp/ro.err'"

# ==== pacha: the daemon committed what the other packages and this script changed ===========
say "pacha's history of /etc"
settled() { [ -z "$($PACHA status 2>/dev/null)" ]; }
check "pacha status is clean: the daemon committed every change under /etc" wait_for 15 settled
[ -n "$($PACHA status 2>/dev/null)" ] && $PACHA status 2>&1 | head | sed 's/^/    /'
for f in $GTOOLS /etc/pacha/pacha.ini /etc/default/pacha $REPORT_INI; do
    n=$(pacha_log $f | wc -l)
    check "pacha log $f: installed, then edited ($n commits)" test "$n" -ge 2
done
for f in $EV_DEFAULTS $SKY_CONF $CRON $CALINK_CONF; do
    check "pacha log $f: installed" sh -c "[ -n \"\$($PACHA log $f 2>/dev/null)\" ]"
done
for f in $JOB $WALDIR/wal-master.ini $WALDIR/wal-slave.ini; do
    check "pacha log $f: the daemon committed it" sh -c "[ -n \"\$($PACHA log $f 2>/dev/null)\" ]"
done
check "pacha's repository holds the edited gtools.conf (its secret kept there, root only)" \
    sh -c "git --git-dir=$PACHA_STATE/repo.git show HEAD:etc/synnefo/gtools.conf | grep -q '^exchange_ganeti = $EXCHANGE'"
check "the repository is 0700" sh -c "[ \"\$(stat -c %a $PACHA_STATE/repo.git)\" = 700 ]"
check "the daemon logs to $PACHA_LOGDIR/pacha.log" test -s $PACHA_LOGDIR/pacha.log

# ==== stop ===================================================================================
say "stopping"
check "/etc/init.d/pacha stop" /etc/init.d/pacha stop
check "$EV_INIT stop returns 0" $EV_INIT stop
$EV_INIT status >/dev/null 2>&1
st=$?
check "$EV_INIT status returns 3 when stopped (got $st)" test $st = 3
check "eventd's pidfile removed" test ! -e $EV_PID
check "no snf-ganeti-eventd process left" sh -c "[ -z \"\$(pidof $EVENTD)\" ]"
check "the daemon's pid $ev_pid is gone" dead "$ev_pid"
# A bad configuration is refused (moved from deb-eventd.sh).
sed -i 's/^exchange_ganeti =/exchange_ganetti =/' $GTOOLS
$EV_INIT start >"$tmp/bad-start.log" 2>&1
st=$?
check "$EV_INIT start with an unknown key fails (exit $st)" test $st != 0
check "the error names the unknown key" grep -q 'exchange_ganetti' "$tmp/bad-start.log"
check "no snf-ganeti-eventd process after the failed start" sh -c "[ -z \"\$(pidof $EVENTD)\" ]"
check "$SKY_INIT stop returns 0" $SKY_INIT stop
check "no pgqd of skytools left" no_job
pg_stop "$RESTORED"
pg_stop "$PRIMARY"
if bash $GANETI down >"$tmp/ganeti-down.log" 2>&1; then
    ok "ganeti-cluster.sh down: no namespace, route or Ganeti process left"
    cluster_up=0
else
    tail -20 "$tmp/ganeti-down.log"
    nok "ganeti-cluster.sh down: no namespace, route or Ganeti process left"
fi

# ==== purge ==================================================================================
say "purging"
# The job and walmgr files are the operator's, not the packages'.
rm -rf $JOB $WALDIR
if apt-get purge -y -q "${PACKAGES[@]}" $pgqd_swap >"$tmp/apt-purge.log" 2>&1; then
    ok "apt-get purge ${PACKAGES[*]} $pgqd_swap"
    pgqd_removed=0
else
    cat "$tmp/apt-purge.log"
    nok "apt-get purge ${PACKAGES[*]} $pgqd_swap"
fi
check "pacha committed the purge" \
    sh -c "git --git-dir=$PACHA_STATE/repo.git log -1 --format=%B | grep -qx -- '-snf-cyclades-gtools $version'"
if apt-get purge -y -q pacha >"$tmp/apt-purge-pacha.log" 2>&1; then
    ok "apt-get purge pacha"
    installed=0
else
    cat "$tmp/apt-purge-pacha.log"
    nok "apt-get purge pacha"
fi
rm -rf $PACHA_STATE
# snf-cyclades-gtools (moved from deb-eventd.sh)
check "snf-ganeti-eventd removed" test ! -e $EVENTD
check "gtools.conf removed" test ! -e $GTOOLS
check "eventd's init script removed" test ! -e $EV_INIT
check "eventd's defaults file removed" test ! -e $EV_DEFAULTS
check "eventd's logrotate config removed" test ! -e /etc/logrotate.d/snf-ganeti-eventd
check "eventd's systemd unit removed" test ! -e /lib/systemd/system/snf-ganeti-eventd.service
check "spool removed" test ! -e $SPOOL
check "eventd's logs removed" sh -c "! ls $EV_LOG* >/dev/null 2>&1"
check "eventd's rc links removed" sh -c "! ls /etc/rc?.d/*snf-ganeti-eventd >/dev/null 2>&1"
check "the hook links removed" sh -c "! ls /etc/ganeti/hooks/*/00-snf-ganeti-hook >/dev/null 2>&1"
# calink (moved from deb-calink.sh)
check "$CALINK is gone" test ! -e $CALINK
check "$CALINK_CONF is gone" test ! -e $CALINK_CONF
if [ $had_pgqd = 1 ]; then
    check "/usr/bin/pgqd is Debian's again" sh -c "dpkg -S $PGQD | grep -q '^pgqd: '"
fi
check "every package fully gone from dpkg" \
    sh -c "! dpkg-query -W -f='\${Status}\n' ${PACKAGES[*]} pacha 2>/dev/null | grep -qE ' (installed|config-files)\$'"

finished=1
