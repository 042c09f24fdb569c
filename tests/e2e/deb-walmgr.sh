#!/bin/bash
# End-to-end test of the skytools3-walmgr Debian package, driven as an operator would:
# install dist/skytools3-walmgr_*.deb, check the program, its manual page and the sample
# configurations; then, as user postgres, archive a private PostgreSQL cluster with the
# installed /usr/bin/walmgr (setup with ALTER SYSTEM and a restart, a little load,
# pg_switch_wal, the segment and its .meta in the store), take a base backup, list and
# verify it from the slave ini, lay it out as a standby that replays the store, boot
# (promote) it, stop archiving on the master; finally purge the package and check that
# its files are gone.
#
# Needs root and PostgreSQL 15's server binaries (/usr/lib/postgresql/15/bin, package
# postgresql-15; `make deps` installs it). The clusters are private: initdb into a
# temporary directory, Unix sockets in that directory only (listen_addresses = ''), so
# the system's PostgreSQL is not touched. Both are stopped and the directory removed on
# exit, and the package is purged.
#
# The last line is `deb-walmgr: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

PKG=skytools3-walmgr
WALMGR=/usr/bin/walmgr
EXAMPLES=/usr/share/doc/$PKG/examples
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
# Only the names of the Unix sockets (no TCP): any value is free.
PORT=${PORT:-55441}
SPORT=$((PORT + 1))

installed=0
tmp=
finished=0

CHECKS_NAME="deb-walmgr"
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lib.sh
. tests/e2e/lib.sh
# q PORT SQL: one value from a private cluster; wm LABEL COMMAND...: as postgres.
q() { pq "$@"; }
wm() { pg_run "$@"; }

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    set +e
    if [ $finished = 0 ]; then
        say "cleaning up after an early exit"
        if [ -n "$tmp" ]; then
            for p in master.log standby.log; do
                [ -f "$tmp/$p" ] && { echo "  $p:"; tail -20 "$tmp/$p" | sed 's/^/    /'; }
            done
        fi
    fi
    if [ -n "$tmp" ]; then
        pg_stop "$tmp/standby"
        pg_stop "$tmp/master"
    fi
    if [ $installed = 1 ] && installed_pkg $PKG; then
        apt-get purge -y -q $PKG >/dev/null 2>&1
    fi
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deb-walmgr: must run as root (it installs packages)" >&2; exit 1; }
deb=$(deb_for "$PKG") || exit 1
deb=./$deb
say "testing $deb"
[ -x "$PGBIN/initdb" ] || abort "no $PGBIN/initdb (install postgresql-15, or run \`make deps\`)"
getent passwd postgres >/dev/null || abort "no user postgres"

tmp=$(mktemp -d /tmp/hk-deb-wal-e2e.XXXXXX)
chmod 755 "$tmp"
chown postgres: "$tmp"

# ---- install -------------------------------------------------------------------------
install_fresh $PKG "$deb" $WALMGR
version=$(dpkg-query -W -f='${Version}' $PKG)
check "$WALMGR belongs to $PKG" sh -c "dpkg -S $WALMGR | grep -q '^$PKG: '"
check "walmgr --version reports $version" sh -c "$WALMGR --version | grep -qF -- '$version'"
$WALMGR --help >"$tmp/help.out" 2>&1
st=$?
check "walmgr --help returns 0" test $st = 0
for c in setup backup restore listbackups verify pause continue boot; do
    check "walmgr --help mentions $c" grep -qw -- "$c" "$tmp/help.out"
done
$WALMGR >/dev/null 2>"$tmp/noargs.err"
st=$?
check "walmgr without arguments fails (exit $st) with a message" \
    sh -c "[ $st != 0 ] && [ -s '$tmp/noargs.err' ]"
check "man -w walmgr finds the manual page" \
    sh -c "[ \"\$(man -w walmgr)\" = /usr/share/man/man1/walmgr.1.gz ]"
