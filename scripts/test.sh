#!/usr/bin/env bash
# The whole test suite, runnable on a fresh Debian machine with the Rust toolchain:
# installs what the tests need, then runs format, lint, tests and the example checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# --- system packages the tests use ---------------------------------------------------------
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# Session-store tests run against a real Redis.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# Browser tests drive Debian's Chromium over WebDriver (nothing downloads a browser).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# Metrics are parsed by Prometheus's own Python parser and linted, with the shipped alert
# rules, by promtool.
/usr/bin/python3 -c 'import prometheus_client' >/dev/null 2>&1 || need+=(python3-prometheus-client)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- npm packages: independent verifiers the tests check Drawbridge's output with, and a
# --- certified OpenID provider (oidc-provider) the sign-in tests sign in at -------------
echo "==> npm ci (crates/drawbridge/tests/js)"
(cd crates/drawbridge/tests/js && npm ci --no-audit --no-fund --silent)

# A one-off build gains nothing from incremental state; it only costs disk.
export CARGO_INCREMENTAL=0

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo build"
cargo build --workspace --locked --bins

echo "==> drawbridge check on every example"
for f in examples/*.toml; do
  ./target/debug/drawbridge check --config "$f"
done

echo "==> drawbridge test on the examples that ship policy tests"
for f in $(grep -l '^tests = ' examples/*.toml); do
  ./target/debug/drawbridge test --config "$f"
done

echo "==> promtool: the shipped alerting rules, and their unit tests"
promtool check rules deploy/prometheus/drawbridge-rules.yml
(cd deploy/prometheus && promtool test rules drawbridge-rules-test.yml)
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/grafana/drawbridge-dashboard.json

echo "==> cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.txt
# Print one closing line that sums every test binary's results.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "\n%d passed, %d failed, %d skipped\n", p, f, s }' target/test-output.txt
