#!/bin/bash
# End-to-end test of the pacha Debian package, driven as an operator would: install
# dist/pacha_*.deb (its own apt Post-Invoke hook then records /etc with the default
# configuration), check the program, manual page, conffiles and the private state
# directory; track a directory with a configuration of its own, commit, edit, roll
# back; drive the init script (disabled by default; start, status, an in-place edit the
# daemon commits, stop); install and remove a tiny package with apt and read the
# "Package changes:" commits; finally purge and check its files are gone.
#
# The last line is `deb-pacha: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

PKG=pacha
PACHA=/usr/bin/pacha
CONF=/etc/pacha/pacha.ini
STATE=/var/lib/pacha
TESTPKG=pacha-e2e-test

installed=0
tmp=

CHECKS_NAME="deb-pacha"
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
# shellcheck source=tests/e2e/lib.sh
. tests/e2e/lib.sh

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -x /etc/init.d/pacha ] && /etc/init.d/pacha stop >/dev/null 2>&1
    installed_pkg $TESTPKG && dpkg --purge $TESTPKG >/dev/null 2>&1
    if [ $installed = 1 ]; then
        installed_pkg $PKG && apt-get purge -y -q $PKG >/dev/null 2>&1
        # The history the package's hook made of this host's /etc (kept by a purge).
        rm -rf $STATE
    fi
    put_back
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deb-pacha: must run as root (it installs packages)" >&2; exit 1; }
deb=$(deb_for "$PKG") || exit 1
deb=./$deb
say "testing $deb"
tmp=$(mktemp -d /tmp/hk-deb-pacha-e2e.XXXXXX)
# A purge keeps (and names) pacha's history; an earlier one's is set aside for this run
# and put back afterwards.
if [ -e $STATE ] && ! installed_pkg $PKG; then
    say "$STATE exists without the package (a purge kept it): set aside for this run"
    set_aside $STATE
fi

# ---- install -------------------------------------------------------------------------
install_fresh $PKG "$deb" $PACHA
installed=1
version=$(dpkg-query -W -f='${Version}' $PKG)
check "$PACHA belongs to $PKG" sh -c "dpkg -S $PACHA | grep -q '^$PKG: '"
check "pacha --version reports $version" sh -c "$PACHA --version | grep -qF -- '${version%%-*}'"
check "man -w pacha finds the manual page" \
    sh -c "[ \"\$(man -w pacha)\" = /usr/share/man/man1/pacha.1.gz ]"
check "the manual page renders without warnings" \
    sh -c "[ -z \"\$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=w pacha 2>&1 >/dev/null)\" ]"
for f in $CONF /etc/apt/apt.conf.d/05pacha /etc/default/pacha /etc/init.d/pacha; do
    check "$f is a conffile" sh -c "dpkg-query -W -f='\${Conffiles}' $PKG | grep -q ' $f '"
done
check "the daemon is disabled by default" grep -qx 'ENABLED=no' /etc/default/pacha
check "$STATE is 0700" sh -c "[ \"\$(stat -c %a $STATE)\" = 700 ]"
# apt reads its configuration when it starts: the hooks are in force from the next run.
check "apt sees the Pre-Invoke hook" sh -c "apt-config dump | grep -q 'DPkg::Pre-Invoke.*pacha apt-pre'"
check "apt sees the Post-Invoke hook" sh -c "apt-config dump | grep -q 'DPkg::Post-Invoke.*pacha apt-post'"

# ---- a tree of its own -----------------------------------------------------------------
mkdir -p "$tmp/tree/sub" "$tmp/tree/empty"
echo one >"$tmp/tree/sub/file.conf"
chmod 4750 "$tmp/tree/sub/file.conf"
cat >"$tmp/pacha.ini" <<INI
[pacha]
state_dir = $tmp/state
host = e2e
log = $tmp/daemon.log
debounce = 0.05
INI
P() { $PACHA -c "$tmp/pacha.ini" "$@"; }
check "track" sh -c "$PACHA -c '$tmp/pacha.ini' track '$tmp/tree' | grep -q tracking"
check "commit" sh -c "$PACHA -c '$tmp/pacha.ini' commit -m first | grep -q committed"
first=$(P log | awk 'NR==1 {print $1}')
check "status is clean after the commit" sh -c "[ -z \"\$($PACHA -c '$tmp/pacha.ini' status)\" ]"
echo two >>"$tmp/tree/sub/file.conf"
chmod 0640 "$tmp/tree/sub/file.conf"
check "status sees the edit" sh -c "$PACHA -c '$tmp/pacha.ini' status | grep -q 'modified: $tmp/tree/sub/file.conf'"
P commit -m second >/dev/null
check "log has both commits" sh -c "[ \"\$($PACHA -c '$tmp/pacha.ini' log | wc -l)\" = 2 ]"
P rollback "$tmp/tree" --to "$first" >/dev/null 2>"$tmp/rollback.err"
check "rollback restores the content" sh -c "[ \"\$(cat '$tmp/tree/sub/file.conf')\" = one ]"
check "rollback restores the setuid mode" sh -c "[ \"\$(stat -c %a '$tmp/tree/sub/file.conf')\" = 4750 ]"
P diff nosuchrev >/dev/null 2>"$tmp/diff.err"
st=$?
check "an unknown revision exits 4 (exit $st) with one line" \
    sh -c "[ $st = 4 ] && [ \"\$(wc -l <'$tmp/diff.err')\" = 1 ] && grep -q '^pacha: unknown revision' '$tmp/diff.err'"