check "the manual page renders without warnings" \
    sh -c "[ -z \"\$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=w walmgr 2>&1 >/dev/null)\" ]"
for f in wal-master.ini wal-slave.ini; do
    check "example $f installed" test -f $EXAMPLES/$f
done
check "no init script, unit or conffile (walmgr is not a daemon)" \
    sh -c "[ ! -e /etc/init.d/walmgr ] && [ -z \"\$(dpkg-query -W -f='\${Conffiles}' $PKG)\" ]"

# The sample slave ini is accepted as it is, once its paths point into the test
# directory: `setup` on a slave ini only creates the store's directories.
sed -e "s|^slave = .*|slave = $tmp/sample-store|" \
    -e "s|^slave_data = .*|slave_data = $tmp/sample-data|" \
    -e "s|^logfile = .*|logfile = $tmp/sample.log|" \
    $EXAMPLES/wal-slave.ini >"$tmp/sample-slave.ini"
chown postgres: "$tmp/sample-slave.ini"
if wm sample-setup $WALMGR "$tmp/sample-slave.ini" setup; then
    ok "walmgr <sample wal-slave.ini> setup returns 0"
else
    nok "walmgr <sample wal-slave.ini> setup returns 0"
    show_err sample-setup
fi
check "it created the store's directories" \
    sh -c "[ -d $tmp/sample-store/logs.complete ] && [ -d $tmp/sample-store/data.master ]"
# The sample master ini parses too: a typo'd key is rejected, naming the key.
sed -e "s|^master_data = .*|master_data = $tmp/master|" \
    -e "s|^logfile = .*|logfile = $tmp/sample.log|" \
    $EXAMPLES/wal-master.ini >"$tmp/sample-master.ini"
printf 'compresion = gzip\n' >>"$tmp/sample-master.ini"
chown postgres: "$tmp/sample-master.ini"
wm sample-typo $WALMGR "$tmp/sample-master.ini" listbackups
st=$?
check "a typo'd key in the sample master ini is an error naming it (exit $st)" \
    sh -c "[ $st = 3 ] && grep -q compresion '$tmp/sample-typo.err'"

# ---- a private cluster archived by walmgr ------------------------------------------------
say "a private PostgreSQL cluster in $tmp"
STORE=$tmp/store
MASTER=$tmp/master
STANDBY=$tmp/standby
if as_pg "$PGBIN/initdb" -D "$MASTER" -A trust -U postgres >"$tmp/initdb.log" 2>&1; then
    ok "initdb $MASTER"
else
    cat "$tmp/initdb.log"
    abort "initdb $MASTER"
fi
cat >>"$MASTER/postgresql.conf" <<EOF
# tests/e2e/deb-walmgr.sh: Unix socket only, in the test directory
port = $PORT
listen_addresses = ''
unix_socket_directories = '$tmp'
wal_level = replica
EOF
if as_pg "$PGBIN/pg_ctl" -D "$MASTER" -l "$tmp/master.log" -w start >/dev/null 2>&1; then
    ok "master started (socket $tmp/.s.PGSQL.$PORT)"
else
    cat "$tmp/master.log"
    abort "start the master"
fi

cat >"$tmp/master.ini" <<EOF
# Written by tests/e2e/deb-walmgr.sh
[wal-master]
job_name = wal-master-e2e
logfile = $tmp/walmgr-master.log
master_db = host=$tmp port=$PORT user=postgres dbname=postgres
master_data = $MASTER
master_bin = $PGBIN
master_restart_cmd = $PGBIN/pg_ctl -D $MASTER -l $tmp/master.log -m fast -w restart
setup_method = alter_system
slave = $STORE
EOF
cat >"$tmp/slave.ini" <<EOF
# Written by tests/e2e/deb-walmgr.sh
[wal-slave]
job_name = wal-slave-e2e
logfile = $tmp/walmgr-slave.log
slave = $STORE
slave_data = $STANDBY
slave_bin = $PGBIN
keep_backups = 2
EOF
chown postgres: "$tmp/master.ini" "$tmp/slave.ini"

