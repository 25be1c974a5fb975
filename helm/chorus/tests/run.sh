#!/usr/bin/env bash
# Tests of the container image and the Helm chart:
#   1. helm lint, helm template and kubernetes-validate --strict (check-chart.sh);
#   2. the image built with podman around the chorus binary, run from its own root filesystem;
#   3. the rendered StatefulSet run as real chorus processes, with pusher-js and the pusher SDK.
# Needs the static chorus binary: CHORUS_BIN (built with --target x86_64-unknown-linux-gnu and
# RUSTFLAGS='-C target-feature=+crt-static'). Installs what it needs: podman and dnsmasq (apt;
# dnsmasq serves as the cluster's DNS), helm and kubernetes-validate (pinned, tools.sh), the Node
# packages (npm ci).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ -z "${CHORUS_BIN:-}" || ! -x "$CHORUS_BIN" ]]; then
  echo "run.sh: set CHORUS_BIN to a static chorus binary" >&2
  exit 2
fi
export CHORUS_BIN="$(cd "$(dirname "$CHORUS_BIN")" && pwd)/$(basename "$CHORUS_BIN")"

if ! command -v podman >/dev/null || ! command -v dnsmasq >/dev/null; then
  apt-get install -y podman dnsmasq-base >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y podman dnsmasq-base >/dev/null; }
fi

lock_hash="$(sha256sum package-lock.json | cut -d' ' -f1)"
stamp=node_modules/.chorus-chart-tests-lock
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_hash" ]]; then
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_hash" > "$stamp"
fi

./check-chart.sh
node --test --test-concurrency=1 ./*.test.mjs
