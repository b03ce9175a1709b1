#!/usr/bin/env bash
# Installs what webdiffusion needs on a fresh Debian machine with rustup, skipping what is there.
#   scripts/setup.sh serve   wasm target, wasm-bindgen-cli (pinned), Node.js
#   scripts/setup.sh test    the above + Mesa lavapipe (software Vulkan), Chromium, npm packages
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-test}"
WASM_BINDGEN_VERSION=0.2.130 # must equal the wasm-bindgen crate pinned in Cargo.toml

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# What compiling needs comes first; the packages only the tests run (Node, Mesa, Chromium)
# download and unpack while wasm-bindgen-cli compiles (apt waits on the network and the disk,
# cargo on the CPU: on CI's fresh machine that hides ~2 minutes).
if ! command -v cc >/dev/null; then
  echo "setup: apt-get install build-essential"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
fi
apt_missing=()
command -v node >/dev/null || apt_missing+=(nodejs npm)
if [ "$mode" = test ]; then
  ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || apt_missing+=(mesa-vulkan-drivers)
  command -v chromium >/dev/null || apt_missing+=(chromium)
fi
apt_pid=
apt_log=$(mktemp)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${apt_missing[*]} (meanwhile)"
  ( sudo_ apt-get update -qq && sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" ) > "$apt_log" 2>&1 &
  apt_pid=$!
fi

rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $WASM_BINDGEN_VERSION" ]; then
  echo "setup: cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION (about 3 minutes)"
  # No --locked: one locked dependency is missing from some registry mirrors.
  cargo install -q wasm-bindgen-cli --version "=$WASM_BINDGEN_VERSION"
fi
if [ -n "$apt_pid" ] && ! wait "$apt_pid"; then
  cat "$apt_log"
  echo "setup: apt-get install ${apt_missing[*]} failed"
  exit 1
fi
rm -f "$apt_log"

if [ "$mode" = test ]; then
  if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi
