# hostkit — two commands matter:
#   make check   install/start what the tests need, then lint and run every test
#   make deb     build every Debian package into dist/
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: check deps lint test build release deb bench clean

check: deps lint test

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

bench:
	$(CARGO) bench --locked --bench eventd

clean:
	$(CARGO) clean
	rm -rf dist bench/out
