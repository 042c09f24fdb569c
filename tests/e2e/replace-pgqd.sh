#!/bin/bash
# skytools3-ticker replacing Debian's pgqd on a host where Debian's pgqd is installed
# and ticking, as an operator meets it:
#
#   - Debian's pgqd (from apt) runs from /etc/pgqd.ini (edited by the operator to tick
#     a private cluster's queue) through its /etc/init.d/pgqd;
#   - apt-get install skytools3 skytools3-ticker: Debian's pgqd is stopped and removed
#     (not purged: /etc/pgqd.ini and /etc/init.d/pgqd stay), the postinst disables the
#     leftover init script and says so (naming /etc/pgqd.ini) on stderr;
#   - at "boot" (every S link of runlevels 2-5 that names pgqd or skytools3 is run as
#     /etc/init.d/rc runs it, and systemd-sysv-generator is asked what it would start)
#     exactly one ticker runs: the Skytools job scriptmgr starts;
#   - apt purge pgqd removes the leftovers with skytools3-ticker installed;
#   - removing skytools3-ticker with pgqd+ brings Debian's pgqd back, enabled.
#
# The maintainer scripts start and stop services as on a real host (apt_real in
# lifecycle-lib.sh). Needs root, PostgreSQL 15 with pgq; runs under flock
# /tmp/hk-dpkg.lock; /etc/pgqd.ini and Debian's pgqd are restored on exit.
#
# The last line is `replace-pgqd: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

CHECKS_NAME=replace-pgqd
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lifecycle-lib.sh
. tests/e2e/lifecycle-lib.sh
[ "$(id -u)" = 0 ] || { echo "replace-pgqd: must run as root (it installs packages)" >&2; exit 1; }
hold_dpkg_lock "$@"

INI=/etc/pgqd.ini
DEB_PID=/var/run/postgresql/pgqd.pid
JOB=/etc/skytools/pgqd.ini
PGQD_PID=/var/run/skytools/pgqd.pid

tmp=
finished=0
installed=0
had_pgqd=0
pgqd_state=
trap cleanup EXIT
trap 'exit 130' INT TERM

tickers() { pgrep -x pgqd | tr '\n' ' '; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ $finished = 0 ] && say "cleaning up after an early exit"
    [ -x /etc/init.d/skytools3 ] && /etc/init.d/skytools3 stop >/dev/null 2>&1
    [ -x /etc/init.d/pgqd ] && /etc/init.d/pgqd stop >/dev/null 2>&1
    rm -f $JOB
    if [ $installed = 1 ]; then
        had_pgqd=1 purge_leftovers
    fi
    if ! dpkg-query -W -f='${Status}' pgqd 2>/dev/null | grep -q 'ok installed'; then
        apt-get install -y -q --no-install-recommends pgqd >/dev/null 2>&1 ||
            echo "replace-pgqd: error: could not re-install Debian's pgqd" >&2
    fi
    # The host's own /etc/pgqd.ini (dpkg records its md5sum: put the very file back).
    if [ -n "$tmp" ] && [ -f "$tmp/pgqd.ini.orig" ]; then
        cp -p "$tmp/pgqd.ini.orig" $INI
    fi
    for p in $(tickers); do kill -TERM "$p" 2>/dev/null; done
    if [ -n "$tmp" ]; then
        stop_cluster "$tmp/pg"
        rm -rf "$tmp"
    fi
    finish_checks "$rc"
}

# ---- preconditions -------------------------------------------------------------------
debs=("./$(deb_for skytools3)" "./$(deb_for skytools3-ticker)") || exit 1
[ -x "$PGBIN/initdb" ] || abort "no $PGBIN/initdb (run \`make deps\`)"
[ -f /usr/share/postgresql/15/extension/pgq.control ] || abort "no pgq extension (postgresql-15-pgq3)"
purge_leftovers
[ -n "$(tickers)" ] && abort "a pgqd runs already: $(tickers)"
tmp=$(mktemp -d /tmp/hk-replace-pgqd.XXXXXX)
chmod 755 "$tmp"

