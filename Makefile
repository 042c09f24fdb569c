# hostkit — two commands matter:
#   make check   install/start what the tests need, then lint and run every test
#   make deb     build every Debian package into dist/
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: check deps lint test e2e build release deb e2e-deb bench clean

check: deps lint test e2e

deps:
	bash tests/setup-host.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

test:
	$(CARGO) test --locked

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

deb:
	bash debian/build-debs.sh

# Build the packages, install them and drive them as an operator would.
e2e: e2e-deb

e2e-deb: deb
	bash tests/e2e/deb-eventd.sh
	bash tests/e2e/deb-skytools.sh
	bash tests/e2e/deb-walmgr.sh
	bash tests/e2e/deb-calink.sh
	bash tests/e2e/deb-ele.sh
	bash tests/e2e/deb-pacha.sh

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

clean:
	$(CARGO) clean
	rm -rf dist bench/out
