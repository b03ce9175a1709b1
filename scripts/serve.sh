#!/usr/bin/env bash
# Builds the app and serves it on http://127.0.0.1:${PORT:-8080}/ (loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh serve
scripts/build-wasm.sh
exec node tools/serve.mjs --port "${PORT:-8080}" --mount /=www --mount /pkg=pkg --mount /models=models
