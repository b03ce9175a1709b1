#!/usr/bin/env python3
"""Real-size single-file checkpoint and LoRA for the page's benchmark (tools/bench/checkpoint-bench.mjs).

    python tools/bench/synthetic_single_file.py --repo DIR --out FILE [--lora FILE --rank R]

--repo is a synthetic diffusers repo (tools/bench/synthetic-repo.mjs --model sd15 --out DIR: the
published SD 1.5 layout, random values). --out gets it as one file in the original LDM layout, fp16,
as civitai's pruned SD 1.5 fine-tunes are (2.13 GB), with the renaming rules of
tools/reference/make_single_file_fixtures.py (the same functions: diffusers' loader checked them on
the tiny fixtures). --lora writes a kohya-format LoRA (lora_unet_* / lora_te_*, .alpha = rank) of
the given rank over the modules kohya's sd-scripts trains by default for SD 1.x: the U-Net
transformers' attention, feed-forward and proj_in/out, and the text encoder's attention and MLP.
Values are random (|x| small); only names, shapes, dtypes and sizes are as in real files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))
import make_single_file_fixtures as sf  # noqa: E402


def config(repo: Path, component: str) -> SimpleNamespace:
    return SimpleNamespace(**json.loads((repo / component / "config.json").read_text()))


def weights(repo: Path, component: str) -> dict:
    for name in ("diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
                 "diffusion_pytorch_model.safetensors", "model.safetensors"):
        p = repo / component / name
        if p.exists():
            return load_file(p)
    raise SystemExit(f"{repo}/{component}: no weights")


def checkpoint(repo: Path, out: Path) -> None:
    tensors = {}
    for comp, convert in (("unet", lambda sd: sf.convert_unet(sd, config(repo, "unet"))),
                          ("vae", lambda sd: sf.convert_vae(sd, config(repo, "vae"))),
                          ("text_encoder", sf.convert_clip)):
        sd = weights(repo, comp)
        for e in convert(sd):
            src = [sd[n] for n in e.diffusers_names]
            if e.transform == "identity":
                t = src[0]
            elif e.transform == "reshape_1x1_conv":
                t = src[0].reshape(*src[0].shape, 1, 1)
            elif e.transform == "concat_qkv_rows":
                t = torch.cat(src, dim=0)
            else:
                raise ValueError(e.transform)
            tensors[e.original] = t.to(torch.float16).contiguous()
        del sd
    save_file(tensors, out, metadata={"format": "pt"})
    print(f"{out}: {len(tensors)} tensors, {out.stat().st_size} bytes")


LORA_UNET = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
             "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
LORA_TE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def lora(repo: Path, out: Path, rank: int) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = {}

    def pair(prefix: str, module: str, w: torch.Tensor) -> None:
        key = f"{prefix}_{module.replace('.', '_')}"
        cols = w[0].numel()
        down = (torch.rand(rank, cols, generator=g) - 0.5) * 0.02
        up = (torch.rand(w.shape[0], rank, generator=g) - 0.5) * 0.02
        shape = (rank, *w.shape[1:]) if w.ndim == 4 else (rank, cols)
        tensors[f"{key}.lora_down.weight"] = down.reshape(shape).to(torch.float16)
        tensors[f"{key}.lora_up.weight"] = (up.reshape(w.shape[0], rank, 1, 1) if w.ndim == 4 else up).to(torch.float16)
        tensors[f"{key}.alpha"] = torch.tensor(float(rank), dtype=torch.float16)

    unet = weights(repo, "unet")
    for name, w in unet.items():
        module = name.removesuffix(".weight")
        targeted = module.endswith(LORA_UNET) or module.endswith((".proj_in", ".proj_out"))
        if name.endswith(".weight") and ".attentions." in name and targeted and w.ndim in (2, 4):
            pair("lora_unet", module, w)
    del unet
    te = weights(repo, "text_encoder")
    for name, w in te.items():
        module = name.removesuffix(".weight").removeprefix("text_model.")
        if name.endswith(".weight") and module.endswith(LORA_TE):
            pair("lora_te_text_model", module, w)
    save_file(tensors, out, metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
    print(f"{out}: {len(tensors) // 3} pairs, rank {rank}, {out.stat().st_size} bytes")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--lora", type=Path)
    ap.add_argument("--rank", type=int, default=32)
    a = ap.parse_args()
    if a.out:
        checkpoint(a.repo, a.out)
    if a.lora:
        lora(a.repo, a.lora, a.rank)


if __name__ == "__main__":
    main()
