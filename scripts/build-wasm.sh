#!/usr/bin/env bash
# Builds the release wasm and runs wasm-bindgen into pkg/ (ES module for the page and worker).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --lib --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir pkg target/wasm32-unknown-unknown/release/webdiffusion.wasm
raw=$(stat -c %s pkg/webdiffusion_bg.wasm)
gz=$(gzip -9 -c pkg/webdiffusion_bg.wasm | wc -c)
echo "pkg/webdiffusion_bg.wasm: $raw bytes ($gz gzip -9)"
