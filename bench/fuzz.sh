#!/bin/bash
# Run every cargo-fuzz target in fuzz/ for FUZZ_SECS seconds (default 60) each and print,
# per target, the executions libFuzzer made and what it found. `make fuzz` runs this.
#
#   FUZZ_SECS=120 bench/fuzz.sh              # every target, 2 minutes each
#   FUZZ_TARGETS="ini spool" bench/fuzz.sh   # some targets
#   FUZZ_SANITIZER=address bench/fuzz.sh     # with ASan (slower build and runs)
#
# cargo fuzz needs nightly-only rustc flags; only the stable toolchain is installed, so
# RUSTC_BOOTSTRAP=1 lets stable accept them. The default sanitizer is none: hostkit's
# parsers are safe Rust, so what the fuzzers hunt is panics (debug assertions and
# overflow checks are on), runaway memory (-rss_limit_mb) and hangs (-timeout).
# The corpus grows in fuzz/corpus/<target> (not committed), seeded from tests/fixtures/
# and etc/; a crash leaves its input in fuzz/artifacts/<target>/ and makes the script exit
# 1 after the remaining targets ran.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${FUZZ_SECS:-60}
san=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
targets=${FUZZ_TARGETS:-$(cargo fuzz list --fuzz-dir fuzz)}
cargo fuzz build -s "$san" --fuzz-dir fuzz

# Seeds: real inputs where the repository has them, a few hand-made ones elsewhere.
seed() { # target name content...
    local d=fuzz/corpus/$1
    mkdir -p "$d"
    printf '%s' "$3" >"$d/seed-$2"
}
mkdir -p fuzz/corpus/{jobfile,hookenv,ini,tar_restore}
cp tests/fixtures/ganeti/job-*.json tests/fixtures/ganeti/job-versions/*.json fuzz/corpus/jobfile/ 2>/dev/null || true
cp tests/fixtures/ganeti/hook-env/*.env fuzz/corpus/hookenv/
for f in etc/synnefo/gtools.conf etc/skytools/*.ini etc/skytools.ini etc/calink/*.ini etc/ele_tools/*.ini; do
    cp "$f" "fuzz/corpus/ini/$(basename "$f")"
done
seed ini interp $'[DEFAULT]\nbase = /srv\n[s]\npath = %(base)s/x\nflag = yes\nn = 42\nlist = a, b c\n'
for n in 000000010000000000000002 000000010000000000000002.partial 00000002.history \
    000000010000000000000002.00000028.backup 00000001000000010000000A; do
    seed walname "$n" "$n"
done
mkdir -p fuzz/corpus/walheader # a PostgreSQL 15 segment's first 48 bytes: 16 MiB, 8 KiB pages
printf '\x10\xd1\x02\x00\x01\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x00\x00\x00\x01\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' >fuzz/corpus/walheader/seed-page
seed backup_label label $'START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nLABEL: walmgr\n'
seed tablespace_map map $'16384 /srv/ts one\n16385 /srv/ts2\n'
seed progress stream $'\x07{"type":"image-copy-progress","position":10,"total":100,"progress":10.0}garbage{"a":[1,{"b":null}]}\n{"x":'
seed spool entry $'{"hostkit_spool":1,"count":2}\n{"exchange":"ganeti","routing_key":"ganeti.snf.event.op","body":{"a":1}}\n{"exchange":"ganeti","routing_key":"k","body":[true,"x"]}\n'
t=$(mktemp -d)
mkdir -p "$t/pg_tblspc/16384/PG_15_1" "$t/base/1"
echo 'START WAL LOCATION: 0/2000028 (file 000000010000000000000002)' >"$t/backup_label"
echo '16384 /srv/ts' >"$t/tablespace_map"
echo data >"$t/base/1/1259"
echo ts >"$t/pg_tblspc/16384/PG_15_1/x"
tar -C "$t" -cf fuzz/corpus/tar_restore/seed-base.tar .
rm -rf "$t"

summary=()
status=0
for target in $targets; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log=$(mktemp)
    before=$(ls "fuzz/artifacts/$target" | wc -l)
    set +e
    cargo fuzz run -s "$san" --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(ls "fuzz/corpus/$target" | wc -l)
    found=$(( $(ls "fuzz/artifacts/$target" | wc -l) - before ))
    line="$target: ${runs:-?} executions in ${secs} s, coverage ${cov:-?}, corpus $corpus, new crashes $found"
    if [ "$rc" != 0 ]; then
        line+=" (exit $rc: $(grep -m1 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || echo see log))"
        status=1
        cp "$log" "fuzz/artifacts/$target/last-run.log"
    fi
    echo "fuzz: $line"
    summary+=("$line")
    rm -f "$log"
done
echo
echo "fuzz summary ($(date -u '+%Y-%m-%d %H:%M UTC'), FUZZ_SECS=$secs, sanitizer $san):"
printf '  %s\n' "${summary[@]}"
exit "$status"
