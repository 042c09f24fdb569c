#!/bin/bash
# Every init script of the hostkit packages against the LSB (actions and exit codes),
# its systemd unit against `systemd-analyze verify` and the init script, and every
# logrotate file against `logrotate -d` and a forced rotation the daemon survives.
#
#   /etc/init.d/snf-ganeti-eventd, /etc/init.d/pacha (one daemon each) and
#   /etc/init.d/skytools3 (the Skytools jobs, here one pgqd) are driven through
#   start stop restart reload force-reload status and an unknown action, running and
#   stopped: status 0 running / 3 stopped / 1 dead with a pidfile left, reload and
#   force-reload 7 when not running, a bad configuration 6, usage 3; start and stop
#   are idempotent (0), restart starts a stopped daemon and gives a running one a
#   new pid, reload keeps the pid.
#
# The packages are installed from dist/ (snf-cyclades-gtools, skytools3,
# skytools3-ticker, pacha) and purged at the end. Needs root, PostgreSQL at
# 127.0.0.1:5432 (trust, for pgqd) and systemd's systemd-analyze (not as PID 1: verify
# works offline); runs under flock /tmp/hk-dpkg.lock.
#
# The last line is `initscripts: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

CHECKS_NAME=initscripts
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lifecycle-lib.sh
. tests/e2e/lifecycle-lib.sh
[ "$(id -u)" = 0 ] || { echo "initscripts: must run as root (it installs packages)" >&2; exit 1; }
hold_dpkg_lock "$@"

MINE="snf-cyclades-gtools skytools3 skytools3-ticker pacha"
GTOOLS=/etc/synnefo/gtools.conf
JOB=/etc/skytools/pgqd.ini
tmp=
finished=0
installed=0
had_pgqd=0
trap cleanup EXIT
trap 'exit 130' INT TERM

cleanup() {
    local rc=$? s
    trap - EXIT INT TERM
    set +e
    [ $finished = 0 ] && say "cleaning up after an early exit"
    for s in snf-ganeti-eventd skytools3 pacha; do
        [ -x /etc/init.d/$s ] && /etc/init.d/$s stop >/dev/null 2>&1
    done
    rm -f $JOB
    [ $installed = 1 ] && purge_leftovers
    if [ $had_pgqd = 1 ] && ! dpkg-query -W -f='${Status}' pgqd 2>/dev/null | grep -q 'ok installed'; then
        apt-get install -y -q --no-install-recommends pgqd >/dev/null 2>&1
    fi
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}

# ---- install -------------------------------------------------------------------------
debs=()
for p in $MINE; do debs+=("./$(deb_for "$p")") || exit 1; done
command -v systemd-analyze >/dev/null 2>&1 || abort "no systemd-analyze (package systemd; run \`make deps\`)"
dpkg-query -W -f='${Status}' pgqd 2>/dev/null | grep -q 'ok installed' && had_pgqd=1
purge_leftovers
tmp=$(mktemp -d /tmp/hk-initscripts.XXXXXX)
chmod 755 "$tmp"
installed=1
if apt-get install -y -q --no-install-recommends "${debs[@]}" >"$tmp/apt.log" 2>&1; then
    ok "apt-get install $MINE"
else
    cat "$tmp/apt.log"
    abort "apt-get install"
fi

# ---- configuration -----------------------------------------------------------------
fake_ganeti "$tmp/ganeti"
# No broker listens there: the daemon runs, spools, retries.
cat >$GTOOLS <<EOF
[gtools]
amqp_hosts = amqp://guest:guest@127.0.0.1:$(free_port)/%%2f
data_dir = $tmp/ganeti/data
node_name = node1.hk-e2e.test
amqp_connect_timeout = 2
[eventd]
queue_dir = $tmp/ganeti/queue
EOF
cat >$JOB <<EOF
# Written by tests/e2e/initscripts.sh
[pgqd]
base_connstr = host=127.0.0.1 user=postgres
database_list = postgres
logfile = /var/log/skytools/pgqd.log
pidfile = /var/run/skytools/pgqd.pid
stats_period = 1
EOF
mkdir -p "$tmp/tree"
echo one >"$tmp/tree/a"
cat >"$tmp/pacha.ini" <<EOF
[pacha]
state_dir = $tmp/pacha-state
host = initscripts
log = $tmp/pacha.log
EOF
pacha -c "$tmp/pacha.ini" track "$tmp/tree" >/dev/null || abort "pacha track"
printf 'ENABLED=yes\nPACHA_OPTS="--config %s"\n' "$tmp/pacha.ini" >/etc/default/pacha

