#!/usr/bin/env bash
# Every test: Rust unit tests, GPU op tests on Mesa lavapipe against candle on the CPU, CLI tests,
# the demo model's adherence run, then the wasm build in headless Chromium on WebGPU (SwiftShader).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh test
echo "setup took $(( $(date +%s) - start )) s"

echo "== build: the native test binaries and the tests' wasm =="
mkdir -p target
# The JSON lists each test binary; diagnostics still print as text.
cargo test --all-targets --no-run --message-format=json-render-diagnostics > target/test-binaries.json
scripts/build-wasm.sh --test
echo "built at $(( $(date +%s) - start )) s"

# One job per test binary and per browser test file, run side by side (scripts/jobs.sh says
# why). Longest first, so the short ones fill the gaps at the end; a new file runs last.
order=(ops cli demo_model quant browser/faults browser/real-size browser/convert pipeline
  browser/app package models browser/checkpoint browser/img2img browser/bench browser/models
  browser/inpaint browser/loras browser/hostile-downloads unit-lib browser/taesd runtime)
declare -A cmd
while IFS=' ' read -r kind name exe; do
  case "$kind" in
    lib | rlib | cdylib) name=unit-lib ;;
    bin) name=unit-bin ;;
  esac
  cmd[$name]="$exe"
done < <(sed -nE 's/.*"target":\{"kind":\["([a-z-]+)"[^]]*\][^}]*"name":"([^"]+)".*"profile":\{[^}]*"test":true[^}]*\}.*"executable":"([^"]+)".*/\1 \2 \3/p' target/test-binaries.json)
for f in tests/browser/*.test.mjs; do
  n=${f#tests/}
  cmd[${n%.test.mjs}]="node --test $f"
done
[ "${#cmd[@]}" -gt 10 ] || { echo "found only ${#cmd[@]} test jobs in target/test-binaries.json"; exit 1; }
list=$(mktemp)
for n in "${order[@]}"; do
  [ -n "${cmd[$n]:-}" ] && printf '%s\t%s\n' "${n//\//-}" "${cmd[$n]}" >> "$list" && unset "cmd[$n]"
done
for n in "${!cmd[@]}"; do printf '%s\t%s\n' "${n//\//-}" "${cmd[$n]}" >> "$list"; done

echo "== tests: $(wc -l < "$list") jobs, 3 at a time (GPU: lavapipe natively, SwiftShader in Chromium) =="
# Three on two cores: a job waiting on a process start, a readback or a page leaves its core to
# the others.
status=0
scripts/jobs.sh 3 target/test-logs < "$list" || status=$?
rm -f "$list"
[ "$status" = 0 ] || exit "$status"
echo "all tests passed in $(( $(date +%s) - start )) s"
