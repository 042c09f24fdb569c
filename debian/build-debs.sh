#!/bin/bash
# Build every hostkit binary package into dist/ and lint it (`make deb`).
#
#   - installs the missing build tools with apt (debhelper, lintian, dpkg-dev,
#     fakeroot, build-essential), running `apt-get update` only if something is missing;
#   - needs cargo (>= 1.85, from rustup) on PATH;
#   - runs `dpkg-buildpackage -us -uc -b` (cargo builds into debian/cargo-target, never
#     into target/; the tree is cleaned again afterwards);
#   - moves the .deb (main and -dbgsym), .buildinfo and .changes files from the parent
#     directory into dist/, so the .changes stays consistent with what is next to it;
#   - runs lintian on the .debs and fails on any E: or W: tag.
#
# Environment: DEB_BUILD_OPTIONS is honoured (nocheck, parallel=N), and
#   HK_VERSION=V   build version V (e.g. 0.1.0~prev, for upgrade tests) through a
#                  temporary debian/changelog entry, restored afterwards;
#   HK_DIST=DIR    put the packages into DIR instead of dist/;
#   HK_LINT=no     skip lintian (a test build; `make deb` always lints);
#   HK_CARGO_TARGET=DIR  where cargo builds (default target/debian-cargo, kept between
#                  builds so that a second build of the same tree is quick);
#                  debian/cargo-target is a symlink to it during the build.
set -euo pipefail
export LC_ALL=C.UTF-8

say() { echo "build-debs: $*"; }
die() { echo "build-debs: error: $*" >&2; exit 1; }

cd "$(dirname "$0")/.."
top=$(pwd)
parent=$(dirname "$top")

# ---- tools -------------------------------------------------------------------------
need=(debhelper lintian dpkg-dev fakeroot build-essential)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); install them or run as root"
    say "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 ||
    die "no cargo on PATH; install a Rust toolchain >= 1.85 (rustup) or add ~/.cargo/bin to PATH"

# ---- build -------------------------------------------------------------------------
# One build at a time in this tree (a test's HK_VERSION build may run beside another).
mkdir -p "$top/target"
exec 9>"$top/target/.build-debs.lock"
flock 9
dist=${HK_DIST:-dist}
cargo_target=${HK_CARGO_TARGET:-$top/target/debian-cargo}
restore_changelog=
cleanup() {
    if [ -n "$restore_changelog" ]; then
        mv -f "$restore_changelog" debian/changelog
    fi
    [ -L debian/cargo-target ] && rm -f debian/cargo-target
    return 0
}
trap cleanup EXIT
if [ -n "${HK_VERSION:-}" ]; then
    case $HK_VERSION in
    *[!0-9A-Za-z.+~]* | [!0-9]*) die "HK_VERSION=$HK_VERSION is not a native Debian version" ;;
    esac
    src=$(dpkg-parsechangelog -S Source)
    maint=$(dpkg-parsechangelog -S Maintainer)
    # The real top entry's date: dpkg-buildpackage derives SOURCE_DATE_EPOCH from it,
    # and the cc crate's build scripts rerun when it changes (so would every crate
    # after them), which would turn a test build into a full rebuild.
    date=$(dpkg-parsechangelog -S Date)
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -S Timestamp)}
    restore_changelog=$(mktemp debian/.changelog.XXXXXX)
    cp -p debian/changelog "$restore_changelog"
    {
        printf '%s (%s) unstable; urgency=medium\n\n' "$src" "$HK_VERSION"
        printf '  * Test build of this tree as version %s (HK_VERSION).\n\n' "$HK_VERSION"
        printf ' -- %s  %s\n\n' "$maint" "$date"
        cat "$restore_changelog"
    } >debian/changelog
fi
source=$(dpkg-parsechangelog -S Source)
version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
changes="$parent/${source}_${version}_${arch}.changes"

start=$(date +%s)
say "building $source $version ($arch) with $(cargo --version)"
# dpkg-buildpackage keeps the environment, so PATH (with cargo) reaches debian/rules.
# The tree is cleaned first (debian/rules clean), then debian/cargo-target made a
# symlink to the kept cargo directory; --post-clean removes the symlink (rm -rf of a
# symlink leaves its target) and debhelper's files once done.
debian/rules clean >/dev/null
mkdir -p "$cargo_target"
ln -sfn "$cargo_target" debian/cargo-target
dpkg-buildpackage -us -uc -b --no-pre-clean --post-clean
[ -f "$changes" ] || die "dpkg-buildpackage did not produce $changes"

# ---- collect into dist/ --------------------------------------------------------------
mkdir -p "$dist"
rm -f "$dist"/*.deb "$dist"/*.ddeb "$dist"/*.buildinfo "$dist"/*.changes
# The Files: section of the .changes lists everything built (debs and .buildinfo).
mapfile -t files < <(awk '/^Files:/ { f = 1; next } /^[^ ]/ { f = 0 } f && NF == 5 { print $5 }' "$changes")
[ ${#files[@]} -gt 0 ] || die "no files listed in $changes"
for f in "${files[@]}"; do
    mv -f "$parent/$f" "$dist"/
done
mv -f "$changes" "$dist"/
say "built in $(($(date +%s) - start)) s"

# ---- lint --------------------------------------------------------------------------
# No tag is suppressed: the packages must be free of E: and W: tags.
debs=()
for f in "${files[@]}"; do
    case $f in *.deb) debs+=("$dist/$f") ;; esac
done
if [ "${HK_LINT:-yes}" = no ]; then
    say "lintian skipped (HK_LINT=no)"
    debs=()
fi
[ ${#debs[@]} = 0 ] && exit 0
set +e
lint=$(lintian --display-info --tag-display-limit 0 "${debs[@]}" 2>&1)
lrc=$?
set -e
[ -z "$lint" ] || printf '%s\n' "$lint"
bad=$(printf '%s\n' "$lint" | grep -E '^[EW]: ' || true)
if [ -n "$bad" ]; then
    die "lintian reported $(printf '%s\n' "$bad" | wc -l) error/warning tag(s)"
fi
[ $lrc = 0 ] || die "lintian failed (exit $lrc)"
say "lintian: no E: or W: tags"

say "packages built (in $dist/):"
for d in "${debs[@]}"; do
    printf '  %-40s %s\n' "$(dpkg-deb -f "$d" Package)" "$d"
done
