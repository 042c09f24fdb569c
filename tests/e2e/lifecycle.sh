#!/bin/bash
# The whole life of the hostkit packages on one host, as a Debian operator lives it:
#
#   1. install the seven packages of this tree with a lower version (dist/'s, repacked
#      as <version>~prev; its gtools.conf differs from the current one, as a conffile
#      does between releases);
#   2. put them to work: snf-ganeti-eventd with a journal and a spool it cannot send
#      (its broker unreachable by its configuration), pgqd ticking a private cluster's
#      queue through /etc/init.d/skytools3, walmgr archiving that cluster into a store,
#      ele_report's cache, pacha's repository (and its daemon), conffiles edited;
#   3. upgrade: `apt-get install -o Dpkg::Options::=--force-confold ./dist/*.deb` of the
#      current build: no prompt, edited conffiles kept, each daemon restarted once,
#      nothing lost (the spool drains once the broker is pointed back, the journal is
#      read so nothing is sent twice, the store, cache and repository intact);
#   4. remove: conffiles and data stay, no daemon left;
#   5. purge: nothing the packages made is left in /etc, /var and /run (compared with
#      a listing taken before step 1, not with dpkg's lists) except the system user
#      and what purge names on stderr (pacha's repository, the walmgr store).
#
# The maintainer scripts start and stop services here as on a real host (see apt_real
# in lifecycle-lib.sh). Needs root, RabbitMQ at 127.0.0.1:5672 (guest/guest),
# PostgreSQL 15's server binaries with pgq (postgresql-15-pgq3), amqp-tools; runs under
# flock /tmp/hk-dpkg.lock. Everything is restored on exit (Debian's pgqd re-installed
# if it was there).
#
# The last line is `lifecycle: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

CHECKS_NAME=lifecycle
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lifecycle-lib.sh
. tests/e2e/lifecycle-lib.sh
[ "$(id -u)" = 0 ] || { echo "lifecycle: must run as root (it installs packages)" >&2; exit 1; }
hold_dpkg_lock "$@"

EVENTD=/usr/sbin/snf-ganeti-eventd
GTOOLS=/etc/synnefo/gtools.conf
EVENTD_PID=/var/run/snf-ganeti-eventd.pid
EVENTD_LOG=/var/log/snf-ganeti-eventd.log
SPOOL=/var/spool/snf-ganeti-eventd
JOB=/etc/skytools/pgqd.ini
PGQD_PID=/var/run/skytools/pgqd.pid
PGQD_LOG=/var/log/skytools/pgqd.log
REPORT_INI=/etc/ele_tools/report.ini
PACHA_DEFAULT=/etc/default/pacha
PACHA_PID=/var/run/pacha.pid
PACHA_REPO=/var/lib/pacha/repo.git
EXCHANGE=hk-lc-$$
QUEUE=hk-lc-$$-q

tmp=
finished=0
installed=0
had_pgqd=0
had_pacha_state=0
exchange=0
port=
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_ours() {
    local s p
    for s in /etc/init.d/snf-ganeti-eventd /etc/init.d/skytools3 /etc/init.d/pacha; do
        [ -x $s ] && $s stop >/dev/null 2>&1
    done
    for p in $(pidof $EVENTD /usr/bin/pacha 2>/dev/null) $(pgrep -u skytools -x pgqd 2>/dev/null); do
        kill -KILL "$p" 2>/dev/null
    done
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ $finished = 0 ] && say "cleaning up after an early exit"
    stop_ours
    rm -f "$JOB"
    if [ $installed = 1 ]; then
        purge_leftovers
    fi
    if [ $had_pgqd = 1 ] && ! dpkg-query -W -f='${Status}' pgqd 2>/dev/null | grep -q 'ok installed'; then
        say "re-installing Debian's pgqd"
        apt-get install -y -q --no-install-recommends pgqd >/dev/null 2>&1 ||
            echo "lifecycle: error: could not re-install Debian's pgqd" >&2
    fi
    [ $had_pacha_state = 0 ] && rm -rf /var/lib/pacha
    [ $exchange = 1 ] && delete_exchange "$EXCHANGE" "$QUEUE"
    if [ -n "$tmp" ]; then
        stop_cluster "$tmp/pg"
        rm -rf "$tmp"
    fi
    finish_checks "$rc"
}

