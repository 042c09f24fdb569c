#!/bin/bash
# End-to-end test of the calink Debian package, driven as an operator would: install
# dist/calink_*.deb, check the program, its manual page and its conffile; run it with the
# installed default configuration (/etc/calink/calink.ini) into a temporary directory
# and read the archive back (manifest, JSON, commands log, files); a dry run writes
# nothing; an --obfuscate run leaves no trace of the host's name; a read-only output
# directory is one line and exit 1; finally purge the package and check that its files
# (the conffile included) are gone.
#
# The last line is `deb-calink: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

PKG=calink
CALINK=/usr/bin/calink
CONF=/etc/calink/calink.ini

installed=0
tmp=

CHECKS_NAME="deb-calink"
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh


cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ $installed = 1 ] && installed_pkg $PKG; then
        apt-get purge -y -q $PKG >/dev/null 2>&1
    fi
    [ -n "$tmp" ] && rm -rf "$tmp"
    finish_checks "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- preconditions -------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "deb-calink: must run as root (it installs packages)" >&2; exit 1; }
deb=$(deb_for "$PKG") || exit 1
deb=./$deb
say "testing $deb"
tmp=$(mktemp -d /tmp/hk-deb-calink-e2e.XXXXXX)

# ---- install -------------------------------------------------------------------------
install_fresh $PKG "$deb" $CALINK
version=$(dpkg-query -W -f='${Version}' $PKG)
check "$CALINK belongs to $PKG" sh -c "dpkg -S $CALINK | grep -q '^$PKG: '"
check "calink --version reports $version" sh -c "$CALINK --version | grep -qF -- '${version%%-*}'"
check "man -w calink finds the manual page" \
    sh -c "[ \"\$(man -w calink)\" = /usr/share/man/man1/calink.1.gz ]"
check "the manual page renders without warnings" \
    sh -c "[ -z \"\$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings=w calink 2>&1 >/dev/null)\" ]"
check "$CONF is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' $PKG | grep -q ' $CONF '"

# ---- a default run ---------------------------------------------------------------------
mkdir "$tmp/out"
(cd "$tmp" && $CALINK -o "$tmp/out" >"$tmp/run.out" 2>"$tmp/run.err")
st=$?
check "a run with the default configuration exits 0 or 3 (exit $st)" sh -c "[ $st = 0 ] || [ $st = 3 ]"
[ -s "$tmp/run.err" ] && sed 's/^/    stderr: /' "$tmp/run.err" | tail -5
archive=$(cat "$tmp/run.out")
check "stdout names the archive ($archive)" test -f "$archive"
check "the archive is in the output directory, nothing else is" \
    sh -c "[ \"\$(ls -A '$tmp/out')\" = \"\$(basename '$archive')\" ]"
tar -tzf "$archive" >"$tmp/list" 2>/dev/null
check "the archive lists" test -s "$tmp/list"
top=$(basename "$archive" .tar.gz)
for m in manifest.json calink.log "$top.json" "$top-commands.log" files/etc/os-release; do
    check "the archive holds $top/$m" grep -qxF "$top/$m" "$tmp/list"
done
tar -xzf "$archive" -C "$tmp" 2>/dev/null
check "/etc/os-release is stored byte-identical" cmp -s /etc/os-release "$tmp/$top/files/etc/os-release"
check "the manifest is calink's" grep -q '"program": "calink"' "$tmp/$top/manifest.json"
check "the JSON has the loadavg item" grep -q '"last_pid"' "$tmp/$top/$top.json"
check "the commands log has dpkg -l" grep -qx 'command: dpkg -l' "$tmp/$top/$top-commands.log"
check "the commands log has the exit codes" grep -qx 'exit code: 0' "$tmp/$top/$top-commands.log"

# ---- dry run ---------------------------------------------------------------------------
mkdir "$tmp/dry"
$CALINK --dry-run -o "$tmp/dry" >"$tmp/dry.out" 2>&1
st=$?
check "--dry-run exits 0" test $st = 0
check "--dry-run lists /etc/os-release" grep -q '^file /etc/os-release' "$tmp/dry.out"
check "--dry-run writes nothing" sh -c "[ -z \"\$(ls -A '$tmp/dry')\" ]"

# ---- obfuscation -----------------------------------------------------------------------
mkdir "$tmp/obf"
$CALINK --obfuscate --obfuscation-map "$tmp/map/obfuscation.json" -o "$tmp/obf" >"$tmp/obf.out" 2>"$tmp/obf.err"
st=$?
check "--obfuscate exits 0 or 3 (exit $st)" sh -c "[ $st = 0 ] || [ $st = 3 ]"
[ -s "$tmp/obf.err" ] && sed 's/^/    stderr: /' "$tmp/obf.err" | tail -5
obf=$(cat "$tmp/obf.out")
host=$(hostname)
check "the obfuscated archive never names $host" \
    sh -c "[ -f '$obf' ] && ! gzip -dc '$obf' | grep -qiw -- '$host' && ! echo '$obf' | grep -qiw -- '$host'"
check "the obfuscation map is 0600" sh -c "[ \"\$(stat -c %a '$tmp/map/obfuscation.json')\" = 600 ]"

# ---- errors ----------------------------------------------------------------------------
$CALINK -o /proc >/dev/null 2>"$tmp/ro.err"
st=$?
check "an unwritable output directory exits 1 (exit $st)" test $st = 1
check "... with one line naming it" sh -c "[ \"\$(wc -l <'$tmp/ro.err')\" = 1 ] && grep -q '^calink: .*/proc' '$tmp/ro.err'"

# ---- purge -----------------------------------------------------------------------------
say "purging"
if apt-get purge -y -q $PKG >"$tmp/purge.log" 2>&1; then
    ok "apt-get purge $PKG"
else
    cat "$tmp/purge.log"
    nok "apt-get purge $PKG"
fi
installed=0
check "$CALINK is gone" test ! -e $CALINK
check "$CONF is gone" test ! -e $CONF
exit 0
