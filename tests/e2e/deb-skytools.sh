#!/bin/bash
# End-to-end test of the skytools3 and skytools3-ticker Debian packages, driven as an
# operator would: install both .debs from dist/ (`make deb` builds them) in place of
# Debian's C pgqd, check the skytools3 layout (user skytools, its directories, the
# conffile /etc/skytools.ini), put a pgqd job into /etc/skytools/ for a test database
# in the local PostgreSQL, start it through the init script (scriptmgr runs it as
# user skytools), check that an event inserted into a PgQ queue reaches a consumer's
# batch, reload, restart, stop, then purge and check that the packages' files are gone.
#
# Needs root and PostgreSQL at 127.0.0.1:5432 (trust auth, superuser postgres) with the
# pgq extension available (postgresql-15-pgq3; `make deps` sets that up).
# Debian's C pgqd package, if installed, is replaced by skytools3-ticker (Conflicts,
# Replaces and Provides: pgqd) in the install transaction itself: removing it alone
# first would also remove postgresql-15-pgq3 (the pgq extension), which depends on
# pgqd; skytools3-ticker's Provides keeps that dependency satisfied.
# Everything touched is restored on exit: the jobs are stopped, both packages purged,
# files that existed before under their paths put back, the test database dropped, and
# Debian's pgqd package re-installed (in the purge transaction) if it was installed
# before, with its automatic/manual mark. The system user skytools stays, as Debian
# packages leave their system users behind on purge.
#
# The last line is `deb-skytools: N passed, M failed`; the exit status is 0 only if
# M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

PKG=skytools3
TICKER=skytools3-ticker
INIT=/etc/init.d/skytools3
CONF=/etc/skytools.ini
JOBDIR=/etc/skytools
JOB=$JOBDIR/pgqd.ini
SCRIPTMGR=/usr/bin/scriptmgr
PGQD=/usr/bin/pgqd
USER_=skytools
LOGDIR=/var/log/skytools
LIBDIR=/var/lib/skytools
RUNDIR=/var/run/skytools
PIDFILE=$RUNDIR/pgqd.pid
LOG=$LOGDIR/pgqd.log
DB=hk_e2e_sky_$$
PSQL=(psql -h 127.0.0.1 -U postgres -X -q -tA -v ON_ERROR_STOP=1)

installed=0
db_created=0
job_written=0
tmp=
finished=0

CHECKS_NAME=deb-skytools
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lib.sh
. tests/e2e/lib.sh

# sql STATEMENT: run it in the test database, print the result unaligned.
sql() { "${PSQL[@]}" -d "$DB" -c "$1"; }

# Live pgqd processes of user skytools (the bench or a developer may run other pgqd;
# the daemon's first fork stays a zombie where PID 1 does not reap, e.g. containers).
job_pids() {
    ps -u $USER_ -o pid=,stat=,comm= 2>/dev/null |
        awk '$3 == "pgqd" && $2 !~ /^Z/ { printf "%s%s", s, $1; s = " " }'
}
no_job() { [ -z "$(job_pids)" ]; }
one_job() { [ "$(job_pids | wc -w)" = 1 ]; }
owned_by_skytools() { [ -d "$1" ] && [ "$(stat -c %U:%G "$1")" = $USER_:$USER_ ]; }

