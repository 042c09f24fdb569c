#!/bin/bash
# cargo deny check (advisories, bans, licenses, sources; config in deny.toml), offline.
# `make lint` runs it, so `make check` and CI do.
#
# The advisories come from the RustSec snapshot in ../shared/rustsec-advisory-db or
# /work/shared/rustsec-advisory-db (data only; HOSTKIT_ADVISORY_DB names another copy;
# with none, the advisories are skipped with a warning and the other checks run). cargo-deny reads a database only from a
# git checkout at <db-path>/<name>-<hash of the URL>, so a throwaway `git init` copy is
# made there in a temp dir (its path asked from cargo-deny itself), and cargo-deny runs
# with --offline: nothing is fetched, the crates.io index included.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "deny: cargo-deny is missing; tests/setup-host.sh installs it (cargo install cargo-deny --locked)" >&2
    exit 1
fi
# cargo-deny runs offline and reads the crates' metadata from cargo's registry cache:
# on a fresh host (or one whose cache holds only cargo-deny's own crates) fetch the
# locked dependencies first; a no-op once they are there.
cargo fetch --locked --quiet
snap=${HOSTKIT_ADVISORY_DB:-}
if [ -z "$snap" ]; then
    # Beside the checkout, or where this workplace keeps it (a clean clone for CI may
    # live anywhere, /tmp included).
    for d in ../shared/rustsec-advisory-db ../../shared/rustsec-advisory-db /work/shared/rustsec-advisory-db; do
        if [ -d "$d/crates" ]; then snap=$d; break; fi
    done
elif [ ! -d "$snap/crates" ]; then
    echo "deny: HOSTKIT_ADVISORY_DB=$snap holds no RustSec advisory database (no crates/)" >&2
    exit 1
fi
if [ -z "$snap" ]; then
    # A fresh host without the snapshot: the other checks still run; say loudly what
    # was not checked rather than fetch from the network or fail the whole lint.
    echo "deny: WARNING: no RustSec advisory snapshot (../shared/rustsec-advisory-db, /work/shared/rustsec-advisory-db or HOSTKIT_ADVISORY_DB): advisories NOT checked" >&2
    exec cargo deny --offline check bans licenses sources
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
export HOSTKIT_ADVISORY_DB_ROOT=$root
# Where cargo-deny wants the database: it says so at debug level, then fails to open it.
db=$({ cargo deny -L debug --offline check advisories 2>&1 || true; } |
    sed -n "s/.*Opening advisory database at '\(.*\)'.*/\1/p" | head -1)
case "$db" in
"$root"/*) ;;
*)
    echo "deny: could not learn where cargo-deny looks for its advisory database" >&2
    exit 1
    ;;
esac
mkdir -p "$db"
cp -a "$snap/." "$db/"
git -C "$db" init -q
git -C "$db" add -A
git -C "$db" -c user.name=hostkit -c user.email=hostkit@localhost \
    commit -q -m "RustSec advisory-db snapshot from $snap"
echo "deny: advisories from $(head -c 200 "$snap/SNAPSHOT" 2>/dev/null | head -1 || echo "$snap")"
cargo deny --offline check "$@"