# ---- setup -------------------------------------------------------------------------------
pid_before=$(head -1 "$MASTER/postmaster.pid" 2>/dev/null)
if wm setup $WALMGR "$tmp/master.ini" setup; then
    ok "walmgr master.ini setup returns 0"
else
    nok "walmgr master.ini setup returns 0"
    show_err setup
fi
wait_for 30 q "$PORT" 'select 1' >/dev/null 2>&1 || abort "the master does not answer after setup"
pid_after=$(head -1 "$MASTER/postmaster.pid" 2>/dev/null)
check "setup restarted the master (archive_mode changed)" \
    sh -c "[ -n '$pid_after' ] && [ '$pid_after' != '$pid_before' ]"
check "archive_mode is on" test "$(q "$PORT" 'show archive_mode')" = on
ac=$(q "$PORT" 'show archive_command' 2>/dev/null)
check "archive_command is '$WALMGR $tmp/master.ini xarchive %p %f' ($ac)" \
    test "$ac" = "$WALMGR $tmp/master.ini xarchive %p %f"
check "setup wrote it with ALTER SYSTEM (postgresql.auto.conf)" \
    grep -q "^archive_command = .*xarchive" "$MASTER/postgresql.auto.conf"
check "setup created the store's directories" \
    sh -c "[ -d $STORE/logs.complete ] && [ -d $STORE/data.master ] && [ -d $STORE/logs.partial ]"

