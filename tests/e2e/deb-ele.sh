#!/bin/bash
# End-to-end test of the ele-tools Debian package, driven as an operator would: install
# dist/ele-tools_*.deb, check the programs, manual pages, conffile, cron entry, cache
# directory and schema; then, as user postgres, make a private PostgreSQL cluster that
# also holds an admin database loaded from the installed schema, report it with the
# installed ele_report (quiet, the instance in utility.v_flat_instance, an unchanged run
# sending nothing), stop, show and start it with ele_ctl; finally purge the package and
# check that its files are gone.
#
# Needs root and PostgreSQL 15's server binaries (/usr/lib/postgresql/15/bin, package
# postgresql-15; `make deps` installs it). The cluster is private: initdb into a
# temporary directory, its Unix socket in that directory only (listen_addresses = ''),
# so the system's PostgreSQL is not touched; `[Discovery] ports` keeps the system's
# clusters out of the report. It is stopped and the directory removed on exit, and the
# package is purged.
#
# The last line is `deb-ele: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

PKG=ele-tools
REPORT=/usr/bin/ele_report
CTL=/usr/bin/ele_ctl
SCHEMA=/usr/share/ele-tools/create_schema.sql
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
# Only the name of the Unix socket (no TCP): any value is free.
PORT=${PORT:-55461}

installed=0
tmp=
finished=0

CHECKS_NAME="deb-ele"
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lib.sh
. tests/e2e/lib.sh

# q SQL [DB]: one value from the private cluster; run LABEL COMMAND...: as postgres.
q() { pq "$PORT" "$1" "${2:-postgres}"; }
run() { pg_run "$@"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ $finished = 0 ] && [ -n "$tmp" ] && [ -f "$tmp/db.log" ]; then
        say "cleaning up after an early exit"
        echo "  db.log:"
        tail -20 "$tmp/db.log" | sed 's/^/    /'
    fi
    [ -n "$tmp" ] && pg_stop "$tmp/db"
    if [ $installed = 1 ] && installed_pkg $PKG; then
        apt-get purge -y -q $PKG >/dev/null 2>&1
    fi
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deb-ele: must run as root (it installs packages)" >&2; exit 1; }
deb=$(deb_for "$PKG") || exit 1
deb=./$deb
say "testing $deb"
[ -x "$PGBIN/initdb" ] || abort "no $PGBIN/initdb (install postgresql-15, or run \`make deps\`)"
getent passwd postgres >/dev/null || abort "no user postgres"

tmp=$(mktemp -d /tmp/hk-deb-ele-e2e.XXXXXX)
chmod 755 "$tmp"
chown postgres: "$tmp"

# ---- install -------------------------------------------------------------------------
install_fresh $PKG "$deb" $REPORT
version=$(dpkg-query -W -f='${Version}' $PKG)
for b in $REPORT $CTL; do
    check "$b belongs to $PKG" sh -c "dpkg -S $b | grep -q '^$PKG: '"
    check "$(basename $b) --version reports $version" sh -c "$b --version | grep -qF -- '$version'"
    n=$(basename $b)
    check "man -w $n finds the manual page" \
        sh -c "[ \"\$(man -w $n)\" = /usr/share/man/man8/$n.8.gz ]"
    check "the manual page of $n renders without warnings" \
        sh -c "[ -z \"\$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=w $n 2>&1 >/dev/null)\" ]"
    check "the manual page of $n has EXIT STATUS and FILES" \
        sh -c "MANWIDTH=80 man $n 2>/dev/null | grep -q '^EXIT STATUS' && MANWIDTH=80 man $n 2>/dev/null | grep -q '^FILES'"
done
check "/etc/ele_tools/report.ini is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' $PKG | grep -q ' /etc/ele_tools/report.ini '"
check "/etc/cron.d/ele-tools runs ele_report as postgres" \
    grep -qE '^[^#].*[[:space:]]postgres[[:space:]].*/usr/bin/ele_report' /etc/cron.d/ele-tools
check "/var/cache/ele_tools is postgres's, 0750" \
    test "$(stat -c '%U:%G %a' /var/cache/ele_tools)" = "postgres:postgres 750"
check "the schema is installed" test -s $SCHEMA
run sample-json $REPORT --json
st=$?
check "the sample report.ini is accepted (ele_report --json exits $st)" sh -c "[ $st = 0 ] || [ $st = 4 ]"
run missing $REPORT -c "$tmp/none.ini"
st=$?
check "a missing config is one line, exit 1 (got $st)" \
    sh -c "[ $st = 1 ] && [ \"\$(cat '$tmp/missing.err')\" = 'ele_report: Config $tmp/none.ini does not exist!' ]"

# ---- a private cluster, reported to its own admin database ------------------------------
say "a private PostgreSQL cluster in $tmp"
DB=$tmp/db
if as_pg "$PGBIN/initdb" -D "$DB" -A trust -U postgres >"$tmp/initdb.log" 2>&1; then
    ok "initdb $DB"
else
    cat "$tmp/initdb.log"
    abort "initdb $DB"
