#!/usr/bin/env bash
# Builds the release wasm and runs wasm-bindgen into pkg/ (ES module for the page and worker).
# scripts/build-wasm.sh --test builds the tests' profile instead (see Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
# --test: the wasm-test profile (release optimisation, no LTO, parallel codegen) for the tests.
profile=release
if [ "${1:-}" = "--test" ]; then profile=wasm-test; fi
cargo build --profile "$profile" --lib --target wasm32-unknown-unknown
wasm-bindgen --target web --out-dir pkg "target/wasm32-unknown-unknown/$profile/webdiffusion.wasm"
raw=$(stat -c %s pkg/webdiffusion_bg.wasm)
gz=$(gzip -9 -c pkg/webdiffusion_bg.wasm | wc -c)
echo "pkg/webdiffusion_bg.wasm: $raw bytes ($gz gzip -9)"