# ---- a segment is archived ---------------------------------------------------------------
seg=$(q "$PORT" "create table t (i int, s text);
               insert into t select g, md5(g::text) from generate_series(1, 20000) g;
               select pg_walfile_name(pg_current_wal_lsn())" 2>"$tmp/load.err" | tail -1)
if [[ $seg =~ ^[0-9A-F]{24}$ ]]; then
    ok "a little load, in segment $seg"
else
    cat "$tmp/load.err"
    abort "a little load (no segment name: '$seg')"
fi
q "$PORT" 'select pg_switch_wal()' >/dev/null
stored() { [ -f "$STORE/logs.complete/$seg.meta" ]; }
if wait_for 30 stored; then
    ok "$seg.meta in completed_wals within 30 s"
else
    nok "$seg.meta in completed_wals within 30 s"
    find "$STORE/logs.complete" -maxdepth 1 | head
    grep -i walmgr "$tmp/master.log" | tail -5
fi
meta=$STORE/logs.complete/$seg.meta
# The stored data file: uncompressed by default.
check "the segment $seg is stored beside it, 16 MiB" \
    sh -c "[ \"\$(stat -c %s $STORE/logs.complete/$seg 2>/dev/null)\" = 16777216 ]"
field() { grep -o "\"$1\": *\"[^\"]*\"" "$meta" 2>/dev/null | head -1 | sed 's/.*: *"//; s/"$//'; }
check "the .meta names the segment" test "$(field name)" = "$seg"
check "the .meta's sha256 is the stored file's" \
    test "$(field sha256)" = "$(sha256sum "$STORE/logs.complete/$seg" 2>/dev/null | cut -d' ' -f1)"
check "the .meta has size 16777216" grep -q '"size": *16777216' "$meta"
check "the store's files belong to postgres" \
    sh -c "[ \"\$(stat -c %U $meta)\" = postgres ]"
check "no temporary file left in completed_wals" \
    sh -c "! ls -A $STORE/logs.complete | grep -q '^\\.tmp-'"
check "pg_stat_archiver: no failure" \
    test "$(q "$PORT" 'select failed_count from pg_stat_archiver')" = 0
# Archiving the same segment again (PostgreSQL does after a crash) succeeds.
cp "$STORE/logs.complete/$seg" "$tmp/again"
chown postgres: "$tmp/again"
wm again $WALMGR "$tmp/master.ini" xarchive "$tmp/again" "$seg"
check "xarchive of identical contents again returns 0" test $? = 0
printf 'x' | dd of="$tmp/again" bs=1 seek=100 conv=notrunc status=none
wm differ $WALMGR "$tmp/master.ini" xarchive "$tmp/again" "$seg"
st=$?
check "xarchive of different contents under the same name fails (exit $st)" test $st = 5
check "... saying it is not overwritten" grep -qi "not overwritten" "$tmp/differ.err"
check "... and the stored segment is unchanged" \
    test "$(field sha256)" = "$(sha256sum "$STORE/logs.complete/$seg" | cut -d' ' -f1)"

# ---- a base backup ------------------------------------------------------------------------
if wm backup $WALMGR "$tmp/master.ini" backup; then
    ok "walmgr master.ini backup returns 0"
else
    nok "walmgr master.ini backup returns 0"
    show_err backup
fi
set_=$(find "$STORE/data.master" -mindepth 1 -maxdepth 1 -type d -name '2*' -printf '%f\n' | sort | tail -1)
check "a backup set in full_backup ($set_)" test -n "$set_"
check "the set holds base.tar, backup_label and backup.json" \
    sh -c "[ -f $STORE/data.master/$set_/base.tar ] && [ -f $STORE/data.master/$set_/backup_label ] && [ -f $STORE/data.master/$set_/backup.json ]"
check "backup_label names a START WAL LOCATION" grep -q '^START WAL LOCATION' "$STORE/data.master/$set_/backup_label"
check "base.tar has PG_VERSION and no postmaster.pid" \
    sh -c "tar -tf $STORE/data.master/$set_/base.tar >$tmp/tar.list &&
           grep -qE '^(\./)?PG_VERSION\$' $tmp/tar.list && ! grep -q postmaster.pid $tmp/tar.list"
check "no staging directory left" sh -c "! ls -A $STORE/data.master | grep -q '^\\.tmp-'"
# pg_backup_stop ran (or the session ended): no other client session is left.
no_session() {
    [ "$(q "$PORT" "select count(*) from pg_stat_activity
                  where backend_type = 'client backend' and pid <> pg_backend_pid()")" = 0 ]
}
check "walmgr's backup session is gone" wait_for 10 no_session

# ---- listbackups and verify from the slave ini -------------------------------------------------
if wm listbackups $WALMGR "$tmp/slave.ini" listbackups; then
    ok "walmgr slave.ini listbackups returns 0"
else
    nok "walmgr slave.ini listbackups returns 0"
    show_err listbackups
fi
check "listbackups lists $set_" grep -qF -- "$set_" "$tmp/listbackups.out"
if wm verify $WALMGR "$tmp/slave.ini" verify; then
    ok "walmgr slave.ini verify returns 0"
else
    nok "walmgr slave.ini verify returns 0"
    sed 's/^/    /' "$tmp/verify.out" | head
    show_err verify
fi
# A damaged stored segment is found.
last=$(find "$STORE/logs.complete" -name '*.meta' -printf '%f\n' | grep -E '^[0-9A-F]{24}\.meta$' | sort | tail -1)
last=${last%.meta}
if [ -n "$last" ]; then
    cp -p "$STORE/logs.complete/$last" "$tmp/saved"
    printf 'x' | dd of="$STORE/logs.complete/$last" bs=1 seek=8200 conv=notrunc status=none
    wm verify-bad $WALMGR "$tmp/slave.ini" verify
    st=$?
    check "verify finds the damaged $last (exit $st)" \
        sh -c "[ $st = 12 ] && cat $tmp/verify-bad.out $tmp/verify-bad.err | grep -q $last"
    cp -p "$tmp/saved" "$STORE/logs.complete/$last"
    check "verify is clean again once repaired" wm verify-again $WALMGR "$tmp/slave.ini" verify
fi

# ---- a standby from the backup ------------------------------------------------------------
# More data after the backup, archived with zstd from now on (xarchive reads the ini each
# time): the standby must get it from the store and decompress it.
printf 'compression = zstd\n' >>"$tmp/master.ini"
# (Two statements: in one -c they would be one transaction, committed after the switch.)
q "$PORT" "insert into t select g, 'after' from generate_series(1, 1000) g" >/dev/null
zseg=$(q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
q "$PORT" "select pg_switch_wal()" >/dev/null
after=$(q "$PORT" "select count(*) from t")
zstored() { [ -f "$STORE/logs.complete/$zseg.meta" ]; }
check "$zseg stored within 30 s" wait_for 30 zstored
check "$zseg stored as $zseg.zst, its .meta says zstd" \
    sh -c "[ -f $STORE/logs.complete/$zseg.zst ] && grep -q '\"compression\": *\"zstd\"' $STORE/logs.complete/$zseg.meta"
check "$zseg.zst decompresses to 16 MiB" \
    sh -c "[ \"\$(zstd -dc $STORE/logs.complete/$zseg.zst 2>/dev/null | wc -c)\" = 16777216 ] || ! command -v zstd >/dev/null"
if wm restore $WALMGR "$tmp/slave.ini" restore; then
    ok "walmgr slave.ini restore returns 0"
else
    nok "walmgr slave.ini restore returns 0"
    show_err restore
fi
check "restore wrote standby.signal" test -f "$STANDBY/standby.signal"
check "restore wrote a restore_command with xrestore" \
    grep -q "^restore_command = .*$WALMGR .*xrestore" "$STANDBY/postgresql.auto.conf"
check "restore turned archive_mode off (the master's archive_command must not run there)" \
    grep -qx "archive_mode = 'off'" "$STANDBY/postgresql.auto.conf"
check "restore created an empty pg_wal" \
    sh -c "[ -d $STANDBY/pg_wal ] && [ -z \"\$(ls $STANDBY/pg_wal | grep -v archive_status)\" ]"
check "restore left no tablespace_map or postmaster.pid" \
    sh -c "[ ! -e $STANDBY/tablespace_map ] && [ ! -e $STANDBY/postmaster.pid ]"
# Its own socket (postgresql.conf is the master's copy).
if as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -l "$tmp/standby.log" \
    -o "-p $SPORT -c hot_standby=on" -w -t 60 start >/dev/null 2>&1; then
    ok "standby started"
else
    nok "standby started"
    tail -20 "$tmp/standby.log"
fi
check "the standby is in recovery" test "$(q "$SPORT" 'select pg_is_in_recovery()')" = t
caught_up() { [ "$(q "$SPORT" 'select count(*) from t' 2>/dev/null)" = "$after" ]; }
check "the standby replayed the store up to the rows added after the backup ($after)" \
    wait_for 60 caught_up

# pause holds replay at the next segment, continue lets it go on.
if wm pause $WALMGR "$tmp/slave.ini" pause; then ok "walmgr slave.ini pause returns 0"; else nok "walmgr slave.ini pause returns 0"; show_err pause; fi
check "walmgr.PAUSE in the standby's data directory" test -e "$STANDBY/walmgr.PAUSE"
q "$PORT" "insert into t select g, 'paused' from generate_series(1, 500) g" >/dev/null
pseg=$(q "$PORT" "select pg_walfile_name(pg_current_wal_lsn())")
q "$PORT" "select pg_switch_wal()" >/dev/null
pstored() { [ -f "$STORE/logs.complete/$pseg.meta" ]; }
check "$pseg stored while paused" wait_for 30 pstored
sleep 3 # three standby_wait polls
check "the paused standby did not replay $pseg" test "$(q "$SPORT" 'select count(*) from t')" = "$after"
if wm continue $WALMGR "$tmp/slave.ini" continue; then ok "walmgr slave.ini continue returns 0"; else nok "walmgr slave.ini continue returns 0"; show_err continue; fi
check "walmgr.PAUSE removed" test ! -e "$STANDBY/walmgr.PAUSE"
after=$((after + 500))
check "after continue the standby replayed $pseg ($after rows)" wait_for 30 caught_up
if wm boot $WALMGR "$tmp/slave.ini" boot; then ok "walmgr slave.ini boot returns 0"; else nok "walmgr slave.ini boot returns 0"; show_err boot; fi
check "walmgr.STOP in the standby's data directory" test -e "$STANDBY/walmgr.STOP"
promoted() { [ "$(q "$SPORT" 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; }
check "the standby was promoted within 60 s" wait_for 60 promoted
check "the promoted server has every row ($after)" \
    test "$(q "$SPORT" 'select count(*) from t')" = "$after"
pg_stop "$STANDBY"

# ---- cleanup -----------------------------------------------------------------------------
# An interrupted write (a dead writer's temporary file) and a file without .meta.
junk=$STORE/logs.complete/.tmp-000000010000000000000099.999999.0
touch "$junk" "$STORE/logs.complete/000000010000000000000098"
chown postgres: "$junk" "$STORE/logs.complete/000000010000000000000098"
wm cleanup-n $WALMGR -n "$tmp/slave.ini" cleanup
st=$?
check "walmgr -n slave.ini cleanup returns 0 and removes nothing (exit $st)" \
    sh -c "[ $st = 0 ] && [ -e $junk ] && [ -e $STORE/logs.complete/000000010000000000000098 ]"
if wm cleanup $WALMGR "$tmp/slave.ini" cleanup; then
    ok "walmgr slave.ini cleanup returns 0"
else
    nok "walmgr slave.ini cleanup returns 0"
    show_err cleanup
fi
check "cleanup removed the stale temporary file" sh -c "[ ! -e $junk ]"
# A file without .meta may be a Skytools archive taken over: kept, and listed by verify.
check "cleanup kept the file without .meta" test -e "$STORE/logs.complete/000000010000000000000098"
check "verify lists the file without .meta" \
    sh -c "runuser -u postgres -- $WALMGR $tmp/slave.ini verify 2>&1 | grep -q 'without .meta'"
rm -f "$STORE/logs.complete/000000010000000000000098"
check "cleanup kept the newest segment $pseg" \
    test -f "$STORE/logs.complete/$pseg.meta"

# ---- stop ------------------------------------------------------------------------------
if wm stop $WALMGR "$tmp/master.ini" stop; then
    ok "walmgr master.ini stop returns 0"
else
    nok "walmgr master.ini stop returns 0"
    show_err stop
fi
wait_for 30 q "$PORT" 'select 1' >/dev/null 2>&1
# (SHOW says "(disabled)" while archive_mode is off: read what stop wrote.)
check "archive_command is /bin/true after stop" \
    grep -qx "archive_command = '/bin/true'" "$MASTER/postgresql.auto.conf"
check "archive_mode is off after stop (master_restart_cmd set)" test "$(q "$PORT" 'show archive_mode')" = off
wm unsupported $WALMGR "$tmp/master.ini" syncdaemon
st=$?
check "syncdaemon is refused (exit $st), pointing at streaming replication" \
    sh -c "[ $st = 1 ] && grep 'not supported' '$tmp/unsupported.err' | grep -q primary_conninfo"
pg_stop "$MASTER"

# ---- purge -------------------------------------------------------------------------------
say "purging"
if apt-get purge -y -q $PKG >"$tmp/apt-purge.log" 2>&1; then
    ok "apt-get purge $PKG"
    installed=0
else
    cat "$tmp/apt-purge.log"
    nok "apt-get purge $PKG"
fi
check "$WALMGR removed" test ! -e $WALMGR
check "manual page removed" test ! -e /usr/share/man/man1/walmgr.1.gz
check "/usr/share/doc/$PKG removed" test ! -e /usr/share/doc/$PKG
check "package fully gone from dpkg" \
    sh -c "! dpkg-query -W -f='\${Status}\n' $PKG 2>/dev/null | grep -qE ' (installed|config-files)\$'"

finished=1
