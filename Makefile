# hostkit — two commands matter:
#   make check   install/start what the tests need, then lint and run every test
#   make deb     build every Debian package into dist/
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: check deps lint deny test e2e build release deb e2e-deb e2e-lifecycle piuparts bench fuzz clean

check: deps lint test e2e piuparts

deps:
	bash tests/setup-host.sh

lint: deny
	$(CARGO) fmt --check
	rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs
	$(CARGO) clippy --all-targets --locked -- -D warnings

# cargo deny, offline against the RustSec snapshot in ../shared (see deny.toml).
deny:
	bash tests/deny.sh

test:
	$(CARGO) test --locked

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

deb:
	bash debian/build-debs.sh

# Build the packages, install them and drive them as an operator would: suite.sh is
# one scenario with every package installed and running together (snf-cyclades-gtools'
# and calink's package checks are in it); the others test one package alone.
e2e: e2e-deb

e2e-deb: deb
	bash tests/e2e/suite.sh
	bash tests/e2e/deb-skytools.sh
	bash tests/e2e/deb-walmgr.sh
	bash tests/e2e/deb-ele.sh
	bash tests/e2e/deb-pacha.sh
	bash tests/e2e/initscripts.sh
	bash tests/e2e/replace-pgqd.sh
	bash tests/e2e/lifecycle.sh

# The upgrade/remove/purge life cycle alone.
e2e-lifecycle: deb
	bash tests/e2e/lifecycle.sh

# piuparts on every package in a debootstrapped chroot (cached base; about 3 minutes).
piuparts: deb
	bash tests/e2e/piuparts.sh

bench:
	$(CARGO) bench --locked --bench eventd
	$(CARGO) bench --locked --bench hook
	$(CARGO) build --release --locked --bin pgqd
	bash bench/pgqd.sh 10 100 500
	$(CARGO) build --release --locked --bin walmgr
	bash bench/walmgr.sh
	$(CARGO) build --release --locked --bin calink
	bash bench/calink.sh
	$(CARGO) build --release --locked --bin pacha
	PACHA=target/release/pacha bash bench/pacha.sh

# cargo fuzz: every target FUZZ_SECS (default 60) seconds; not part of check.
fuzz:
	bash bench/fuzz.sh

clean:
	$(CARGO) clean
	rm -rf dist bench/out
