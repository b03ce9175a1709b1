#!/usr/bin/env bash
# Every test: Rust unit tests, GPU op tests on Mesa lavapipe against candle on the CPU, CLI tests,
# then the wasm build in headless Chromium on WebGPU (SwiftShader).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
start=$(date +%s)

echo "== native: unit, op and CLI tests (GPU: lavapipe) =="
cargo test --all-targets
# lavapipe picks the direct conv and matmul kernels (CPU adapters); check the tiled ones real
# GPUs use too.
WEBDIFFUSION_CONV2D=tiled WEBDIFFUSION_MATMUL=tiled cargo test --test ops --test quant -- conv matmul linear

echo "== wasm build =="
scripts/build-wasm.sh --test

echo "== browser tests (headless Chromium, WebGPU) =="
node --test tests/browser/
echo "all tests passed in $(( $(date +%s) - start )) s"