fi
cat >>"$DB/postgresql.conf" <<EOF
# tests/e2e/deb-ele.sh: Unix socket only, in the test directory
port = $PORT
listen_addresses = ''
unix_socket_directories = '$tmp'
cluster_name = 'e2e'
EOF
if as_pg "$PGBIN/pg_ctl" -D "$DB" -l "$tmp/db.log" -w start >/dev/null 2>&1; then
    ok "cluster started (socket $tmp/.s.PGSQL.$PORT)"
else
    abort "start the cluster"
fi
q "CREATE DATABASE admin" >/dev/null || abort "create the admin database"
if as_pg "$PGBIN/psql" -h "$tmp" -p "$PORT" -U postgres -d admin -X -q -v ON_ERROR_STOP=1 \
    -f $SCHEMA >"$tmp/schema.log" 2>&1; then
    ok "$SCHEMA loads"
else
    cat "$tmp/schema.log"
    abort "load $SCHEMA"
fi
check "$SCHEMA loads a second time" \
    as_pg "$PGBIN/psql" -h "$tmp" -p "$PORT" -U postgres -d admin -X -q -v ON_ERROR_STOP=1 -f $SCHEMA
host=$(hostname)
q "INSERT INTO utility.ele_environment (env_name) VALUES ('e2e');
   INSERT INTO utility.ele_server (environment_id, hostname) SELECT environment_id, '$host' FROM utility.ele_environment;
   INSERT INTO utility.ele_herd (environment_id, base_name, herd_name, db_port)
        SELECT environment_id, 'e2e', 'e2e', $PORT FROM utility.ele_environment" admin >/dev/null ||
    abort "admin rows"

cat >"$tmp/report.ini" <<EOF
# Written by tests/e2e/deb-ele.sh
[Upstream]
db_host = $tmp
db_port = $PORT
db_user = postgres
db_name = admin

[Report]
cache_dir = $tmp/cache

[Discovery]
socket_dirs = $tmp
ports = $PORT
EOF
chown postgres: "$tmp/report.ini"

if run report $REPORT -c "$tmp/report.ini"; then
    ok "ele_report returns 0"
else
    nok "ele_report returns 0"
    show_err report
fi
check "it printed nothing (quiet from cron)" sh -c "[ ! -s '$tmp/report.out' ] && [ ! -s '$tmp/report.err' ]"
row=$(q "SELECT base_name || '|' || db_port || '|' || is_online || '|' || pgdata || '|' || (master_id IS NULL)
         FROM utility.v_flat_instance" admin)
check "v_flat_instance holds it: $row" test "$row" = "e2e|$PORT|true|$DB|true"
check "its cache is postgres's, 0750" test "$(stat -c '%U %a' "$tmp/cache")" = "postgres 750"
run dry $REPORT -c "$tmp/report.ini" --dry-run
check "--dry-run prints JSON naming the parameters" grep -q '"sHerd": "e2e"' "$tmp/dry.out"

# ---- ele_ctl ---------------------------------------------------------------------------------
run list $CTL -c "$tmp/report.ini" list
check "ele_ctl list shows the cluster" grep -q "\"port\": $PORT" "$tmp/list.out"
if run stop $CTL -c "$tmp/report.ini" e2e stop; then
    ok "ele_ctl e2e stop returns 0"
else
    nok "ele_ctl e2e stop returns 0"
    show_err stop
fi
check "the server is down" test ! -f "$DB/postmaster.pid"
run status $CTL -c "$tmp/report.ini" e2e status
st=$?
check "ele_ctl e2e status says not running (exit $st = 4)" test $st = 4
run report-down $REPORT -c "$tmp/report.ini"
st=$?
check "ele_report reports it (the admin database is on it: unreachable, exit $st = 3)" test $st = 3
run start $CTL -c "$tmp/report.ini" "$PORT" start
st=$?
check "ele_ctl $PORT start returns 0 (got $st)" test $st = 0
check "the server answers" test "$(q 'select 1')" = 1
run again $CTL -c "$tmp/report.ini" "$PORT" start
st=$?
check "a second start says already running (exit $st = 3)" test $st = 3
run unknown $CTL -c "$tmp/report.ini" nosuch status
st=$?
check "an unknown cluster is exit 5, listing the clusters" \
    sh -c "[ $st = 5 ] && grep -q 'clusters here: e2e on port $PORT' '$tmp/unknown.err'"
pg_stop "$DB"

# ---- purge -------------------------------------------------------------------------------
say "purging"
if apt-get purge -y -q $PKG >"$tmp/apt-purge.log" 2>&1; then
    ok "apt-get purge $PKG"
    installed=0
else
    cat "$tmp/apt-purge.log"
    nok "apt-get purge $PKG"
fi
check "$REPORT and $CTL removed" sh -c "[ ! -e $REPORT ] && [ ! -e $CTL ]"
check "/etc/cron.d/ele-tools removed" test ! -e /etc/cron.d/ele-tools
check "/etc/ele_tools/report.ini removed" test ! -e /etc/ele_tools/report.ini
check "/var/cache/ele_tools removed" test ! -e /var/cache/ele_tools
check "package fully gone from dpkg" \
    sh -c "! dpkg-query -W -f='\${Status}\n' $PKG 2>/dev/null | grep -qE ' (installed|config-files)\$'"

finished=1
