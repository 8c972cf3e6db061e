#!/usr/bin/env bash
# Installs what the tests need (skipping what is already there), starts the
# services the distributed tests run against (ZooKeeper, Apache Kafka, PostgreSQL and S3 on
# loopback, see scripts/services.sh; they keep running afterwards), then runs
# the checks CI gates on: formatting, clippy, the whole test suite.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

step "toolchain targets for WebAssembly modules"
installed=$(rustup target list --installed)
for t in wasm32-unknown-unknown wasm32-wasip1; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

step "OpenSSL headers and pkg-config for librdkafka's TLS"
if ! pkg-config --exists openssl 2>/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq libssl-dev pkg-config
fi

step "clang and lld for the C module"
if ! command -v clang >/dev/null || ! command -v wasm-ld >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq clang lld
fi

step "headless Chromium for the web view's browser test"
if ! command -v chromium >/dev/null; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq chromium
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build the tests, the hailstorm binary, and the WebAssembly modules they use"
# One build for both: the test build of the workspace is also the binary the
# module builds and the tests run (building `-p hailstorm` alone would unify
# features differently and compile the engine's dependencies twice).
cargo test --workspace --release --no-run
for t in topologies/*.toml tests/fixtures/faulty.toml tests/fixtures/chain.toml tests/fixtures/changelog.toml \
    tests/fixtures/dead-letters.toml; do
    target/release/hailstorm build "$t"
done

step "services: ZooKeeper, Apache Kafka, PostgreSQL and the S3 server"
scripts/services.sh start
eval "$(scripts/services.sh env)"

step "cargo test (release)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --release 2>&1 | tee "$log"
# cargo prints one result line per test binary (the last is often a crate
# with no doc-tests); close with the totals of the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
