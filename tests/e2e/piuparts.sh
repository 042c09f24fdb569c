#!/bin/bash
# piuparts (Debian's installation, upgrade and purge tester) on every hostkit package,
# in a bookworm chroot built with debootstrap from the Debian mirror this host's apt
# uses (`make piuparts`; not part of `make check`: see README, "Debian packages").
#
# For each dist/<package>_*.deb, piuparts runs its two tests in a fresh chroot:
#   1. install the .deb (and its dependencies from the mirror), remove, purge: nothing
#      may be left behind, no file may be owned by nobody;
#   2. install the previous version from a local repository (this tree built with
#      HK_VERSION=<version>~prev), upgrade to the .deb, remove, purge.
#
# The base chroot is cached outside the repository in $PIUPARTS_CACHE (default
# /var/cache/hostkit-piuparts; delete it to rebuild), as is the previous version's
# repository. piuparts and debootstrap are installed with apt if missing (under flock
# /tmp/hk-dpkg.lock). Logs: $PIUPARTS_CACHE/logs/<package>.log.
#
# The last line is `piuparts: N passed, M failed`; the exit status is 0 only if M is 0.
set -uo pipefail
export LC_ALL=C
export DEBIAN_FRONTEND=noninteractive
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH

cd "$(dirname "$0")/../.." || exit 1

CHECKS_NAME=piuparts
# shellcheck source=tests/e2e/checks.sh
. tests/e2e/checks.sh
[ "$(id -u)" = 0 ] || { echo "piuparts: must run as root (chroots)" >&2; exit 1; }
trap 'finish_checks $?' EXIT
trap 'exit 130' INT TERM

PKGS="snf-cyclades-gtools skytools3 skytools3-ticker skytools3-walmgr calink ele-tools pacha"
CACHE=${PIUPARTS_CACHE:-/var/cache/hostkit-piuparts}
SUITE=bookworm
BASE=$CACHE/$SUITE-base.tar.gz
REPO=$CACHE/prev-repo
LOGS=$CACHE/logs

# ---- tools -----------------------------------------------------------------------------
missing=
for t in piuparts debootstrap; do command -v $t >/dev/null 2>&1 || missing="$missing $t"; done
if [ -n "$missing" ]; then
    say "installing$missing"
    # shellcheck disable=SC2086
    flock /tmp/hk-dpkg.lock apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1 ||
        abort "apt-get install$missing"
fi

# The mirror of this host's apt: the first deb.debian.org-style URI serving $SUITE.
mirror=$(
    {
        grep -hE "^deb .* $SUITE( |$)" /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }'
        for f in /etc/apt/sources.list.d/*.sources; do
            [ -f "$f" ] || continue
            awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
                { u = ""; ok = 0
                  for (i = 1; i <= NF; i++) {
                      if ($i ~ /^URIs:/) { split($i, a, " "); u = a[2] }
                      if ($i ~ /^Suites:/ && (" " $i " ") ~ (" " s " ")) ok = 1 }
                  if (ok && u != "") { print u; exit } }' "$f"
        done
    } | grep -v security | head -1
)
[ -n "$mirror" ] || abort "no $SUITE mirror in /etc/apt/sources.list*"
say "mirror $mirror ($SUITE)"

debs=()
for p in $PKGS; do
    d=$(deb_for "$p") || exit 1
    debs+=("$d")
done
cur=$(dpkg-deb -f "${debs[0]}" Version)
prev="$cur~prev"
mkdir -p "$CACHE" "$LOGS"
t_all=$(date +%s)

# ---- the base chroot -------------------------------------------------------------------
if [ ! -s "$BASE" ]; then
    say "building the base chroot with debootstrap (cached in $BASE)"
    t=$(date +%s)
    root=$(mktemp -d "$CACHE/base.XXXXXX")
    if debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$LOGS/debootstrap.log" 2>&1 &&
        tar -C "$root" -czf "$BASE.tmp" . && mv -f "$BASE.tmp" "$BASE"; then
        ok "debootstrap $SUITE from $mirror ($(($(date +%s) - t)) s)"
    else
        tail -20 "$LOGS/debootstrap.log"
        rm -rf "$root" "$BASE.tmp"
        abort "debootstrap $SUITE"
    fi
    rm -rf "$root"
fi

# ---- the previous version, as an apt repository ------------------------------------------
if [ "$(cat "$REPO/version" 2>/dev/null)" != "$prev" ] || [ "$REPO/version" -ot "${debs[0]}" ]; then
    say "building $prev into $REPO"
    rm -rf "$REPO"
    mkdir -p "$REPO"
    if DEB_BUILD_OPTIONS="nocheck noautodbgsym" DPKG_DEB_COMPRESSOR_TYPE=gzip \
        HK_VERSION=$prev HK_DIST=$REPO HK_LINT=no bash debian/build-debs.sh >"$LOGS/build-prev.log" 2>&1 &&
        (cd "$REPO" && rm -f ./*dbgsym* ./*.buildinfo ./*.changes && dpkg-scanpackages -m . >Packages 2>/dev/null) &&
        echo "$prev" >"$REPO/version"; then
        ok "$prev built"
    else
        tail -20 "$LOGS/build-prev.log"
        abort "build $prev"
    fi
fi

# ---- one piuparts run per package ------------------------------------------------------
for i in "${!debs[@]}"; do
    p=${debs[$i]#dist/}
    p=${p%%_*}
    t=$(date +%s)
    # pacha's history is kept by purge on purpose (named on stderr); piuparts' own
    # apt-get remove runs pacha's apt hook, which makes one.
    keep=()
    [ "$p" = pacha ] && keep=(--ignore-regex='^/var/lib/pacha/.*')
    # --bindmount: the repository of the previous version inside the chroot, where
    # --extra-repo names it; upgrade test: from that version to dist/'s.
    piuparts -b "$BASE" -d "$SUITE" -m "$mirror" \
        --bindmount="$REPO" --extra-repo="deb [trusted=yes] file://$REPO ./" "${keep[@]}" \
        "${debs[$i]}" >"$LOGS/$p.log" 2>&1
    st=$?
    if [ $st = 0 ] && grep -q 'PASS: All tests' "$LOGS/$p.log" &&
        grep -q 'PASS: Installation and purging test' "$LOGS/$p.log" &&
        grep -q 'PASS: Installation, upgrade and purging tests' "$LOGS/$p.log"; then
        ok "piuparts $p: install-purge and upgrade $prev -> $cur ($(($(date +%s) - t)) s)"
    else
        nok "piuparts $p (exit $st, $(($(date +%s) - t)) s; log $LOGS/$p.log)"
        grep -E '^[0-9:. ]*(FAIL|ERROR)' "$LOGS/$p.log" | head -10 | sed 's/^/    /'
    fi
done
say "total $(($(date +%s) - t_all)) s"
