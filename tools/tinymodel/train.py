#!/usr/bin/env python3
"""Train the tiny "shapes" text-to-image model FROM SCRATCH and write it as a standard diffusers folder.

Three stages (each one's result is cached in --work, so a rerun resumes after the last finished stage):
  1. VAE: AutoencoderKL (3 levels, factor 4: 64x64x3 <-> 4x16x16) trained on procedural images
     (make_dataset.py) with MSE + L1 + a small KL term; then scaling_factor = 1/std(latents).
  2. Cache: the dataset (--n-images scenes + captions) encoded once to latent mean/std; captions tokenized
     with the real CLIP BPE (tools/reference/clip-tokenizer), padded to 77 with <|endoftext|> like SD 1.x.
  3. Diffusion: CLIPTextModel + UNet2DConditionModel trained jointly on the cached latents, DDPM epsilon
     objective with SD's scaled_linear betas (0.00085..0.012, 1000 steps), min-SNR-5 loss weighting, 10%
     empty-caption dropout (classifier-free guidance with the "" prompt), AdamW, cosine LR over a WALL-CLOCK
     budget (--diffusion-minutes), EMA weights exported.
Then export: models/shapes-demo/ in the SD 1.5 layout with fp16 safetensors, DDIMScheduler config, the loss
curve (loss.png) and tools/tinymodel/train_log.csv.

Run (repository root, 2 CPU cores, ~70 min):
    nohup nice -n 19 /tmp/refenv/bin/python tools/tinymodel/train.py --vae-minutes 20 --vae-batch 16 --vae-lr 1.5e-3 \
        --diffusion-minutes 50 > /tmp/tinymodel/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # see --threads

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import make_dataset as ds  # noqa: E402

CLIP_BPE = REPO / "tools/reference/clip-tokenizer"
PUBLISHED = REPO / "tools/reference/published/stable-diffusion-v1-5"
MAX_LEN = 77

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

# ---------------------------------------------------------------------------------------------------------
# Model sizes (overrides of the published SD 1.5 configs; only size fields change, plus vae scaling_factor)
# ---------------------------------------------------------------------------------------------------------
VAE_CFG = {
    "block_out_channels": [16, 32, 64],  # 3 levels: factor 4, 64x64 image <-> 16x16 latent
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TE_CFG = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 64,
}
UNET_CFG = {
    "block_out_channels": [32, 64, 128],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 1,
    "attention_head_dim": 2,  # SD1 semantics: number of heads (head dims 16 / 32 / 64)
    "cross_attention_dim": 64,
    "norm_num_groups": 16,
    "sample_size": 16,
}
SCHED_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def read_json(path: Path) -> OrderedDict:
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=OrderedDict)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def derived_config(rel: str, overrides: dict, extra: dict | None = None) -> OrderedDict:
    cfg = read_json(PUBLISHED / rel)
    for k, v in overrides.items():
        if k not in cfg:
            raise KeyError(f"{rel}: {k} not in published config")
        cfg[k] = v
    for k, v in (extra or {}).items():
        cfg[k] = v
    if "_diffusers_version" in cfg:
        # The real version: diffusers bumps unet sample_size < 64 to 64 for configs older than 0.9.
        cfg["_diffusers_version"] = diffusers.__version__
    return cfg


def make_models():
    vae = AutoencoderKL.from_config(dict(derived_config("vae/config.json", VAE_CFG)))
    te = CLIPTextModel(CLIPTextConfig.from_dict(dict(derived_config("text_encoder/config.json", TE_CFG))))
    unet = UNet2DConditionModel.from_config(dict(derived_config("unet/config.json", UNET_CFG)))
    return vae, te, unet


def nparams(m) -> int:
    return sum(p.numel() for p in m.parameters())


def tokenizer() -> CLIPTokenizer:
    """The shipped tokenizer folder, loaded the way the pipeline loads it.

    NOTE: transformers 5's CLIPTokenizer(vocab_file=..., merges_file=...) silently ignores the files and maps
    every prompt to [0, 2, 2, ...]; always go through from_pretrained on a complete folder.
    """
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="cliptok-"))
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(CLIP_BPE / f, d / f)
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(PUBLISHED / "tokenizer" / f, d / f)
    tok = CLIPTokenizer.from_pretrained(d)
    ids = tok("a red circle").input_ids
    assert ids == [49406, 320, 736, 7117, 49407], ids
    return tok


def tokenize(tok, captions) -> torch.Tensor:
    # Same call as StableDiffusionPipeline.encode_prompt: pad to 77 with <|endoftext|>, truncate.
    return torch.tensor(tok(captions, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids,
                        dtype=torch.int32)


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Log:
    def __init__(self, t0):
        self.t0 = t0
        self.rows = []  # (stage, step, loss, elapsed_s)

    def add(self, stage, step, loss):
        self.rows.append((stage, step, float(loss), time.time() - self.t0))


# ---------------------------------------------------------------------------------------------------------
# Stage 1: VAE
# ---------------------------------------------------------------------------------------------------------
def train_vae(vae, args, log: Log, step0: int = 0):
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0, fused=True)
    rng = np.random.default_rng(12345)
    budget = args.vae_minutes * 60
    t0, step, ema_loss = time.time(), 0, None
    vae.train()
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0:
            break
        lr = args.vae_lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        imgs = np.stack([ds.render(ds.sample_scene(rng)) for _ in range(args.vae_batch)])
        x = to_tensor(imgs)
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        l1 = F.l1_loss(rec, x)
        kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).mean()
        loss = mse + 0.5 * l1 + args.vae_kl * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        if step % 10 == 0:
            log.add("vae", step0 + step, loss.item())
        if step % 50 == 0:
            print(f"[vae] step {step0 + step} loss {loss.item():.5f} (ema {ema_loss:.5f}) mse {mse.item():.5f} "
                  f"kl {kl.item():.3f} lr {lr:.2e} elapsed {time.time() - log.t0:.0f}s", flush=True)
    vae.eval()
    return step


# ---------------------------------------------------------------------------------------------------------
# Stage 2: dataset cache
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def cache_dataset(vae, args):
    images, captions, scenes = ds.generate(args.n_images, seed=args.data_seed)
    tok = tokenizer()
    ids = tokenize(tok, captions)
    means, stds = [], []
    for i in range(0, len(images), 256):
        post = vae.encode(to_tensor(images[i:i + 256])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    # scaling_factor: 1 / std of sampled latents (like SD's 0.18215), computed on the whole dataset.
    sample = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    scaling = float(1.0 / sample.std())
    # Reconstruction quality on a held-out set.
    ev, _, _ = ds.generate(256, seed=args.data_seed + 1)
    x = to_tensor(ev)
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    rec_mse = float(F.mse_loss(rec, x))
    return {"mean": mean.half(), "std": std.half(), "ids": ids, "captions": captions, "scaling": scaling,
            "latent_mean": float(sample.mean()), "latent_std": float(sample.std()), "rec_mse": rec_mse,
            "rec_images": (ev[:16], ((rec[:16].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy())}


# ---------------------------------------------------------------------------------------------------------
# Stage 3: text encoder + UNet
# ---------------------------------------------------------------------------------------------------------
def ema_update(ema, model, decay):
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - decay)


def train_diffusion(te, unet, cache, args, log: Log, step0: int = 0):
    sched = DDPMScheduler(**SCHED_KW)
    ac = sched.alphas_cumprod.float()
    snr = ac / (1 - ac)
    w_t = torch.clamp(snr, max=args.min_snr) / snr  # min-SNR-gamma weights for epsilon prediction
    tok = tokenizer()
    empty_ids = tokenize(tok, [""])[0].long()
    mean, std, ids = cache["mean"].float(), cache["std"].float(), cache["ids"].long()
    scaling = cache["scaling"]
    N = mean.shape[0]

    params = [{"params": unet.parameters(), "weight_decay": 1e-4},
              {"params": te.parameters(), "weight_decay": 0.0}]  # untouched token rows must stay as init
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), fused=True)  # CPU: fused is ~100x faster
    te_ema, unet_ema = copy.deepcopy(te).eval(), copy.deepcopy(unet).eval()
    for p in list(te_ema.parameters()) + list(unet_ema.parameters()):
        p.requires_grad_(False)
    te.train()
    unet.train()
    g = torch.Generator().manual_seed(777)
    budget = args.diffusion_minutes * 60
    t0, step, ema_loss = time.time(), 0, None
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0 or (args.max_steps and step >= args.max_steps):
            break
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, N, (args.batch,), generator=g)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling
        tok_ids = ids[idx].clone()
        drop = torch.rand(args.batch, generator=g) < args.cfg_dropout
        tok_ids[drop] = empty_ids
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = sched.add_noise(x0, noise, t)
        ehs = te(input_ids=tok_ids).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=ehs).sample
        per = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per * w_t[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(unet_ema, unet, decay)
        ema_update(te_ema, te, decay)
        raw = per.mean().item()
        ema_loss = raw if ema_loss is None else 0.98 * ema_loss + 0.02 * raw
        if step % 10 == 0:
            log.add("diffusion", step0 + step, raw)
        if step % 50 == 0:
            print(f"[diffusion] step {step0 + step} loss {raw:.4f} (ema {ema_loss:.4f}, weighted {loss.item():.4f}) "
                  f"lr {lr:.2e} progress {frac * 100:.1f}% elapsed {time.time() - log.t0:.0f}s", flush=True)
    return te_ema, unet_ema, step, ema_loss


# ---------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------
def to_fp16(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def save_st(tensors: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})


def export(out: Path, vae, te, unet, scaling: float):
    if out.exists():
        for sub in ("scheduler", "tokenizer", "text_encoder", "unet", "vae"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    mi = read_json(PUBLISHED / "model_index.json")
    mi["_diffusers_version"] = diffusers.__version__
    mi["feature_extractor"] = [None, None]
    mi["safety_checker"] = [None, None]
    mi["scheduler"] = ["diffusers", "DDIMScheduler"]
    mi["requires_safety_checker"] = False
    write_json(out / "model_index.json", mi)

    sch = DDIMScheduler(**SCHED_KW, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                        prediction_type="epsilon", timestep_spacing="leading")
    sch.save_config(out / "scheduler")

    (out / "tokenizer").mkdir(exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(CLIP_BPE / f, out / "tokenizer" / f)
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(PUBLISHED / "tokenizer" / f, out / "tokenizer" / f)

    te_cfg = derived_config("text_encoder/config.json", TE_CFG, {"torch_dtype": "float16"})
    write_json(out / "text_encoder/config.json", te_cfg)
    sd = {}
    for k, v in te.state_dict().items():  # published layout: 'text_model.' prefix + position_ids
        sd[k if k.startswith("text_model.") else "text_model." + k] = v
    sd["text_model.embeddings.position_ids"] = torch.arange(MAX_LEN, dtype=torch.int64)[None]
    save_st(to_fp16(sd), out / "text_encoder/model.safetensors")

    write_json(out / "unet/config.json", derived_config("unet/config.json", UNET_CFG))
    save_st(to_fp16(unet.state_dict()), out / "unet/diffusion_pytorch_model.safetensors")

    vae_cfg = derived_config("vae/config.json", VAE_CFG, {"scaling_factor": round(scaling, 5)})
    write_json(out / "vae/config.json", vae_cfg)
    save_st(to_fp16(vae.state_dict()), out / "vae/diffusion_pytorch_model.safetensors")


def plot_loss(rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for ax, stage, title in ((axes[0], "vae", "VAE (MSE + 0.5 L1 + KL)"),
                             (axes[1], "diffusion", "text encoder + UNet (epsilon MSE, unweighted)")):
        r = [x for x in rows if x[0] == stage]
        if not r:
            continue
        steps = np.array([x[1] for x in r])
        loss = np.array([x[2] for x in r])
        ax.plot(steps, loss, color="#bbbbbb", lw=0.6, label="batch")
        k = max(1, len(loss) // 40)
        if len(loss) > k:
            sm = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], sm, color="#d62728", lw=1.5, label=f"moving avg ({k * 10} steps)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "models/shapes-demo"))
    ap.add_argument("--work", default="/tmp/tinymodel/work")
    ap.add_argument("--threads", type=int, default=1,
                    help="1 is much faster when the 2 cores are shared with another job (OpenMP barriers)")
    ap.add_argument("--n-images", type=int, default=20000)
    ap.add_argument("--data-seed", type=int, default=2024)
    ap.add_argument("--vae-minutes", type=float, default=10.0)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--vae-kl", type=float, default=2e-4)
    ap.add_argument("--diffusion-minutes", type=float, default=48.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--resume-diffusion", action="store_true")
    ap.add_argument("--vae-resume", action="store_true")
    ap.add_argument("--vae-from", default="",
                    help="start from the VAE of an exported model folder (e.g. models/shapes-demo) instead of "
                         "training one; its weights are fp16, so this reuses a VAE, it does not reproduce one")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--min-snr", type=float, default=5.0)
    ap.add_argument("--cfg-dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-csv", default=str(HERE / "train_log.csv"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    T0 = time.time()
    log = Log(T0)
    vae, te, unet = make_models()
    print(f"params: vae {nparams(vae):,}  text_encoder {nparams(te):,}  unet {nparams(unet):,}", flush=True)

    # 1. VAE
    vae_ckpt = work / "vae.pt"
    cache_path = work / "cache.pt"
    if not vae_ckpt.exists() and args.vae_from:
        src = AutoencoderKL.from_pretrained(Path(args.vae_from) / "vae", torch_dtype=torch.float32)
        vae.load_state_dict(src.state_dict())
        torch.save({"model": vae.state_dict(), "log": [], "steps": 0}, vae_ckpt)
        print("[vae] taken from", args.vae_from, flush=True)
    if vae_ckpt.exists():
        st = torch.load(vae_ckpt)
        vae.load_state_dict(st["model"])
        log.rows += st["log"]
        vae.eval()
        print("[vae] loaded", vae_ckpt, flush=True)
        if args.vae_resume:  # train the loaded VAE for another --vae-minutes; the latent cache is rebuilt
            step0 = st.get("steps", max(r[1] for r in st["log"] if r[0] == "vae"))
            n = train_vae(vae, args, log, step0)
            torch.save({"model": vae.state_dict(), "log": log.rows, "steps": step0 + n}, vae_ckpt)
            cache_path.unlink(missing_ok=True)
            print(f"[vae] continued: {step0} + {n} steps, {time.time() - T0:.0f}s", flush=True)
    else:
        n = train_vae(vae, args, log)
        torch.save({"model": vae.state_dict(), "log": log.rows, "steps": n}, vae_ckpt)
        print(f"[vae] done: {n} steps, {time.time() - T0:.0f}s", flush=True)
    for p in vae.parameters():
        p.requires_grad_(False)

    # 2. cache
    if cache_path.exists():
        cache = torch.load(cache_path, weights_only=False)
        cache["ids"] = tokenize(tokenizer(), cache["captions"])  # always re-tokenize (see tokenizer())
        print("[cache] loaded", cache_path, flush=True)
    else:
        t = time.time()
        cache = cache_dataset(vae, args)
        torch.save(cache, cache_path)
        print(f"[cache] {args.n_images} images in {time.time() - t:.0f}s", flush=True)
    print(f"[cache] latent mean {cache['latent_mean']:.4f} std {cache['latent_std']:.4f} -> scaling_factor "
          f"{cache['scaling']:.5f}; held-out reconstruction MSE {cache['rec_mse']:.5f} (in [-1,1] units)",
          flush=True)
    a, b = cache["rec_images"]
    ds.grid(np.concatenate([a, b])).save(work / "vae_recon.png")

    # 3. diffusion (--resume-diffusion: continue from work/diffusion.pt for another --diffusion-minutes)
    step0 = 0
    if args.resume_diffusion:
        st = torch.load(work / "diffusion.pt", weights_only=False)
        te.load_state_dict(st["te"])
        unet.load_state_dict(st["unet"])
        step0 = st["steps"]
        log.rows = [r for r in st["log"]]
        print(f"[diffusion] resuming after {step0} steps", flush=True)
    t_diff = time.time()
    te_ema, unet_ema, steps, final = train_diffusion(te, unet, cache, args, log, step0)
    steps += step0
    print(f"[diffusion] done: {steps} steps in {time.time() - t_diff:.0f}s, final loss (ema) {final:.4f}",
          flush=True)
    torch.save({"te": te.state_dict(), "unet": unet.state_dict(), "te_ema": te_ema.state_dict(),
                "unet_ema": unet_ema.state_dict(), "steps": steps, "log": log.rows}, work / "diffusion.pt")

    # Export
    export(out, vae, te_ema, unet_ema, cache["scaling"])
    with open(args.log_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "step", "loss", "elapsed_s"])
        for r in log.rows:
            w.writerow([r[0], r[1], f"{r[2]:.6f}", f"{r[3]:.1f}"])
    plot_loss(log.rows, out / "loss.png")
    total = time.time() - T0
    summary = {"total_seconds": round(total, 1), "diffusion_steps": steps, "final_loss_ema": round(final, 5),
               "scaling_factor": cache["scaling"], "vae_rec_mse": cache["rec_mse"],
               "params": {"vae": nparams(vae), "text_encoder": nparams(te), "unet": nparams(unet)},
               "args": vars(args)}
    write_json(work / "summary.json", summary)
    print(f"TOTAL TIME {total:.0f}s ({total / 60:.1f} min); wrote {out}", flush=True)


if __name__ == "__main__":
    main()
