#!/usr/bin/env bash
# End-to-end tests of the chorus broker with the real Pusher clients and SDKs.
# Assumes the binary is built: CHORUS_BIN, or ../../../target/debug/chorus
# (cargo build -p chorus-broker from the repository root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

bin="${CHORUS_BIN:-../../../target/debug/chorus}"
if [[ ! -x "$bin" ]]; then
  echo "run.sh: chorus binary not found at $bin (build it or set CHORUS_BIN)" >&2
  exit 2
fi
export CHORUS_BIN="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

# Node dependencies: npm ci only when node_modules is missing or older than the lock file.
lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.chorus-e2e-lock
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$stamp"
fi

# Debian's Chromium for the browser test (driven by playwright-core), unless CHROMIUM names one.
if [[ -z "${CHROMIUM:-}" && ! -x /usr/bin/chromium ]]; then
  sudo=""
  [[ "$(id -u)" != 0 ]] && sudo="sudo"
  $sudo apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends chromium >/dev/null; }
fi

# Python dependencies in .venv.
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r python/requirements.txt

status=0
node --test --test-concurrency=2 ./*.test.mjs || status=1
.venv/bin/python -m pytest -q -p no:cacheprovider python || status=1
exit "$status"
