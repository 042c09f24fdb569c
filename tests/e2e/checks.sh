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
# abort MESSAGE: a failure that makes the remaining steps meaningless.
abort() {
    nok "$*"
    exit 1
}