# ---- init script -----------------------------------------------------------------------
/etc/init.d/pacha start >"$tmp/start0.log" 2>&1
check "start while disabled does nothing" sh -c "grep -q disabled '$tmp/start0.log' && [ ! -e /var/run/pacha.pid ]"
cp /etc/default/pacha "$tmp/default.orig"
printf 'ENABLED=yes\nPACHA_OPTS="--config %s"\n' "$tmp/pacha.ini" >/etc/default/pacha
check "init script start" /etc/init.d/pacha start
check "init script status" /etc/init.d/pacha status
n=$(P log | wc -l)
echo three >>"$tmp/tree/sub/file.conf"
committed=no
for _ in $(seq 1 50); do
    if [ "$(P log | wc -l)" -gt "$n" ]; then committed=yes; break; fi
    sleep 0.2
done
check "the daemon committed an in-place edit" test $committed = yes
check "... naming the file" sh -c "$PACHA -c '$tmp/pacha.ini' log | head -1 | grep -q 'sub/file.conf'"
check "init script stop" /etc/init.d/pacha stop
/etc/init.d/pacha status >/dev/null 2>&1
st=$?
check "status after stop is not running (exit $st)" test $st = 3
cp "$tmp/default.orig" /etc/default/pacha

# ---- the apt hook, with the default configuration (/etc) --------------------------------
mkdir -p "$tmp/deb/DEBIAN" "$tmp/deb/etc/$TESTPKG"
echo "shipped" >"$tmp/deb/etc/$TESTPKG/test.conf"
printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: hostkit <root@localhost>\nDescription: pacha e2e test package\n' \
    $TESTPKG >"$tmp/deb/DEBIAN/control"
dpkg-deb --build --root-owner-group "$tmp/deb" "$tmp/$TESTPKG.deb" >/dev/null
apt-get install -y -q "$tmp/$TESTPKG.deb" >"$tmp/apt-test.log" 2>&1
check "apt-get install of a test package" installed_pkg $TESTPKG
check "the hook committed it with the package changes" \
    sh -c "git --git-dir=$STATE/repo.git log -1 --format=%B | grep -qx '+$TESTPKG 1.0'"
check "... and its file" sh -c "git --git-dir=$STATE/repo.git show --name-only --format= HEAD | grep -qx etc/$TESTPKG/test.conf"
check "the first apt run recorded /etc with the default configuration" \
    sh -c "git --git-dir=$STATE/repo.git ls-files | grep -qx etc/passwd && $PACHA log | grep -q 'saving uncommitted changes'"
check "the repository is 0700" sh -c "[ \"\$(stat -c %a $STATE/repo.git)\" = 700 ]"
apt-get purge -y -q $TESTPKG >>"$tmp/apt-test.log" 2>&1
check "the removal is committed too" \
    sh -c "git --git-dir=$STATE/repo.git log -1 --format=%B | grep -qx -- '-$TESTPKG 1.0'"

# ---- purge -----------------------------------------------------------------------------
say "purging"
if apt-get purge -y -q $PKG >"$tmp/purge.log" 2>&1; then
    ok "apt-get purge $PKG"
else
    cat "$tmp/purge.log"
    nok "apt-get purge $PKG"
fi
check "$PACHA is gone" test ! -e $PACHA
check "$CONF is gone" test ! -e $CONF
check "the apt hook is gone" test ! -e /etc/apt/apt.conf.d/05pacha
rm -rf $STATE
installed=0
exit 0