# ---- LSB actions and exit codes ------------------------------------------------------------
# rc SCRIPT ACTION: the exit status of /etc/init.d/SCRIPT ACTION (output in $tmp).
rc() {
    /etc/init.d/"$1" "$2" >"$tmp/$1.$2.out" 2>&1
    echo $?
}
# expect SCRIPT ACTION STATUS [WHEN]
expect() {
    local got
    got=$(rc "$1" "$2")
    check "$1 $2${4:+ ($4)} exits $3 (got $got)" test "$got" = "$3"
    [ "$got" = "$3" ] || sed 's/^/    /' "$tmp/$1.$2.out"
}
# gone PID: no such process, or a zombie PID 1 has not reaped yet.
gone() { [ ! -d "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
pid_of() {
    case $1 in
    snf-ganeti-eventd) pidof_file /var/run/snf-ganeti-eventd.pid ;;
    pacha) pidof_file /var/run/pacha.pid ;;
    skytools3) pidof_file /var/run/skytools/pgqd.pid ;;
    esac
}
has_pid() { [ -n "$(pid_of "$1")" ]; }
for s in snf-ganeti-eventd skytools3 pacha; do
    say "/etc/init.d/$s"
    check "$s: LSB header with the five actions' runlevels" \
        sh -c "sed -n '/^### BEGIN INIT INFO/,/^### END INIT INFO/p' /etc/init.d/$s | grep -q '^# Default-Start: *2 3 4 5' &&
               grep -q '^\\. /lib/lsb/init-functions' /etc/init.d/$s"
    expect $s status 3 stopped
    expect $s stop 0 stopped
    expect $s reload 7 stopped
    expect $s force-reload 7 stopped
    expect $s start 0
    wait_for 10 has_pid $s
    p1=$(pid_of $s)
    check "$s: a daemon runs after start (pid $p1)" test -n "$p1"
    expect $s status 0 running
    expect $s start 0 "running already"
    check "$s: start again keeps pid $p1" test "$(pid_of $s)" = "$p1"
    expect $s reload 0 running
    expect $s force-reload 0 running
    sleep 0.5
    check "$s: reload keeps pid $p1" test "$(pid_of $s)" = "$p1"
    expect $s restart 0 running
    p2=$(pid_of $s)
    check "$s: restart gives a new pid ($p1 -> $p2)" test -n "$p2" -a "$p2" != "$p1"
    expect $s stop 0 running
    check "$s: no daemon after stop (pid $p2 gone)" gone "$p2"
    expect $s status 3 "stopped again"
    expect $s restart 0 stopped
    p3=$(pid_of $s)
    check "$s: restart starts a stopped daemon (pid $p3)" test -n "$p3"
    expect $s nosuchaction 3 "unknown action"
    check "$s: usage on stderr names the actions" \
        grep -q 'Usage: .*start|stop|status|restart|reload|force-reload' "$tmp/$s.nosuchaction.out"
    # Killed without a chance to clean up: pidfile left behind.
    kill -KILL "$p3" 2>/dev/null
    # status_of_proc counts a zombie as running: wait until PID 1 has reaped it.
    if wait_for 15 test ! -d "/proc/$p3"; then
        case $s in
        skytools3) expect $s status 3 "killed (scriptmgr: stopped)" ;;
        *) expect $s status 1 "killed, pidfile left" ;;
        esac
    else
        say "$s: pid $p3 not reaped by PID 1 within 15 s: status after a crash not checked"
    fi
    expect $s start 0 "after a crash"
    expect $s stop 0
done

# A configuration error: "not configured", 6.
cp $GTOOLS "$tmp/gtools.conf"
echo "no_such_key = 1" >>$GTOOLS
expect snf-ganeti-eventd start 6 "unknown key in gtools.conf"
check "... naming the key" grep -q no_such_key "$tmp/snf-ganeti-eventd.start.out"
cp "$tmp/gtools.conf" $GTOOLS
echo "no_such_key = 1" >>"$tmp/pacha.ini"
expect pacha start 6 "unknown key in pacha.ini"
sed -i '$d' "$tmp/pacha.ini"
# pacha off in /etc/default/pacha: start says so and succeeds, status is "stopped".
printf 'ENABLED=no\n' >/etc/default/pacha
expect pacha start 0 disabled
check "pacha: start while disabled says so and starts nothing" \
    sh -c "grep -q disabled '$tmp/pacha.start.out' && [ ! -e /var/run/pacha.pid ]"
expect pacha status 3 disabled
printf 'ENABLED=yes\nPACHA_OPTS="--config %s"\n' "$tmp/pacha.ini" >/etc/default/pacha

# ---- systemd units -----------------------------------------------------------------------
for u in snf-ganeti-eventd skytools3 pacha; do
    f=/lib/systemd/system/$u.service
    # Units named in After= that this host lacks (ganeti.target) are not errors of ours.
    systemd-analyze verify --man=no "$f" >"$tmp/verify.$u" 2>&1
    st=$?
    bad=$(grep -v -e 'not found' -e '^$' "$tmp/verify.$u" | grep -v -i 'ganeti\|rabbitmq\|postgresql' || true)
    check "systemd-analyze verify $u.service (exit $st)" test $st = 0 -a -z "$bad"
    [ -n "$bad" ] && sed 's/^/    /' "$tmp/verify.$u"
