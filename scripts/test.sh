#!/usr/bin/env bash
# Every test: Rust unit tests, GPU op tests on Mesa lavapipe against candle on the CPU, CLI tests,
# then the wasm build in headless Chromium on WebGPU (SwiftShader).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
start=$(date +%s)

echo "== native: unit, op and CLI tests (GPU: lavapipe) =="
cargo test --all-targets
# lavapipe picks the direct conv kernel (CPU adapters); check the tiled one real GPUs use too.
WEBDIFFUSION_CONV2D=tiled cargo test --test ops --test quant conv

echo "== wasm build =="
scripts/build-wasm.sh

echo "== browser tests (headless Chromium, WebGPU) =="
node --test tests/browser/
echo "all tests passed in $(( $(date +%s) - start )) s"
