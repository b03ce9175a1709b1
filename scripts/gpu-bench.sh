#!/usr/bin/env bash
# The prepared GPU benchmark: our native `bench` on Vulkan beside PyTorch fp16 diffusers' U-Net,
# on the same GPU at the same size, in one command that ends within 8 minutes.
#
#   scripts/gpu-bench.sh bundle [DIR]   here, where the package registries answer: builds the
#                                       release CLI and writes DIR (default .gpu-bundle/, git-
#                                       ignored): the binary, the Vulkan loader (Debian's
#                                       libvulkan1), the diffusers and importlib_metadata
#                                       wheels. Prints its size (19.7 MiB on 2026-12-02).
#   scripts/gpu-bench.sh run [DIR]      there: a Linux machine with an NVIDIA GPU and its driver,
#                                       no internet, this checkout and DIR beside it. Python's
#                                       torch is used if it is installed (else that half is
#                                       skipped with a line saying so). Prints one table; the
#                                       JSON of every run lands in $OUT (or DIR/results).
#
# What runs: SD 1.5 and SD-Turbo at 512x512 with synthetic weights, f16 and q4_0: the text
# encoder, U-Net steps (4: the first, cold, apart) and the VAE decode, each its own `bench`
# process under a time limit; then diffusers' U-Net in fp16 with the same batch (2 for SD 1.5's
# guidance, 1 for SD-Turbo). Without a GPU it stops at once with a clear message: a CPU Vulkan
# driver (lavapipe) is refused, not benchmarked.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
bundle="${2:-.gpu-bundle}"
DIFFUSERS_VERSION=0.42.1 # the reference scripts' version; pure Python
# diffusers' one dependency a PyTorch image may lack (the device image's list has zipp, not it).
IMPORTLIB_METADATA_VERSION=8.7.0

die() { echo "gpu-bench: $*" >&2; exit 2; }

case "$mode" in
bundle)
  mkdir -p "$bundle"
  echo "gpu-bench: building the release CLI (a few minutes)"
  cargo build --release --bin webdiffusion
  cp target/release/webdiffusion "$bundle/"
  strip "$bundle/webdiffusion" 2>/dev/null || true
  echo "gpu-bench: the Vulkan loader (Debian libvulkan1, amd64)"
  lists=$(mktemp -d)
  mkdir -p "$lists/partial"
  o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd "$bundle" && rm -f ./*.deb && apt-get $o download -qq libvulkan1)
  rm -rf "$lists"
  echo "gpu-bench: the diffusers wheel ($DIFFUSERS_VERSION) and importlib_metadata's"
  rm -f "$bundle"/*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$bundle" "diffusers==$DIFFUSERS_VERSION" \
    "importlib_metadata==$IMPORTLIB_METADATA_VERSION"
  du -ab "$bundle" | sort -n | tail -n 5
  total=$(du -sb "$bundle" | cut -f1)
  echo "gpu-bench: $bundle holds $total bytes ($((total / 1048576)) MiB); carry it with the checkout and run: scripts/gpu-bench.sh run $bundle"
  ;;
run)
  [ -x "$bundle/webdiffusion" ] || die "$bundle/webdiffusion is missing: make the bundle first (scripts/gpu-bench.sh bundle) and carry it here"
  out="${OUT:-$bundle/results}"
  mkdir -p "$out"
  # The Vulkan loader, where the machine has none.
  if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
    ls "$bundle"/libvulkan1_*.deb >/dev/null 2>&1 || die "no Vulkan loader here (libvulkan.so.1) and none in $bundle"
    for f in "$bundle"/libvulkan1_*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  # NVIDIA's ICD where the driver is mounted rather than installed.
  if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  fi
  info=$(timeout 60 "$bundle/webdiffusion" info 2>&1) || die "no GPU adapter: \`webdiffusion info\` failed: $(echo "$info" | tail -n 2)"
  echo "$info" | sed 's/^/  /'
  type=$(echo "$info" | sed -n 's/^device type: *//p')
  case "$type" in
  DiscreteGpu | IntegratedGpu | VirtualGpu) ;;
  *) die "the adapter is '$(echo "$info" | sed -n 's/^adapter: *//p')' (device type ${type:-unknown}), not a GPU: this benchmark needs a GPU with a Vulkan driver (is the NVIDIA driver's ICD visible? VK_DRIVER_FILES=${VK_DRIVER_FILES:-unset})" ;;
  esac
  adapter=$(echo "$info" | sed -n 's/^adapter: *//p')
  start=$(date +%s)
  for arch in sd15 sd-turbo; do
    # f16math: f16 weights with the tiled kernels multiplying in f16 (off by default: ~1e-2
    # error, tests/common kernel_tolerance), to measure what it would buy.
    for variant in f16 q4_0 f16math; do
      quant=${variant%math}
      kernels=""
      [ "$variant" = f16math ] && kernels="f16-math=on"
      echo "gpu-bench: ours, $arch $variant 512x512"
      timeout 150 "$bundle/webdiffusion" bench --arch "$arch" --quant "$quant" --kernels "$kernels" --size 512 --steps 4 --json \
        >"$out/ours-$arch-$variant.json" 2>"$out/ours-$arch-$variant.log" ||
        echo "gpu-bench: ours $arch $variant failed (exit $?): $(tail -n 3 "$out/ours-$arch-$variant.log")"
    done
  done
  torch_ok=0
  if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    site=$(mktemp -d)
    if ! python3 -c 'import diffusers' 2>/dev/null; then
      ls "$bundle"/diffusers-*.whl >/dev/null 2>&1 || die "torch is here but diffusers is not, and $bundle has no diffusers wheel"
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$bundle"/*.whl
      export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    for arch in sd15 sd-turbo; do
      batch=2
      [ "$arch" = sd-turbo ] && batch=1
      echo "gpu-bench: PyTorch diffusers, $arch fp16 512x512 batch $batch"
      timeout 120 python3 tools/gpu-bench/torch_unet.py --config "src/models/arch/$arch/unet.json" --batch "$batch" --size 512 \
        >"$out/torch-$arch.json" 2>"$out/torch-$arch.log" ||
        echo "gpu-bench: PyTorch $arch failed: $(tail -n 3 "$out/torch-$arch.log")"
    done
    torch_ok=1
  else
    echo "gpu-bench: PyTorch with CUDA is not installed here: the PyTorch comparison is skipped"
  fi
  python3 tools/gpu-bench/summary.py "$out" "$adapter" "$torch_ok" | tee "$out/summary.txt"
  echo "gpu-bench: done in $(($(date +%s) - start)) s"
  ;;
*)
  echo "usage: scripts/gpu-bench.sh bundle [DIR] | run [DIR]" >&2
  exit 64
  ;;
esac