done
# Equivalent to the init scripts: same program, defaults file, pidfile, user.
check "eventd's unit runs /usr/sbin/snf-ganeti-eventd with the init script's pidfile and defaults" \
    sh -c "grep -q '^ExecStart=/usr/sbin/snf-ganeti-eventd --pid-file /run/snf-ganeti-eventd.pid \$SNF_EVENTD_OPTS' /lib/systemd/system/snf-ganeti-eventd.service &&
           grep -q '^EnvironmentFile=-/etc/default/snf-ganeti-eventd' /lib/systemd/system/snf-ganeti-eventd.service &&
           grep -q 'SNF_EVENTD_ENABLE' /lib/systemd/system/snf-ganeti-eventd.service"
check "pacha's unit honours ENABLED and PACHA_OPTS of /etc/default/pacha" \
    sh -c "grep -q '^EnvironmentFile=-/etc/default/pacha' /lib/systemd/system/pacha.service &&
           grep -q 'ENABLED' /lib/systemd/system/pacha.service && grep -q '\$PACHA_OPTS' /lib/systemd/system/pacha.service"
check "skytools3's unit runs scriptmgr start -a as skytools, like the init script" \
    sh -c "grep -q '^ExecStart=/usr/bin/scriptmgr /etc/skytools.ini start -a' /lib/systemd/system/skytools3.service &&
           grep -q '^User=skytools' /lib/systemd/system/skytools3.service && grep -q 'runuser -u \$USER' /etc/init.d/skytools3"
for u in snf-ganeti-eventd skytools3 pacha; do
    check "$u.service has ExecReload (reload and force-reload of the init script)" \
        grep -q '^ExecReload=' /lib/systemd/system/$u.service
done

# ---- logrotate ---------------------------------------------------------------------------
for f in /etc/logrotate.d/snf-ganeti-eventd /etc/logrotate.d/skytools3 /etc/logrotate.d/pacha; do
    logrotate -d "$f" >"$tmp/lr-debug.out" 2>&1
    st=$?
    check "logrotate -d $f (exit $st, no error)" sh -c "[ $st = 0 ] && ! grep -qi 'error' '$tmp/lr-debug.out'"
done
# A forced rotation with the packaged rules; the daemon reopens its log on SIGHUP.
# rotated LOGFILE LOGROTATE-FILE NAME MARK [TRIGGER]: rotate, run TRIGGER (a command), then
# wait for MARK (a line the daemon logs on SIGHUP, or after TRIGGER) in the new file.
rotated() {
    local log=$1 conf=$2 name=$3 mark=$4 trigger=${5:-} p
    /etc/init.d/"$name" start >/dev/null 2>&1
    wait_for 10 test -s "$log"
    p=$(pid_of "$name")
    check "$name: logrotate -f $conf" logrotate -f -s "$tmp/lr.state" "$conf"
    check "$name: $log rotated to $log.1" test -s "$log.1"
    [ -n "$trigger" ] && $trigger
    check "$name: the daemon reopened $log (\"$mark\" in the new file)" wait_for 10 grep -q "$mark" "$log"
    check "$name: same daemon after the rotation (pid $p)" test -n "$p" -a "$(pid_of "$name")" = "$p"
    /etc/init.d/"$name" stop >/dev/null 2>&1
}
rm -f /var/log/snf-ganeti-eventd.log*
rotated /var/log/snf-ganeti-eventd.log /etc/logrotate.d/snf-ganeti-eventd snf-ganeti-eventd 'configuration reloaded'
rm -f /var/log/skytools/pgqd.log*
# pgqd logs "configuration reloaded" before it reopens: the next stats line is the mark.
rotated /var/log/skytools/pgqd.log /etc/logrotate.d/skytools3 skytools3 'ticks: '
# pacha: copytruncate (its log is a file only when log = /var/log/pacha/...).
mkdir -p /var/log/pacha
sed -i 's|^log = .*|log = /var/log/pacha/initscripts.log|' "$tmp/pacha.ini"
edit_tree() { echo more >>"$tmp/tree/a"; }
rotated /var/log/pacha/initscripts.log /etc/logrotate.d/pacha pacha 'committed' edit_tree
check "pacha: the truncated log is written from its start (no hole)" \
    sh -c "head -c 1 /var/log/pacha/initscripts.log | grep -q '[^[:cntrl:]]'"
check "skytools3: the rotated log stays skytools's" sh -c "[ \"\$(stat -c %U /var/log/skytools/pgqd.log)\" = skytools ]"

# ---- purge ------------------------------------------------------------------------------
rm -f $JOB
swap=
[ $had_pgqd = 1 ] && swap=pgqd+
# shellcheck disable=SC2086
if apt-get purge -y -q $MINE $swap >"$tmp/purge.log" 2>&1; then
    ok "apt-get purge $MINE $swap"
    installed=0
else
    cat "$tmp/purge.log"
    nok "apt-get purge"
fi
finished=1
