"""Prints scripts/gpu-bench.sh's table from the JSON its runs left in DIR: per architecture and
weight storage, our text encoder, U-Net step (warm median; the cold first step apart) and VAE
decode, and PyTorch diffusers' fp16 U-Net call on the same GPU, with the ratio.

usage: python3 tools/gpu-bench/summary.py DIR ADAPTER TORCH_RAN(0|1)
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def main():
    out, adapter, torch_ran = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    print(f"\nwebdiffusion GPU benchmark on {adapter}: 512x512, synthetic weights")
    head = f"{'model':<10} {'weights':<7} {'text enc ms':>11} {'U-Net ms':>9} {'cold ms':>8} {'GFLOP/s':>9} {'VAE ms':>8} {'peak MB':>8} {'torch fp16 ms':>13} {'ours/torch':>10}"
    print(head)
    print("-" * len(head))
    for arch in ["sd15", "sd-turbo"]:
        torch = load(os.path.join(out, f"torch-{arch}.json")) if torch_ran else None
        for quant in ["f16", "q4_0", "f16math"]:
            r = load(os.path.join(out, f"ours-{arch}-{quant}.json"))
            if not r:
                print(f"{arch:<10} {quant:<7} (no result: see ours-{arch}-{quant}.log)")
                continue
            st = {s["stage"]: s for s in r["stages"]}
            te, un, vae = st.get("text_encoder"), st.get("unet_step"), st.get("vae_decode")
            cold = (un or {}).get("cold") or {}
            t_ms = torch["ms_median"] if torch else None
            ratio = f"{un['ms'] / t_ms:.2f}" if (un and t_ms) else "-"
            fmt = lambda v, spec: format(v, spec) if v is not None else "-"
            print(
                f"{arch:<10} {quant:<7} {fmt(te and te['ms'], '11.1f')} {fmt(un and un['ms'], '9.1f')} "
                f"{fmt(cold.get('ms'), '8.0f')} {fmt(un and un['gflops'], '9.0f')} {fmt(vae and vae['ms'], '8.1f')} "
                f"{r['peak_bytes'] / 1e6:8.0f} {fmt(t_ms, '13.1f')} {ratio:>10}"
            )
    if not torch_ran:
        print("PyTorch: not run here (no torch with CUDA)")
    print("f16math: f16 weights, tiled kernels multiplying in f16 (--kernels f16-math=on).")
    print("U-Net ms: the median of the warm steps (guided batch of 2 for SD 1.5, 1 for SD-Turbo); "
          "torch: diffusers' UNet2DConditionModel, fp16, SDPA attention, the same batch and size.")


if __name__ == "__main__":
    main()