# ---- preconditions -------------------------------------------------------------------
mapfile -t cur_debs < <(current_debs) || exit 1
[ ${#cur_debs[@]} = 7 ] || abort "seven packages in dist/ (\`make deb\`)"
command -v amqp-get >/dev/null 2>&1 || abort "amqp-tools are not installed (run \`make deps\`)"
rabbitmqctl -q status >/dev/null 2>&1 || abort "RabbitMQ does not run (run \`make deps\`)"
[ -x "$PGBIN/initdb" ] || abort "no $PGBIN/initdb (run \`make deps\`)"
[ -f /usr/share/postgresql/15/extension/pgq.control ] || abort "no pgq extension (postgresql-15-pgq3)"
dpkg-query -W -f='${Status}' pgqd 2>/dev/null | grep -q 'ok installed' && had_pgqd=1
[ -e /var/lib/pacha ] && had_pacha_state=1
purge_leftovers
# A purge by the script before this one may still be stopping its daemons (on a loaded
# host that took more than 15 s twice): give them 60 s, and name what is left.
hostkit_daemons() { { pidof $EVENTD /usr/bin/pacha; pgrep -u skytools -x pgqd; } 2>/dev/null | xargs; }
no_daemons() { [ -z "$(hostkit_daemons)" ]; }
# None of our packages is installed here (purge_leftovers), so what is left belongs to an
# earlier script, not to this run's packages: it is named, killed and the run goes on
# (this script's checks need a host without our daemons, not that host's history).
if ! wait_for 60 no_daemons; then
    left=$(hostkit_daemons)
    say "warning: hostkit daemons left by an earlier run, 60 s after its purge (killed):"
    ps -o pid,ppid,user,etimes,args -p "${left// /,}" | sed 's/^/    /'
    # shellcheck disable=SC2086 # one pid a word
    kill -KILL $left 2>/dev/null
    wait_for 10 no_daemons || abort "could not kill $(hostkit_daemons)"
fi

tmp=$(mktemp -d /tmp/hk-lifecycle.XXXXXX)
chmod 755 "$tmp"
snapshot "$tmp/before.list"

# ---- 1. the previous version ------------------------------------------------------------
cur=$(dpkg-deb -f "${cur_debs[0]}" Version)
prev="$cur~prev"
# The packages of this tree as version $prev: dist/'s .debs with a lower Version (a
# second cargo build would only make the same binaries; `debian/build-debs.sh` with
# HK_VERSION=$prev builds them for `make piuparts`). A release also changes a conffile:
# the previous gtools.conf lacks the current one's last line, so that dpkg has a new
# version of the conffile the operator edits.
say "making $prev from dist/ in $tmp/prev"
mkdir -p "$tmp/prev" "$tmp/repack"
for d in "${cur_debs[@]}"; do
    p=$(dpkg-deb -f "$d" Package)
    r=$tmp/repack/$p
    dpkg-deb -R "$d" "$r" || abort "unpack $d"
    sed -i "s/^Version: .*/Version: $prev/" "$r/DEBIAN/control"
    [ "$p" = snf-cyclades-gtools ] && sed -i '$d' "$r$GTOOLS"
    dpkg-deb -Zgzip -z1 -b --root-owner-group "$r" "$tmp/prev/${p}_${prev}_$(dpkg --print-architecture).deb" >/dev/null ||
        abort "repack $d as $prev"
    rm -rf "$r"
done
ok "the seven packages repacked as $prev"
mapfile -t prev_debs < <(for p in $PKGS; do echo "$tmp/prev/${p}_${prev}_$(dpkg --print-architecture).deb"; done)

say "installing $prev"
installed=1
if apt_real install "${prev_debs[@]}" >"$tmp/apt-prev.log" 2>&1; then
    ok "apt-get install the seven $prev packages"
else
    cat "$tmp/apt-prev.log"
    abort "apt-get install $prev"
fi
for p in $PKGS; do
    check "$p $prev installed" test "$(dpkg-query -W -f='${Version}' $p 2>/dev/null)" = "$prev"
done

# ---- 2. put to work -------------------------------------------------------------------
port=$(free_port)
STORE=$tmp/store
cat >"$tmp/master.ini" <<EOF
# Written by tests/e2e/lifecycle.sh
[wal-master]
job_name = wal-master-lc
logfile = $tmp/walmgr-master.log
master_db = host=$tmp port=$port user=postgres dbname=postgres
master_data = $tmp/pg
master_bin = $PGBIN
slave = $STORE
EOF
chown postgres: "$tmp/master.ini"
mkdir -p "$STORE/logs.complete" "$STORE/logs.partial" "$STORE/data.master"
chown -R postgres: "$STORE"
if start_cluster "$tmp/pg" "$port" "wal_level = replica
archive_mode = on
archive_command = '/usr/bin/walmgr $tmp/master.ini xarchive %p %f'
cluster_name = 'lc'"; then
    ok "a private cluster archived by walmgr (socket $tmp/.s.PGSQL.$port)"
else
    abort "start a private cluster"
fi
psql_at "$port" postgres "create database q" >/dev/null && psql_at "$port" q "create extension pgq;
    select pgq.create_queue('q'); select pgq.register_consumer('q', 'c');
    select pgq.set_queue_config('q', 'ticker_max_lag', '0');
    select pgq.set_queue_config('q', 'ticker_idle_period', '0')" >/dev/null ||
    abort "a pgq queue in the private cluster"
ticks() { psql_at "$port" q "select max(tick_id) from pgq.tick" 2>/dev/null; }

# walmgr: a segment archived into the store.
seg=$(psql_at "$port" postgres "create table t as select g from generate_series(1, 1000) g;
      select pg_walfile_name(pg_current_wal_lsn())" | tail -1)
psql_at "$port" postgres "select pg_switch_wal()" >/dev/null
stored() { [ -f "$STORE/logs.complete/$seg.meta" ]; }
check "walmgr $prev archived $seg into the store" wait_for 30 stored
(cd "$STORE" && find . -type f | sort | xargs sha256sum) >"$tmp/store.sums"

# pgqd: a Skytools job ticking the queue, started by the init script.
cat >$JOB <<EOF
# Written by tests/e2e/lifecycle.sh
[pgqd]
base_connstr = host=$tmp port=$port user=postgres
database_list = q
logfile = $PGQD_LOG
pidfile = $PGQD_PID
ticker_period = 0.2
stats_period = 1
EOF
check "/etc/init.d/skytools3 start" /etc/init.d/skytools3 start
t0=$(ticks)
more_ticks() { psql_at "$port" q "select pgq.insert_event('q', 'lc', 'x')" >/dev/null; [ "$(ticks)" -gt "${1:-$t0}" ]; }
check "pgqd ticks the queue (tick $t0 and later)" wait_for 20 more_ticks

# snf-ganeti-eventd: broker unreachable, so what it sees stays in the spool.
fake_ganeti "$tmp/ganeti"
deadport=$(free_port)
gtools_conf() {
    cat >$GTOOLS <<EOF
# Edited by the operator (tests/e2e/lifecycle.sh)
[gtools]
amqp_hosts = amqp://guest:guest@127.0.0.1:$1/%%2f
exchange_ganeti = $EXCHANGE
data_dir = $tmp/ganeti/data
node_name = node1.hk-e2e.test
amqp_connect_timeout = 2

[eventd]
queue_dir = $tmp/ganeti/queue
EOF
}
gtools_conf "$deadport"
declare_exchange "$EXCHANGE" "$QUEUE" && exchange=1 || abort "declare the test exchange and queue"
# restart: the postinst may have started it with the packaged configuration.
check "/etc/init.d/snf-ganeti-eventd restart" /etc/init.d/snf-ganeti-eventd restart
write_job "$tmp/ganeti/queue"
spooled() { [ -n "$(find $SPOOL -maxdepth 1 -name '*.msgs' -print -quit)" ]; }
check "the job's message waits in the spool (broker unreachable)" wait_for 20 spooled
check "eventd's journal or checkpoint holds the job" \
    wait_for 10 sh -c "[ -s $SPOOL/eventd.journal ] || [ -s $SPOOL/eventd.checkpoint ]"
ls $SPOOL/*.msgs >"$tmp/spool.before" 2>/dev/null

# ele_report: the admin database in the private cluster, the packaged cache directory.
psql_at "$port" postgres "create database admin" >/dev/null &&
    as_pg "$PGBIN/psql" -h "$tmp" -p "$port" -U postgres -d admin -X -q -v ON_ERROR_STOP=1 \
        -f /usr/share/ele-tools/create_schema.sql >"$tmp/schema.log" 2>&1 &&
    psql_at "$port" admin "INSERT INTO utility.ele_environment (env_name) VALUES ('lc');
        INSERT INTO utility.ele_server (environment_id, hostname) SELECT environment_id, '$(hostname)' FROM utility.ele_environment;
        INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port)
        SELECT environment_id, 'lc', 'lc', $port FROM utility.ele_environment" >/dev/null ||
    abort "the ElepHaaS admin database"
cat >$REPORT_INI <<EOF
# Edited by the operator (tests/e2e/lifecycle.sh)
[Upstream]
db_host = $tmp
db_port = $port
db_user = postgres
db_name = admin

[Discovery]
socket_dirs = $tmp
ports = $port
EOF
check "ele_report $prev, run as its cron line runs it, returns 0" \
    sh -c "cd / && runuser -u postgres -- /usr/bin/ele_report"
check "ele_report's cache /var/cache/ele_tools is filled" \
    sh -c "[ -n \"\$(ls -A /var/cache/ele_tools)\" ]"
(cd /var/cache/ele_tools && find . -type f | sort | xargs -r sha256sum) >"$tmp/cache.sums"

# pacha: the history of /etc, and its daemon on a tree of its own.
check "pacha commit (the history of /etc)" sh -c "pacha commit -m 'lifecycle: before the upgrade' >/dev/null"
head_before=$(git --git-dir=$PACHA_REPO rev-parse HEAD 2>/dev/null)
check "pacha's repository has a commit ($head_before)" test -n "$head_before"
mkdir -p "$tmp/tree"
echo one >"$tmp/tree/a.conf"
cat >"$tmp/pacha.ini" <<EOF
[pacha]
state_dir = $tmp/pacha-state
host = lc
log = $tmp/pacha-daemon.log
debounce = 0.05
EOF
pacha -c "$tmp/pacha.ini" track "$tmp/tree" >/dev/null && pacha -c "$tmp/pacha.ini" commit -m first >/dev/null ||
    abort "pacha: a tree of its own"
printf 'ENABLED=yes\nPACHA_OPTS="--config %s"\n' "$tmp/pacha.ini" >$PACHA_DEFAULT
check "/etc/init.d/pacha start" /etc/init.d/pacha start

eventd_pid=$(pidof_file $EVENTD_PID)
pgqd_pid=$(pidof_file $PGQD_PID)
pacha_pid=$(pidof_file $PACHA_PID)
check "three daemons run (eventd $eventd_pid, pgqd $pgqd_pid, pacha $pacha_pid)" \
    test -n "$eventd_pid" -a -n "$pgqd_pid" -a -n "$pacha_pid"
starts() { grep -c "$2" "$1" 2>/dev/null; }
eventd_starts=$(starts $EVENTD_LOG ' started: queue ')
pgqd_starts=$(starts $PGQD_LOG ' starting$')
pacha_starts=$(starts "$tmp/pacha-daemon.log" ' watching ')
for f in $GTOOLS $REPORT_INI $PACHA_DEFAULT; do sha256sum $f; done >"$tmp/edited.sums"

# ---- 3. upgrade ------------------------------------------------------------------------
say "upgrading to $cur"
start=$(date +%s)
if apt_real install -o Dpkg::Options::=--force-confold "${cur_debs[@]}" >"$tmp/apt-upgrade.log" 2>&1; then
    ok "apt-get install --force-confold ./dist/*.deb ($(($(date +%s) - start)) s)"
else
    cat "$tmp/apt-upgrade.log"
    nok "apt-get install --force-confold ./dist/*.deb"
fi
check "no conffile prompt, the edited gtools.conf kept by --force-confold" \
    sh -c "! grep -q '(Y/I/N/O/D/Z)' '$tmp/apt-upgrade.log' && grep -q 'Using current old file as you requested' '$tmp/apt-upgrade.log'"
for p in $PKGS; do
    check "$p upgraded to $cur" test "$(dpkg-query -W -f='${Version}' $p 2>/dev/null)" = "$cur"
done
check "the edited conffiles are kept ($GTOOLS, $REPORT_INI, $PACHA_DEFAULT)" sha256sum -c --quiet "$tmp/edited.sums"
check "the new $GTOOLS is beside it as .dpkg-dist" test -f $GTOOLS.dpkg-dist
check "the unedited conffile /etc/skytools.ini is the new one" \
    bash -c "cmp -s /etc/skytools.ini <(dpkg-deb --fsys-tarfile ./$(deb_for skytools3) | tar -xO ./etc/skytools.ini)"

# Each daemon restarted once: another pid, one more start in its log.
new_eventd=$(pidof_file $EVENTD_PID)
new_pgqd=$(pidof_file $PGQD_PID)
new_pacha=$(pidof_file $PACHA_PID)
check "snf-ganeti-eventd restarted (pid $eventd_pid -> $new_eventd)" \
    test -n "$new_eventd" -a "$new_eventd" != "$eventd_pid"
check "pgqd restarted (pid $pgqd_pid -> $new_pgqd)" test -n "$new_pgqd" -a "$new_pgqd" != "$pgqd_pid"
check "pacha's daemon restarted (pid $pacha_pid -> $new_pacha)" \
    test -n "$new_pacha" -a "$new_pacha" != "$pacha_pid"
check "... each once (one more start logged each)" test \
    "$(starts $EVENTD_LOG ' started: queue ') $(starts $PGQD_LOG ' starting$') $(starts "$tmp/pacha-daemon.log" ' watching ')" = \
    "$((eventd_starts + 1)) $((pgqd_starts + 1)) $((pacha_starts + 1))"
check "the restarted daemons are the new binaries" sh -c \
    "readlink /proc/$new_eventd/exe | grep -vq deleted && readlink /proc/$new_pgqd/exe | grep -vq deleted"

# Nothing lost.
check "the spool entries are still there" sh -c "ls $SPOOL/*.msgs 2>/dev/null | cmp -s - '$tmp/spool.before'"
gtools_conf 5672
# As the operator: the conffile edited again, the daemon told to reload.
check "/etc/init.d/snf-ganeti-eventd reload (broker pointed back)" /etc/init.d/snf-ganeti-eventd reload
for f in $GTOOLS $REPORT_INI $PACHA_DEFAULT; do sha256sum $f; done >"$tmp/edited.sums"
empty_spool() { ! spooled; }
check "the spool drains" wait_for 30 empty_spool
: >"$tmp/msgs"
got_msg() { drain_queue "$QUEUE" "$tmp/msgs"; grep -q '"ganeti-op-status"' "$tmp/msgs"; }
check "the spooled message reached the broker" wait_for 10 got_msg
sleep 2
drain_queue "$QUEUE" "$tmp/msgs"
n=$(grep -o '"ganeti-op-status"' "$tmp/msgs" | wc -l)
check "sent once: the restarted daemon read its journal ($n message)" test "$n" = 1
t1=$(ticks)
check "pgqd ticks again after the upgrade (after tick $t1)" wait_for 20 more_ticks "$t1"
check "the walmgr store is intact" sh -c "cd $STORE && sha256sum -c --quiet '$tmp/store.sums'"
seg2=$(psql_at "$port" postgres "insert into t select 1; select pg_walfile_name(pg_current_wal_lsn())" | tail -1)
psql_at "$port" postgres "select pg_switch_wal()" >/dev/null
stored2() { [ -f "$STORE/logs.complete/$seg2.meta" ]; }
check "walmgr $cur archives the next segment $seg2" wait_for 30 stored2
check "ele_report's cache is intact" sh -c "cd /var/cache/ele_tools && sha256sum -c --quiet '$tmp/cache.sums'"
check "ele_report $cur runs on it" sh -c "cd / && runuser -u postgres -- /usr/bin/ele_report"
check "pacha's history kept: $head_before is an ancestor of HEAD" \
    git --git-dir=$PACHA_REPO merge-base --is-ancestor "$head_before" HEAD
check "pacha's repository is sound (git fsck)" sh -c "git --git-dir=$PACHA_REPO fsck --no-progress >/dev/null 2>&1"

# ---- 4. remove -------------------------------------------------------------------------
say "removing"
swap=
[ $had_pgqd = 1 ] && swap=pgqd+
# shellcheck disable=SC2086
if apt_real remove $PKGS $swap >"$tmp/apt-remove.log" 2>&1; then
    ok "apt-get remove the seven packages $swap"
else
    cat "$tmp/apt-remove.log"
    nok "apt-get remove"
fi
for p in $PKGS; do
    check "$p: config-files" test "$(dpkg-query -W -f='${db:Status-Status}' $p 2>/dev/null)" = config-files
done
check "no hostkit daemon left ($(running_ours))" test -z "$(running_ours)"
# The operator's job file: what is left of /etc/skytools once the packages are purged.
rm -f "$JOB"
for f in $GTOOLS /etc/skytools.ini $REPORT_INI /etc/pacha/pacha.ini $PACHA_DEFAULT /etc/calink/calink.ini \
    /etc/logrotate.d/snf-ganeti-eventd /etc/logrotate.d/skytools3; do
    check "conffile $f kept" test -f $f
done
check "edited conffiles kept as edited" sha256sum -c --quiet "$tmp/edited.sums"
check "data kept: $SPOOL, /var/lib/pacha, /var/cache/ele_tools, /var/log/skytools" \
    test -d $SPOOL -a -d $PACHA_REPO -a -d /var/cache/ele_tools -a -d /var/log/skytools
check "user skytools kept" sh -c "getent passwd skytools >/dev/null"

# ---- 5. purge --------------------------------------------------------------------------
say "purging"
stop_cluster "$tmp/pg"
# shellcheck disable=SC2086
if apt_real purge $PKGS >"$tmp/apt-purge.log" 2>&1; then
    ok "apt-get purge the seven packages"
    installed=0
else
    cat "$tmp/apt-purge.log"
    nok "apt-get purge"
fi
check "purge names pacha's repository on stderr" grep -q 'pacha: /var/lib/pacha .* kept' "$tmp/apt-purge.log"
check "purge names the walmgr store on stderr" grep -q 'skytools3-walmgr: the walmgr stores .* kept' "$tmp/apt-purge.log"
check "the walmgr store is still there" sh -c "cd $STORE && sha256sum -c --quiet '$tmp/store.sums'"
snapshot "$tmp/after.list"
comm -13 "$tmp/before.list" "$tmp/after.list" >"$tmp/new.list"
grep -E "$OURS" "$tmp/new.list" | grep -vE '^/var/lib/pacha(/|$)' >"$tmp/left.list"
if [ -s "$tmp/left.list" ]; then
    nok "nothing of the packages left in /etc, /var, /run but /var/lib/pacha"
    sed 's/^/    /' "$tmp/left.list" | head -20
else
    ok "nothing of the packages left in /etc, /var, /run but /var/lib/pacha"
fi
check "no rc link of ours" sh -c "! ls /etc/rc?.d/ | grep -qE 'snf-ganeti-eventd|skytools3|pacha'"
check "user skytools kept (system users stay)" sh -c "getent passwd skytools >/dev/null"
if [ $had_pgqd = 1 ]; then
    check "Debian's pgqd is back, with its boot links" \
        sh -c "dpkg-query -W -f='\${Status}' pgqd | grep -q 'ok installed' && ls /etc/rc2.d/S*pgqd >/dev/null"
fi
rm -rf /var/lib/pacha

finished=1