# ---- Debian's pgqd, installed and ticking -----------------------------------------------
pgqd_state=$(dpkg-query -W -f='${db:Status-Status}' pgqd 2>/dev/null)
if [ "$pgqd_state" != installed ]; then
    say "installing Debian's pgqd from apt"
    apt-get install -y -q --no-install-recommends pgqd >"$tmp/apt-pgqd.log" 2>&1 ||
        { cat "$tmp/apt-pgqd.log"; abort "apt-get install pgqd"; }
fi
check "Debian's pgqd $(dpkg-query -W -f='${Version}' pgqd) is installed" \
    sh -c "dpkg -S /usr/bin/pgqd | grep -q '^pgqd: '"
cp -p $INI "$tmp/pgqd.ini.orig"
port=$(free_port)
start_cluster "$tmp/pg" "$port" || abort "start a private cluster"
psql_at "$port" postgres "create database q" >/dev/null && psql_at "$port" q "create extension pgq;
    select pgq.create_queue('q'); select pgq.set_queue_config('q', 'ticker_max_lag', '0');
    select pgq.set_queue_config('q', 'ticker_idle_period', '0')" >/dev/null || abort "a pgq queue"
ticks() { psql_at "$port" q "select max(tick_id) from pgq.tick" 2>/dev/null; }
more_ticks() { psql_at "$port" q "select pgq.insert_event('q', 'r', 'x')" >/dev/null; [ "$(ticks)" -gt "$1" ]; }
# The operator's edit: tick the private cluster's database.
cat >>$INI <<EOF

# tests/e2e/replace-pgqd.sh
base_connstr = host=$tmp port=$port
database_list = q
ticker_period = 0.2
EOF
sha256sum $INI >"$tmp/ini.sums"
check "/etc/init.d/pgqd start (Debian's)" /etc/init.d/pgqd start
wait_for 10 test -s $DEB_PID
deb_pid=$(pidof_file $DEB_PID)
check "Debian's pgqd runs (pid $deb_pid, as postgres)" \
    sh -c "[ -n '$deb_pid' ] && [ \"\$(ps -o user= -p '$deb_pid')\" = postgres ]"
t=$(ticks)
check "Debian's pgqd ticks the queue" wait_for 20 more_ticks "$t"

# ---- install ours -----------------------------------------------------------------------
say "installing ${debs[*]}"
installed=1
APT_REAL_DENY=
if apt_real install "${debs[@]}" >"$tmp/apt-install.log" 2>&1; then
    ok "apt-get install skytools3 skytools3-ticker"
else
    cat "$tmp/apt-install.log"
    abort "apt-get install skytools3 skytools3-ticker"
fi
check "Debian's pgqd removed, not purged (config-files)" \
    test "$(dpkg-query -W -f='${db:Status-Status}' pgqd)" = config-files
check "/usr/bin/pgqd is skytools3-ticker's" sh -c "dpkg -S /usr/bin/pgqd | grep -q '^skytools3-ticker: '"
check "postgresql-15-pgq3 still installed (skytools3-ticker provides pgqd)" \
    sh -c "dpkg-query -W -f='\${Status}' postgresql-15-pgq3 | grep -q 'ok installed'"
check "Debian's pgqd was stopped by its prerm (pid $deb_pid gone)" sh -c "! kill -0 $deb_pid 2>/dev/null"
check "the postinst says what it did, naming /etc/pgqd.ini" \
    sh -c "grep -q 'skytools3-ticker: note: .*pgqd was replaced' '$tmp/apt-install.log' &&
           grep -q 'update-rc.d pgqd disable' '$tmp/apt-install.log' && grep -q '/etc/pgqd.ini' '$tmp/apt-install.log'"
check "/etc/pgqd.ini kept as the operator edited it" sha256sum -c --quiet "$tmp/ini.sums"
check "the leftover /etc/init.d/pgqd is there (pgqd's conffile)" test -f /etc/init.d/pgqd
check "... with no start link in runlevels 2-5 (disabled)" sh -c "! ls /etc/rc[2345].d/S*pgqd >/dev/null 2>&1"
check "... and stop links instead" sh -c "ls /etc/rc2.d/K*pgqd >/dev/null 2>&1"
check "no ticker started by the installation (no job yet)" test -z "$(tickers)"

