#!/bin/bash
# Make this Debian 12 host ready for `make check`: install with apt only what is
# missing, start PostgreSQL and RabbitMQ only if they are not already running.
# Idempotent; safe to run on a developer's machine, in CI, or on a fresh host.
set -euo pipefail

say() { echo "setup-host: $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup-host: must run as root (it installs packages and starts services)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup-host: no cargo on PATH; install a Rust toolchain >= 1.85 (rustup) first" >&2
    exit 1
fi

# Build tools, services the tests talk to, and peers the benchmarks measure against.
packages=(
    build-essential pkg-config
    postgresql-15 postgresql-15-pgq3 postgresql-contrib
    rabbitmq-server
    socat iproute2 util-linux procps
    # tests/walmgr/: its own sshd on 127.0.0.1 (a remote store), ssh-keygen, mount
    # (tmpfs), sha256sum/dd; PostgreSQL 15 binaries (initdb, pg_ctl, pgbench) come with
    # postgresql-15 / postgresql-contrib above.
    openssh-server openssh-client coreutils
    # tests/amqp_tls.rs: openssl makes the CA and certificates of a private RabbitMQ TLS
    # node; ca-certificates fills the system store (/etc/ssl/certs) amqps:// defaults to.
    openssl ca-certificates
    # tests/pacha.rs: git (pacha's history), setfacl/getfattr, dpkg-deb for the apt hook test
    git acl attr dpkg-dev
    # tests/pacha_nodes.rs: visudo validates a pushed sudoers file; diff for --check
    sudo diffutils
)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "all packages present"
fi

# PostgreSQL 15: create the main cluster if apt did not, start it if it is down.
if ! pg_lsclusters -h 2>/dev/null | grep -q '^15 '; then
    say "creating PostgreSQL 15 cluster"
    pg_createcluster 15 main
fi
if ! pg_lsclusters -h | awk '$1 == "15" && $2 == "main" { print $4 }' | grep -q online; then
    say "starting PostgreSQL 15"
    pg_ctlcluster --skip-systemctl-redirect 15 main start
fi

# RabbitMQ: start it detached if it does not answer.
if ! rabbitmqctl -q status >/dev/null 2>&1; then
    say "starting RabbitMQ"
    rabbitmq-server -detached
    for _ in $(seq 1 60); do
        rabbitmqctl -q status >/dev/null 2>&1 && break
        sleep 1
    done
    rabbitmqctl -q await_startup
fi
say "PostgreSQL and RabbitMQ are up"

# make lint runs cargo deny (tests/deny.sh). Not packaged by Debian: cargo install, which
# compiles for several minutes on a fresh host; skipped when ~/.cargo/bin has it.
if ! cargo deny --version >/dev/null 2>&1; then
    say "installing cargo-deny (cargo install, a few minutes)"
    cargo install cargo-deny --locked
fi

# tests/walmgr/ starts a private sshd (tests/common/sshd.rs) (never the system one); sshd needs its
# privilege-separation directory, which only the ssh service creates at boot.
if [ ! -d /run/sshd ]; then
    install -d -m 0755 /run/sshd
fi
# tests/walmgr/s3.rs: moto's standalone S3 server on loopback (PyPI; Debian packages no
# S3 server short of Ceph's radosgw). In a venv of its own (Debian's python3 refuses
# system-wide pip installs); kept when moto_server is already on PATH.
if ! command -v moto_server >/dev/null 2>&1 && [ ! -x /opt/hostkit-test/moto/bin/moto_server ]; then
    say "installing moto[server] into /opt/hostkit-test/moto (pip)"
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv
    fi
    python3 -m venv /opt/hostkit-test/moto
    /opt/hostkit-test/moto/bin/pip install -q 'moto[server]>=5.0.20,<6'
fi

# walmgr's tests run clusters and walmgr as the postgres user.
if ! id postgres >/dev/null 2>&1; then
    echo "setup-host: no postgres user after installing postgresql-15" >&2
    exit 1
fi
