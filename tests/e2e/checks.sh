# Counted checks shared by the package end-to-end scripts (sourced, not run).
# The sourcing script sets CHECKS_NAME (the prefix of its lines) before sourcing, and
# reports "$CHECKS_NAME: $pass passed, $fail failed" at the end, which CI reads.
pass=0
fail=0

say() { echo "$CHECKS_NAME: $*"; }
ok() { pass=$((pass + 1)); echo "  ok   $*"; }
nok() { fail=$((fail + 1)); echo "  FAIL $*"; }
# check DESCRIPTION COMMAND...: one counted check.
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else nok "$what"; fi
}
# deb_for PACKAGE: print the one dist/PACKAGE_*_<arch>.deb `make deb` built; exit with a
# clear line when there is none or several (use as: deb=$(deb_for pkg) || exit 1).
deb_for() {
    local arch d
    arch=$(dpkg --print-architecture)
    d=(dist/"$1"_*_"$arch".deb)
    if [ ! -f "${d[0]}" ]; then
        echo "$CHECKS_NAME: error: no dist/$1_*_$arch.deb; run \`make deb\` first" >&2
        exit 1
    fi
    [ ${#d[@]} = 1 ] || { echo "$CHECKS_NAME: error: several debs: ${d[*]}" >&2; exit 1; }
    echo "${d[0]}"
}
# installed_pkg PACKAGE: installed, or removed with its conffiles left.
installed_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed\|config-files'; }
# as_pg COMMAND...: run as postgres in the script's $tmp (root's cwd may be unreadable).
as_pg() { (cd "$tmp" && runuser -u postgres -- "$@"); }
# install_fresh PACKAGE DEB PATH: purge what an earlier run left of PACKAGE, refuse a PATH
# (its main program) that exists without belonging to it, then apt-get install DEB (its
# output in $tmp/apt-install.log, shown on failure). Sets installed=1 for the cleanup.
install_fresh() {
    local pkg=$1 deb=$2 path=$3
    if installed_pkg "$pkg"; then
        say "$pkg is already installed (left over from an earlier run?): purging it first"
        apt-get purge -y -q "$pkg" >/dev/null 2>&1 || abort "purge the previously installed $pkg"
    fi
    [ -e "$path" ] && abort "$path exists but does not belong to $pkg ($(dpkg -S "$path" 2>&1))"
    say "installing"
    installed=1
    if apt-get install -y -q --no-install-recommends "$deb" >"$tmp/apt-install.log" 2>&1; then
        ok "apt-get install $deb"
    else
        cat "$tmp/apt-install.log"
        abort "apt-get install $deb"
    fi
}
# abort MESSAGE: a failure that makes the remaining steps meaningless.
abort() {
    nok "$*"
    exit 1
}
# finish_checks STATUS: print the closing line CI reads and exit; a script that
# exited early before any check failed still reports a failure.
finish_checks() {
    if [ "$1" != 0 ] && [ "$fail" = 0 ]; then
        echo "$CHECKS_NAME: exited early (status $1)" >&2
        fail=1
    fi
    echo "$CHECKS_NAME: $pass passed, $fail failed"
    [ "$fail" = 0 ] || exit 1
    exit 0
}
