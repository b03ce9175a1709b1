"""The PyTorch side of scripts/gpu-bench.sh: diffusers' UNet2DConditionModel from one of our
architecture configs (src/models/arch/<arch>/unet.json, the published unet/config.json), random
weights, fp16 on CUDA, timed per call the way our `bench` times a U-Net step (inputs resident,
the GPU synchronised around each call). Prints one JSON line.

usage: python3 tools/gpu-bench/torch_unet.py --config src/models/arch/sd15/unet.json
           [--batch 2] [--size 512] [--dtype fp16|fp32] [--calls 10] [--warmup 3]
"""
import argparse
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=2, help="2: the guided [uncond, cond] batch")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latents are 1/8)")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("torch_unet: PyTorch is not installed here")
    if not torch.cuda.is_available():
        sys.exit("torch_unet: PyTorch sees no CUDA device")
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        sys.exit("torch_unet: diffusers is not importable (scripts/gpu-bench.sh bundle carries its wheel)")

    cfg = json.load(open(a.config))
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfg).to("cuda", dtype).eval()
    side = a.size // 8
    x = torch.randn(a.batch, cfg["in_channels"], side, side, device="cuda", dtype=dtype)
    ctx = torch.randn(a.batch, 77, cfg["cross_attention_dim"], device="cuda", dtype=dtype)
    t = torch.tensor([999.0] * a.batch, device="cuda")
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.calls):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx)
            torch.cuda.synchronize()
            if i >= a.warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({
        "config": a.config, "batch": a.batch, "size": a.size, "dtype": a.dtype,
        "ms_median": statistics.median(times), "ms_min": min(times), "calls": a.calls,
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
    }))


if __name__ == "__main__":
    main()