cleanup() {
    local rc=$? p f
    trap - EXIT INT TERM
    set +e
    if [ $finished = 0 ]; then
        say "cleaning up after an early exit"
    fi
    # Jobs: through the init script if it is still there, else by pid.
    if [ -n "$(job_pids)" ]; then
        if [ -x $INIT ]; then $INIT stop >/dev/null 2>&1; fi
        for p in $(job_pids); do kill -INT "$p" 2>/dev/null; done
        sleep 1
        for p in $(job_pids); do kill -KILL "$p" 2>/dev/null; done
    fi
    [ $job_written = 1 ] && rm -f $JOB
    if [ $installed = 1 ]; then
        # Debian's pgqd comes back in the same transaction (pgqd+), so that nothing
        # depending on pgqd (postgresql-15-pgq3) is removed with skytools3-ticker.
        if [ $pgqd_removed = 1 ] && installed_pkg $TICKER; then
            say "re-installing Debian's pgqd"
            apt-get purge -y -q $TICKER $PKG pgqd+ >/dev/null 2>&1 && pgqd_removed=0
        fi
        for p in $TICKER $PKG; do
            installed_pkg $p && apt-get purge -y -q $p >/dev/null 2>&1
        done
    fi
    # Files that were there before the test, under paths the packages own.
    put_back
    if [ $db_created = 1 ]; then
        "${PSQL[@]}" -d postgres -c "drop database if exists $DB with (force)" >/dev/null 2>&1
    fi
    pgqd_restore
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deb-skytools: must run as root (it installs packages)" >&2; exit 1; }
debs=()
for p in $PKG $TICKER; do
    found=$(deb_for "$p") || exit 1
    debs+=("./$found")
done
say "testing ${debs[*]}"

"${PSQL[@]}" -d postgres -c 'select 1' >/dev/null 2>&1 ||
    abort "PostgreSQL does not answer at 127.0.0.1:5432 as postgres (run \`make deps\`)"
[ "$("${PSQL[@]}" -d postgres -c "select count(*) from pg_available_extensions where name = 'pgq'")" = 1 ] ||
    abort "the pgq extension is not available (install postgresql-15-pgq3)"

for p in $TICKER $PKG; do
    if installed_pkg $p; then
        say "$p is already installed (left over from an earlier run?): purging it first"
        [ -x $INIT ] && $INIT stop >/dev/null 2>&1
        apt-get purge -y -q $p >/dev/null 2>&1 || abort "purge the previously installed $p"
    fi
done
if [ -n "$(job_pids)" ]; then
    abort "a pgqd of user $USER_ is already running: $(job_pids)"
fi

tmp=$(mktemp -d /tmp/hk-deb-sky-e2e.XXXXXX)
chmod 755 "$tmp"
# Move aside anything already at the packages' paths (dpkg would otherwise ask about
# an existing conffile, and scriptmgr would start other jobs), put it back at the end.
set_aside $CONF $INIT /etc/logrotate.d/skytools3 $JOBDIR/*.ini

# Debian's C pgqd ships /usr/bin/pgqd too: skytools3-ticker conflicts with it, and
# apt removes it (not purged: its conffiles stay) while installing skytools3-ticker.
pgqd_note

# ---- install -------------------------------------------------------------------------
say "installing"
installed=1
[ $had_pgqd = 1 ] && pgqd_removed=1
if apt-get install -y -q --no-install-recommends "${debs[@]}" >"$tmp/apt-install.log" 2>&1; then
    ok "apt-get install ${debs[*]}"
else
    cat "$tmp/apt-install.log"
    abort "apt-get install ${debs[*]}"
fi
if [ $had_pgqd = 1 ]; then
    check "Debian's pgqd removed by the install (Conflicts: pgqd)" \
        sh -c "! dpkg-query -W -f='\${Status}' pgqd 2>/dev/null | grep -q 'ok installed'"
fi
for p in $pgq_pkgs; do
    check "$p still installed ($TICKER provides pgqd)" \
        sh -c "dpkg-query -W -f='\${Status}' $p | grep -q 'ok installed'"
done
version=$(dpkg-query -W -f='${Version}' $PKG)
check "scriptmgr --version reports $version" \
    sh -c "$SCRIPTMGR --version | grep -qF -- '$version'"
check "pgqd -V reports $version" sh -c "$PGQD -V | grep -qF -- '$version'"
check "$PGQD belongs to $TICKER" sh -c "dpkg -S $PGQD | grep -q '^$TICKER: '"
check "$TICKER provides pgqd" sh -c "dpkg-query -W -f='\${Provides}' $TICKER | grep -qw pgqd"
check "man -w scriptmgr and pgqd find the manual pages" \
    sh -c "man -w scriptmgr >/dev/null && [ \"\$(man -w pgqd)\" = /usr/share/man/man1/pgqd.1.gz ]"
check "example pgqd.ini installed" test -f /usr/share/doc/$TICKER/examples/pgqd.ini
check "conffile $CONF exists and is a conffile" \
    sh -c "[ -f $CONF ] && dpkg-query -W -f='\${Conffiles}' $PKG | grep -q ' $CONF '"
check "$JOBDIR exists, owned by root, with no job in it" \
    sh -c "[ -d $JOBDIR ] && [ \"\$(stat -c %U $JOBDIR)\" = root ] && [ -z \"\$(ls -A $JOBDIR)\" ]"
check "system user $USER_ exists (home $LIBDIR, no login)" \
    sh -c "getent passwd $USER_ | awk -F: '\$3 < 1000 && \$6 == \"$LIBDIR\" && \$7 ~ /nologin|false/ { f = 1 } END { exit !f }'"
check "group $USER_ exists" sh -c "getent group $USER_ >/dev/null"
for d in $LOGDIR $LIBDIR $RUNDIR; do
    check "$d owned by $USER_" owned_by_skytools $d
done
check "init script $INIT installed" test -x $INIT
check "systemd unit installed" test -f /lib/systemd/system/skytools3.service
check "logrotate config is valid" sh -c "logrotate --debug /etc/logrotate.d/skytools3 >/dev/null 2>&1"
check "rc links installed" sh -c "ls /etc/rc2.d/S*skytools3 >/dev/null 2>&1"
# What the postinst does (unless policy-rc.d forbids it, as in containers): with no
# job, start does nothing and must succeed, or the installation would fail.
check "$INIT start with no job returns 0" $INIT start
check "$INIT status with no job returns 0" $INIT status
check "$INIT stop with no job returns 0" $INIT stop
check "no pgqd started at installation (no job)" no_job

# ---- a database with a queue and a consumer ---------------------------------------------
if "${PSQL[@]}" -d postgres -c "create database $DB" >/dev/null; then
    db_created=1
    ok "create database $DB"
else
    abort "create database $DB"
fi
if sql "create extension pgq; select pgq.create_queue('q');
        select pgq.set_queue_config('q', 'ticker_max_count', '1');
        select pgq.set_queue_config('q', 'ticker_max_lag', '0');
        select pgq.register_consumer('q', 'c');" >/dev/null; then
    ok "pgq queue q with consumer c in $DB"
else
    abort "create the pgq queue and consumer in $DB"
fi

# ---- a pgqd job -------------------------------------------------------------------------
job_written=1
cat >$JOB <<EOF
# Written by tests/e2e/deb-skytools.sh
[pgqd]
base_connstr = host=127.0.0.1 user=postgres
database_list = $DB
logfile = $LOG
pidfile = $PIDFILE
syslog = 0
ticker_period = 0.5
stats_period = 1
EOF
chown root:root $JOB
chmod 0644 $JOB
check "job file readable by $USER_" runuser -u $USER_ -- test -r $JOB

# ---- start -----------------------------------------------------------------------------
say "starting the jobs"
# As at boot: /run is a tmpfs, the init script must re-create the pidfile directory.
rm -rf $RUNDIR
check "$INIT start returns 0" $INIT start
check "$RUNDIR re-created, owned by $USER_" owned_by_skytools $RUNDIR
pid=$(tr -dc 0-9 <$PIDFILE 2>/dev/null)
check "pidfile names a running pgqd" \
    sh -c "[ -n '$pid' ] && [ \"\$(readlink /proc/$pid/exe)\" = $PGQD ]"
check "pgqd runs as user $USER_" sh -c "[ -n '$pid' ] && [ \"\$(ps -o user= -p '$pid')\" = $USER_ ]"
check "pgqd's real uid is $USER_'s" \
    sh -c "[ -n '$pid' ] && awk '/^Uid:/ { print \$2 }' /proc/$pid/status | grep -qx \"\$(id -u $USER_)\""
$SCRIPTMGR $CONF status >"$tmp/status.out" 2>&1
st=$?
check "scriptmgr status returns 0" test $st = 0
check "scriptmgr status shows the job running (pid $pid)" \
    grep -qE "^pgqd +pgqd +running \\(pid $pid\\)" "$tmp/status.out"
check "$INIT status returns 0" $INIT status
check "$INIT start again returns 0 (already running)" $INIT start
check "still one pgqd of $USER_" one_job

# ---- an event reaches a batch -------------------------------------------------------------
payload=hk-e2e-payload-$$
if sql "select pgq.insert_event('q', 'hk-e2e', '$payload')" >/dev/null; then
    ok "insert an event into q"
else
    nok "insert an event into q"
fi
got=0
batches=0
for _ in $(seq 1 50); do
    b=$(sql "select pgq.next_batch('q', 'c')" 2>/dev/null)
    if [ -n "$b" ]; then
        batches=$((batches + 1))
        sql "select ev_type, ev_data from pgq.get_batch_events($b)" >>"$tmp/events" 2>/dev/null
        sql "select pgq.finish_batch($b)" >/dev/null 2>&1
        if grep -qF "$payload" "$tmp/events"; then
            got=1
            break
        fi
    fi
    sleep 0.2
done
if [ $got = 1 ]; then
    ok "the event arrived in a batch of consumer c within 10 s (after $batches batch(es))"
else
    nok "the event arrived in a batch of consumer c within 10 s ($batches batch(es) seen)"
    echo "  events: $(cat "$tmp/events" 2>/dev/null)"
    echo "  pgqd log:"; sed 's/^/    /' $LOG 2>/dev/null | tail -20
fi
check "the batch's event has type hk-e2e" grep -qF "hk-e2e|$payload" "$tmp/events"
check "pgqd log $LOG owned by $USER_" sh -c "[ \"\$(stat -c %U $LOG)\" = $USER_ ]"

# ---- reload ----------------------------------------------------------------------------
check "$INIT reload returns 0" $INIT reload
reloaded=0
for _ in $(seq 1 25); do
    grep -q 'configuration reloaded' $LOG 2>/dev/null && { reloaded=1; break; }
    sleep 0.2
done
check "pgqd logged \"configuration reloaded\"" test $reloaded = 1
check "pgqd pid unchanged after reload" sh -c "[ \"\$(tr -dc 0-9 <$PIDFILE)\" = '$pid' ]"
check "pgqd still running after reload" alive "$pid"

# ---- restart ---------------------------------------------------------------------------
check "$INIT restart returns 0" $INIT restart
newpid=$(tr -dc 0-9 <$PIDFILE 2>/dev/null)
check "a new pgqd runs after restart (pid $newpid)" \
    sh -c "[ -n '$newpid' ] && [ '$newpid' != '$pid' ] && [ -d /proc/$newpid ]"
check "the old pgqd $pid is gone" dead "$pid"
check "the new pgqd runs as user $USER_" sh -c "[ -n '$newpid' ] && [ \"\$(ps -o user= -p '$newpid')\" = $USER_ ]"
# The status file is written every stats_period (1 s here).
status_ok=0
for _ in $(seq 1 25); do
    $PGQD --status $JOB >"$tmp/pgqd-status.out" 2>&1 && { status_ok=1; break; }
    sleep 0.2
done
check "pgqd --status returns 0 while running" test $status_ok = 1
check "pgqd --status lists $DB" grep -q "^$DB " "$tmp/pgqd-status.out"

# ---- stop ------------------------------------------------------------------------------
check "$INIT stop returns 0" $INIT stop
check "no pgqd of $USER_ left" no_job
check "the pgqd's pid $newpid is gone" dead "$newpid"
$SCRIPTMGR $CONF status >"$tmp/status.out" 2>&1
check "scriptmgr status shows the job stopped" grep -qE '^pgqd +pgqd +stopped' "$tmp/status.out"
# pgqd --status judges by the status file's age: stale after 3 stats_periods (3 s).
st=0
for _ in $(seq 1 30); do
    $PGQD --status $JOB >"$tmp/pgqd-status.out" 2>&1
    st=$?
    [ $st != 0 ] && break
    sleep 0.2
done
check "pgqd --status fails (stale) within 6 s after stop (exit $st)" test $st != 0
check "$INIT stop again returns 0" $INIT stop

# ---- purge -----------------------------------------------------------------------------
say "purging"
# The job file is the operator's, not the packages'.
rm -f $JOB
job_written=0
# With Debian's pgqd back in the same transaction if it was there before (pgqd+).
if apt-get purge -y -q $TICKER $PKG $pgqd_swap >"$tmp/apt-purge.log" 2>&1; then
    ok "apt-get purge $TICKER $PKG $pgqd_swap"
    installed=0
    pgqd_removed=0
else
    cat "$tmp/apt-purge.log"
    nok "apt-get purge $TICKER $PKG $pgqd_swap"
fi
check "scriptmgr removed" test ! -e $SCRIPTMGR
if [ $had_pgqd = 1 ]; then
    check "/usr/bin/pgqd is Debian's again" sh -c "dpkg -S $PGQD | grep -q '^pgqd: '"
    check "Debian's pgqd runs" sh -c "$PGQD -V 2>&1 | grep -q 'version 3\\.'"
else
    check "pgqd removed" test ! -e $PGQD
fi
for p in $pgq_pkgs; do
    check "$p still installed" sh -c "dpkg-query -W -f='\${Status}' $p | grep -q 'ok installed'"
done
check "conffile $CONF removed" test ! -e $CONF
check "$JOBDIR removed" test ! -e $JOBDIR
check "init script removed" test ! -e $INIT
check "systemd unit removed" test ! -e /lib/systemd/system/skytools3.service
check "logrotate config removed" test ! -e /etc/logrotate.d/skytools3
check "$LOGDIR, $LIBDIR and $RUNDIR removed" sh -c "[ ! -e $LOGDIR ] && [ ! -e $LIBDIR ] && [ ! -e $RUNDIR ]"
check "example and manual pages removed" \
    sh -c "[ ! -e /usr/share/doc/$TICKER ] && [ ! -e /usr/share/man/man1/scriptmgr.1.gz ]"
check "rc links removed" sh -c "! ls /etc/rc?.d/*skytools3 >/dev/null 2>&1"
check "packages fully gone from dpkg" \
    sh -c "! dpkg-query -W -f='\${Status}\n' $PKG $TICKER 2>/dev/null | grep -qE ' (installed|config-files)\$'"

# ---- clean up ------------------------------------------------------------------------------
if "${PSQL[@]}" -d postgres -c "drop database $DB with (force)" >/dev/null; then
    db_created=0
    ok "drop database $DB"
else
    nok "drop database $DB"
fi

finished=1