# ---- boot --------------------------------------------------------------------------------
# The operator's Skytools job, ticking the same database.
cat >$JOB <<EOF
# Written by tests/e2e/replace-pgqd.sh
[pgqd]
base_connstr = host=$tmp port=$port user=postgres
database_list = q
logfile = /var/log/skytools/pgqd.log
pidfile = $PGQD_PID
ticker_period = 0.2
EOF
# As /etc/init.d/rc does at boot: every executable S link, in order.
for rl in 2 3 4 5; do
    for l in /etc/rc$rl.d/S*; do
        case $l in *pgqd | *skytools3) [ -x "$l" ] && "$l" start >>"$tmp/boot.log" 2>&1 ;; esac
    done
done
sleep 1
check "after boot one ticker runs: scriptmgr's, as skytools ($(tickers))" \
    sh -c "[ \"\$(pgrep -x pgqd | wc -l)\" = 1 ] && [ \"\$(pgrep -x -u skytools pgqd)\" = \"\$(tr -dc 0-9 <$PGQD_PID)\" ]"
t=$(ticks)
check "it ticks the queue" wait_for 20 more_ticks "$t"
# systemd: what the sysv generator would make of /etc/init.d (no native pgqd.service
# is left). Control first: the same script, executable and linked, is started.
gen() {
    rm -rf "$tmp/gen" && mkdir -p "$tmp/gen/a" "$tmp/gen/b" "$tmp/gen/c"
    SYSTEMD_UNIT_PATH=/lib/systemd/system:/etc/systemd/system SYSTEMD_SYSVINIT_PATH=$1 \
        SYSTEMD_SYSVRCND_PATH=$2 /lib/systemd/system-generators/systemd-sysv-generator \
        "$tmp/gen/a" "$tmp/gen/b" "$tmp/gen/c" 2>/dev/null
}
mkdir -p "$tmp/ctl/init.d" "$tmp/ctl/rc2.d"
cp /etc/init.d/pgqd "$tmp/ctl/init.d/pgqd" && chmod 755 "$tmp/ctl/init.d/pgqd"
ln -s ../init.d/pgqd "$tmp/ctl/rc2.d/S01pgqd"
gen "$tmp/ctl/init.d" "$tmp/ctl"
check "control: systemd-sysv-generator would start an enabled leftover" \
    test -e "$tmp/gen/c/multi-user.target.wants/pgqd.service"
gen /etc/init.d /etc
check "systemd-sysv-generator does not start the disabled leftover" \
    test ! -e "$tmp/gen/c/multi-user.target.wants/pgqd.service"
/etc/init.d/skytools3 stop >/dev/null 2>&1

# ---- purge Debian's leftovers -----------------------------------------------------------
if apt_real purge pgqd >"$tmp/apt-purge-pgqd.log" 2>&1; then
    ok "apt-get purge pgqd (its leftovers) with skytools3-ticker installed"
else
    cat "$tmp/apt-purge-pgqd.log"
    nok "apt-get purge pgqd"
fi
check "/etc/init.d/pgqd, /etc/pgqd.ini and the rc links are gone" \
    sh -c "[ ! -e /etc/init.d/pgqd ] && [ ! -e $INI ] && ! ls /etc/rc?.d/*pgqd >/dev/null 2>&1"
check "skytools3-ticker is untouched" sh -c "dpkg-query -W -f='\${Status}' skytools3-ticker | grep -q 'ok installed' && [ -x /usr/bin/pgqd ]"

# ---- back to Debian's pgqd --------------------------------------------------------------
rm -f $JOB
APT_REAL_DENY=pgqd
if apt_real purge skytools3-ticker skytools3 pgqd+ >"$tmp/apt-back.log" 2>&1; then
    ok "apt-get purge skytools3-ticker skytools3 pgqd+"
    installed=0
else
    cat "$tmp/apt-back.log"
    nok "apt-get purge skytools3-ticker skytools3 pgqd+"
fi
check "Debian's pgqd is back, enabled at boot" \
    sh -c "dpkg -S /usr/bin/pgqd | grep -q '^pgqd: ' && [ -x /etc/init.d/pgqd ] && ls /etc/rc2.d/S*pgqd >/dev/null"
check "skytools3-ticker left no state (/var/lib/skytools3-ticker)" test ! -e /var/lib/skytools3-ticker

finished=1
