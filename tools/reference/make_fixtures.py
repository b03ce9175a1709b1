#!/usr/bin/env python3
"""Build tiny random Stable-Diffusion-style pipelines and their reference outputs.

What it makes
-------------
Two complete diffusers pipeline folders, laid out file-for-file like the published Hugging Face repos, with
TINY random weights, plus reference inputs/outputs computed by diffusers/transformers (the numerical
reference for webdiffusion):

    tests/fixtures/tiny-sd1/   mirrors stable-diffusion-v1-5/stable-diffusion-v1-5
        model_index.json, scheduler/scheduler_config.json,
        tokenizer/{vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json}   (no tokenizer.json)
        text_encoder/{config.json, model.fp16.safetensors}      only the fp16 variant file
        unet/{config.json, diffusion_pytorch_model.safetensors}  fp32
        vae/{config.json, diffusion_pytorch_model.safetensors}   fp32 with the OLD mid-block attention names
                                                                 (query/key/value/proj_attn), like SD 1.5's
        reference.safetensors, reference.json
    tests/fixtures/tiny-sd2/   mirrors stabilityai/stable-diffusion-2-1-base
        same layout, but ALL weights as fp16 variant files (model.fp16.safetensors,
        diffusion_pytorch_model.fp16.safetensors) with the new attention names (to_q/to_k/to_v/to_out.0).

Sizes: CLIP text encoder hidden 16, 2 heads, 3 (sd1) / 4 (sd2) layers, full 49408 vocab; U-Net channels
[16, 32, 32] (3 levels, 8x8 latents); VAE channels [16, 32, 32, 32] (4 levels, factor 8: 64x64 images).

Config files start from verbatim copies of the published ones (tools/reference/published/, sha256-checked
against the published files) with only the size fields changed, so key sets and metadata look exactly like
the real thing. The CLIP BPE files come from tools/reference/clip-tokenizer/ (MIT, OpenAI).

Weights: every parameter is random and non-trivial (norm weights 1 + 0.1*N(0,1), norm biases and other
biases 0.1*N(0,1), Linear/Conv weights N(0,1)/sqrt(fan_in), embeddings N(0,1)-ish), then ROUNDED to fp16
precision, so the fp16 files hold exactly the weights the float32 references were computed with. All
references are computed in float32 on CPU with one thread. After writing, the script reloads every component
from disk with diffusers/transformers and asserts it reproduces the references bit-exactly.

reference.safetensors / reference.json contents and the rules behind them are documented in
reference.json ("rules", "tensors") and in the functions below.

How to run (from the repository root; ~15 s on 2 cores):

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install -r tools/reference/requirements.txt
    /tmp/refenv/bin/python tools/reference/make_fixtures.py

The output is deterministic: re-running gives byte-identical files on the same machine/library versions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

# Pin threads before torch starts its pools: bit-stable fixtures.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tools" / "reference"
CLIP_BPE = HERE / "clip-tokenizer"  # vocab.json + merges.txt (MIT, OpenAI CLIP)
PUBLISHED = HERE / "published"  # verbatim published config files
FIXTURES = REPO / "tests" / "fixtures"

MAX_LEN = 77
BOS, EOS = 49406, 49407
SD2_PAD = 0  # id of "!" — OpenCLIP pads with 0

# --------------------------------------------------------------------------------------------------------
# Prompts (same list for both models). Index order is part of the fixture format: do not reorder.
# --------------------------------------------------------------------------------------------------------
LONG_PROMPT = (
    "a breathtaking ultra detailed matte painting of an ancient floating city above the clouds at golden hour, "
    "towering marble spires, hanging gardens, waterfalls pouring into the sky, flocks of white birds, "
    "airships with brass propellers, warm volumetric light, dramatic shadows, intricate architecture, "
    "cinematic composition, wide angle lens, trending on artstation, by a master painter, 8k resolution, "
    "highly detailed, sharp focus, vivid colors, epic fantasy atmosphere"
)
PROMPTS = [
    "a photo of an astronaut riding a horse on mars",  # 0 plain
    "Hello, world! It's 3:45pm... right?",  # 1 punctuation
    "!!!",  # 2 SD2 '!' issue
    "wow!",  # 3 SD2 '!' issue
    "café naïve façade — “quoted”",  # 4 unicode accents, em dash, curly quotes
    "🐱🚀 a cat riding a rocket",  # 5 emoji (byte-level fallback)
    "東京の夜景",  # 6 CJK
    "1234567 and 3.14159",  # 7 numbers (CLIP splits digits one by one)
    "A MiXeD CaSe PrOmPt with SHOUTING",  # 8 mixed case (lower-cased)
    "don't won't I'm they're",  # 9 apostrophes / contractions
    "  multiple   spaces\tand\nnewlines  ",  # 10 whitespace collapse
    "",  # 11 empty
    LONG_PROMPT,  # 12 > 77 tokens: truncated
    " ".join(["cat"] * 75),  # 13 exactly 77 tokens with BOS/EOS: no padding, nothing dropped
    " ".join(["cat"] * 76),  # 14 78 tokens: exactly one dropped
]
# Prompts whose text-encoder outputs are stored (indices into PROMPTS).
TE_PROMPTS = [0, 3, 11, 12]

# --------------------------------------------------------------------------------------------------------
# Seeds. Every random tensor comes from its own torch.Generator seeded here.
# --------------------------------------------------------------------------------------------------------
SEEDS = {
    "tiny-sd1": {"text_encoder": 1001, "unet": 1002, "vae": 1003, "unet_inputs": 1101, "vae_inputs": 1102},
    "tiny-sd2": {"text_encoder": 2001, "unet": 2002, "vae": 2003, "unet_inputs": 2101, "vae_inputs": 2102},
}
TIMESTEPS = [1, 500, 999]

# --------------------------------------------------------------------------------------------------------
# Model styles: published config + overrides (only size fields change).
# --------------------------------------------------------------------------------------------------------
VAE_OVERRIDES = {
    # 4 levels like the real VAE => spatial factor 8; latent 8x8 <-> image 64x64.
    "block_out_channels": [16, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
UNET_BLOCKS = {
    "block_out_channels": [16, 32, 32],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "layers_per_block": 2,
    "norm_num_groups": 8,
    "sample_size": 8,
}
STYLES = {
    "tiny-sd1": {
        "published": "stable-diffusion-v1-5",
        "text_encoder": {  # hidden_act quick_gelu kept from SD 1.5
            "hidden_size": 16,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 3,
            "projection_dim": 16,
        },
        # SD1 semantics: attention_head_dim is the NUMBER of heads (head dim = channels / 2: 8, 16, mid 16).
        "unet": {**UNET_BLOCKS, "attention_head_dim": 2, "cross_attention_dim": 16},
        "vae": VAE_OVERRIDES,
        "te_file": "model.fp16.safetensors",
        "unet_file": "diffusion_pytorch_model.safetensors",  # fp32
        "vae_file": "diffusion_pytorch_model.safetensors",  # fp32, old attention names
        "variant": None,
    },
    "tiny-sd2": {
        "published": "stable-diffusion-2-1-base",
        "text_encoder": {  # hidden_act gelu kept from SD 2.1; one layer more than tiny-sd1
            "hidden_size": 16,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 4,
            "projection_dim": 16,
        },
        # Per-block head counts (last entry is used by the mid block); head dim = 8 everywhere, like SD2's 64.
        # use_linear_projection stays True from the published config.
        "unet": {**UNET_BLOCKS, "attention_head_dim": [2, 4, 4], "cross_attention_dim": 16},
        "vae": VAE_OVERRIDES,
        "te_file": "model.fp16.safetensors",
        "unet_file": "diffusion_pytorch_model.fp16.safetensors",
        "vae_file": "diffusion_pytorch_model.fp16.safetensors",
        "variant": "fp16",
    },
}


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> OrderedDict:
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=OrderedDict)


def write_json(path: Path, obj) -> None:
    """Same style as the published diffusers/transformers config files (indent 2, trailing newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def derived_config(published_dir: Path, rel: str, overrides: dict) -> OrderedDict:
    """Published config with size fields overridden; every overridden key must already exist."""
    cfg = read_json(published_dir / rel)
    for k, v in overrides.items():
        if k not in cfg:
            raise KeyError(f"{rel}: {k} not in published config")
        cfg[k] = v
    return cfg


def randn(g: torch.Generator, shape) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float32)


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> dict:
    """Random non-trivial weights, rounded to fp16 precision. Returns a small stats dict."""
    g = torch.Generator().manual_seed(seed)
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm)
    known = norm_types + (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
    n = 0
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not isinstance(module, known):
                raise TypeError(f"unexpected parameterised module {mname}: {type(module).__name__}")
            if isinstance(module, norm_types):
                v = 1.0 + 0.1 * randn(g, p.shape) if pname == "weight" else 0.1 * randn(g, p.shape)
            elif isinstance(module, torch.nn.Embedding):
                # token embedding ~N(0,1), position embedding ~N(0,0.25): residual stream O(1)
                v = randn(g, p.shape) * (0.5 if "position" in mname else 1.0)
            elif pname == "weight":
                fan_in = p[0].numel()  # Linear: in; Conv2d: in*kh*kw
                v = randn(g, p.shape) / math.sqrt(fan_in)
            else:  # Linear/Conv bias
                v = 0.1 * randn(g, p.shape)
            p.copy_(v.half().float())  # exactly representable in fp16
            n += p.numel()
    # No all-zero tensor anywhere, and every value survives the fp16 round trip.
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            assert t.abs().max() > 0, f"all-zero tensor {name}"
            assert torch.equal(t, t.half().float()), name
    return {"parameters": n}


def to_file_dtype(sd: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def save_st(tensors: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------
def tokenize_sd1(tok: CLIPTokenizer, prompts: list[str]):
    """SD1 rules: BOS first, truncation keeps EOS as the last kept token, pad with EOS (49407).

    Returns (ids [P,77], num_tokens [P]) where num_tokens counts BOS+EOS BEFORE truncation.
    """
    ids, counts = [], []
    for p in prompts:
        full = tok(p, truncation=False, padding=False).input_ids
        kept = tok(p, truncation=True, max_length=MAX_LEN, padding="max_length").input_ids
        assert full[0] == BOS and full[-1] == EOS
        assert kept[0] == BOS and len(kept) == MAX_LEN
        n_kept = min(len(full), MAX_LEN)
        assert kept[n_kept - 1] == EOS and all(t == EOS for t in kept[n_kept:])
        assert kept[: n_kept - 1] == full[: n_kept - 1]
        ids.append(kept)
        counts.append(len(full))
    return torch.tensor(ids, dtype=torch.int32), torch.tensor(counts, dtype=torch.int32)


def sd2_from_sd1(ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """SD2 (OpenCLIP) rules: same ids, but the padding after EOS is 0 ('!'); '!' in text stays 256/995/..."""
    out = ids.clone()
    for i, n in enumerate(counts.tolist()):
        out[i, min(n, MAX_LEN):] = SD2_PAD
    return out


def open_clip_crosscheck(sd1_ids: torch.Tensor, sd2_ids: torch.Tensor) -> dict:
    """Compare with open_clip.tokenize (pads with 0), if open_clip_torch is installed."""
    try:
        import open_clip
    except ImportError:
        return {"status": "skipped: open_clip_torch not installed"}
    oc = open_clip.tokenize(PROMPTS, context_length=MAX_LEN).to(torch.int32)
    diffs = []
    for i, p in enumerate(PROMPTS):
        if not torch.equal(oc[i], sd2_ids[i]):
            n = lambda t: [x for x in t.tolist() if x != 0]  # noqa: E731
            diffs.append({"prompt_index": i, "prompt": p, "ours": n(sd2_ids[i]), "open_clip": n(oc[i])})
    sd1_vs = [d["prompt_index"] for d in diffs]
    return {
        "status": "done",
        "open_clip_version": open_clip.__version__,
        "compared": "open_clip.tokenize(prompts, context_length=77) vs tokenizer.ids of tiny-sd2 "
        "(tiny-sd1 ids equal tiny-sd2 ids except padding 49407 vs 0)",
        "prompts_differing": sd1_vs,
        "differences": diffs,
        "explanation": "open_clip cleans text with ftfy.fix_text (uncurls quotes, etc.) and html.unescape "
        "before BPE; transformers' CLIPTokenizer (used here, as diffusers pipelines do) only applies NFC, "
        "whitespace collapse and lower-casing.",
    }


# --------------------------------------------------------------------------------------------------------
# Per-model build
# --------------------------------------------------------------------------------------------------------
VAE_OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def vae_old_attention_names(sd: dict) -> dict:
    """Rename VAE mid-block attention tensors to the pre-0.14 names used by the published SD 1.5 fp32 VAE."""
    out = {}
    for k, v in sd.items():
        if ".mid_block.attentions." in k:
            for new, old in VAE_OLD_NAMES.items():
                marker = f".{new}."
                if marker in k:
                    k = k.replace(marker, f".{old}.")
                    assert v.dim() in (1, 2), (k, v.shape)  # Linear [C,C] / [C], as published
                    break
        out[k] = v
    return out


def text_encoder_state_dict(te: CLIPTextModel) -> dict:
    """Published layout: 'text_model.' prefix and the int64 position_ids buffer [1,77].

    transformers 5 has no 'text_model.' level in CLIPTextModel and keeps position_ids as a non-persistent
    buffer, so both are restored here.
    """
    sd = {}
    for k, v in te.state_dict().items():
        k = k if k.startswith("text_model.") else "text_model." + k
        sd[k] = v
    sd["text_model.embeddings.position_ids"] = torch.arange(MAX_LEN, dtype=torch.int64)[None]
    return sd


@torch.no_grad()
def text_encoder_refs(te: CLIPTextModel, ids: torch.Tensor):
    out = te(input_ids=ids.long(), output_hidden_states=True)
    last = out.last_hidden_state
    # transformers 5 flattened CLIPTextModel (no .text_model submodule); 4.x had it.
    final_ln = getattr(te, "text_model", te).final_layer_norm
    # diffusers' clip_skip=1: hidden_states[-(clip_skip+1)] through final_layer_norm
    skip1 = final_ln(out.hidden_states[-2])
    assert torch.equal(last, final_ln(out.hidden_states[-1]))
    return last.contiguous(), skip1.contiguous()


@torch.no_grad()
def unet_refs(unet: UNet2DConditionModel, sample, ehs):
    return {f"unet.out_t{t}": unet(sample, torch.tensor(float(t)), encoder_hidden_states=ehs).sample.contiguous()
            for t in TIMESTEPS}


@torch.no_grad()
def vae_refs(vae: AutoencoderKL, latents, image):
    dist = vae.encode(image).latent_dist
    return {
        "vae.decoded": vae.decode(latents).sample.contiguous(),  # raw decode, no scaling_factor
        "vae.posterior_mean": dist.mean.contiguous(),
        "vae.posterior_logvar": dist.logvar.contiguous(),
    }


def build(name: str, sd1_tok_ids, counts) -> dict:
    style, seeds = STYLES[name], SEEDS[name]
    pub = PUBLISHED / style["published"]
    out = FIXTURES / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    # ---- pipeline-level files -------------------------------------------------------------------------
    model_index = read_json(pub / "model_index.json")
    # No safety_checker / feature_extractor folders are shipped: mark them absent like SD 2.1-base does.
    model_index["feature_extractor"] = [None, None]
    model_index["safety_checker"] = [None, None]
    model_index["requires_safety_checker"] = False
    write_json(out / "model_index.json", model_index)
    (out / "scheduler").mkdir()
    shutil.copyfile(pub / "scheduler/scheduler_config.json", out / "scheduler/scheduler_config.json")
    (out / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(CLIP_BPE / f, out / "tokenizer" / f)
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(pub / "tokenizer" / f, out / "tokenizer" / f)

    # ---- text encoder -------------------------------------------------------------------------------
    te_cfg = derived_config(pub, "text_encoder/config.json", style["text_encoder"])
    write_json(out / "text_encoder/config.json", te_cfg)
    te = CLIPTextModel(CLIPTextConfig.from_dict(dict(te_cfg))).eval()
    te_stats = init_weights(te, seeds["text_encoder"])
    save_st(to_file_dtype(text_encoder_state_dict(te), torch.float16), out / "text_encoder" / style["te_file"])

    # ---- unet ---------------------------------------------------------------------------------------
    unet_cfg = derived_config(pub, "unet/config.json", style["unet"])
    write_json(out / "unet/config.json", unet_cfg)
    unet = UNet2DConditionModel.from_config(dict(unet_cfg)).eval()
    unet_stats = init_weights(unet, seeds["unet"])
    unet_dtype = torch.float16 if style["variant"] == "fp16" else torch.float32
    save_st(to_file_dtype(unet.state_dict(), unet_dtype), out / "unet" / style["unet_file"])

    # ---- vae ----------------------------------------------------------------------------------------
    vae_cfg = derived_config(pub, "vae/config.json", style["vae"])
    write_json(out / "vae/config.json", vae_cfg)
    vae = AutoencoderKL.from_config(dict(vae_cfg)).eval()
    vae_stats = init_weights(vae, seeds["vae"])
    vae_sd = vae.state_dict()
    if style["variant"] == "fp16":
        vae_sd = to_file_dtype(vae_sd, torch.float16)
    else:
        vae_sd = to_file_dtype(vae_old_attention_names(vae_sd), torch.float32)
    save_st(vae_sd, out / "vae" / style["vae_file"])

    # ---- references ---------------------------------------------------------------------------------
    ref = OrderedDict()
    tok_ids = sd1_tok_ids if name == "tiny-sd1" else sd2_from_sd1(sd1_tok_ids, counts)
    ref["tokenizer.ids"] = tok_ids
    ref["tokenizer.num_tokens"] = counts

    te_ids = tok_ids[TE_PROMPTS].contiguous()
    ref["text_encoder.input_ids"] = te_ids
    ref["text_encoder.last_hidden_state"], ref["text_encoder.clip_skip1"] = text_encoder_refs(te, te_ids)

    g = torch.Generator().manual_seed(seeds["unet_inputs"])
    s, cross = unet_cfg["sample_size"], unet_cfg["cross_attention_dim"]
    ref["unet.sample"] = randn(g, (2, unet_cfg["in_channels"], s, s))
    ref["unet.encoder_hidden_states"] = randn(g, (2, MAX_LEN, cross))
    ref["unet.timesteps"] = torch.tensor(TIMESTEPS, dtype=torch.float32)
    ref.update(unet_refs(unet, ref["unet.sample"], ref["unet.encoder_hidden_states"]))

    g = torch.Generator().manual_seed(seeds["vae_inputs"])
    factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    H = vae_cfg["sample_size"]
    ref["vae.latents"] = randn(g, (1, vae_cfg["latent_channels"], H // factor, H // factor))
    ref["vae.image"] = torch.rand((1, 3, H, H), generator=g, dtype=torch.float32) * 2.0 - 1.0
    vr = vae_refs(vae, ref["vae.latents"], ref["vae.image"])
    ref["vae.decoded"] = vr["vae.decoded"]
    ref["vae.posterior_mean"] = vr["vae.posterior_mean"]
    ref["vae.posterior_logvar"] = vr["vae.posterior_logvar"]

    for k, v in ref.items():
        assert torch.isfinite(v.float()).all(), k
    save_st(dict(ref), out / "reference.safetensors")

    # ---- verify: reload everything from disk the way users would, must reproduce refs bit-exactly -----
    verify = verify_from_disk(name, out, style, ref)

    return {
        "configs": {"text_encoder": te_cfg, "unet": unet_cfg, "vae": vae_cfg},
        "param_counts": {"text_encoder": te_stats["parameters"], "unet": unet_stats["parameters"],
                         "vae": vae_stats["parameters"]},
        "ref": ref,
        "verify": verify,
        "attn_impl": te.config._attn_implementation,
    }


@torch.no_grad()
def verify_from_disk(name: str, out: Path, style: dict, ref: dict) -> dict:
    variant = style["variant"]
    f32 = torch.float32
    report = {}

    # Tokenizer folder: SD1 must reproduce the ids; SD2 (transformers) is known to turn every '!' into 0.
    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ids = torch.tensor(tok(PROMPTS, padding="max_length", max_length=MAX_LEN, truncation=True).input_ids,
                       dtype=torch.int32)
    if name == "tiny-sd1":
        assert torch.equal(ids, ref["tokenizer.ids"])
        report["tokenizer_folder"] = "transformers CLIPTokenizer on tokenizer/ reproduces tokenizer.ids exactly"
    else:
        bad = [i for i in range(len(PROMPTS)) if not torch.equal(ids[i], ref["tokenizer.ids"][i])]
        upto_eos = lambda t: t[: t.index(EOS) + 1]  # noqa: E731
        report["tokenizer_folder"] = (
            f"transformers CLIPTokenizer on tokenizer/ (pad_token '{tok.pad_token}' id {tok.pad_token_id}) "
            f"differs from tokenizer.ids on prompts {bad}: it maps every '!' in the text to 0 "
            f"(e.g. 'wow!' -> {upto_eos(ids[3].tolist())}, '!!!' -> {upto_eos(ids[2].tolist())}); "
            f"tokenizer.ids follow OpenCLIP instead ('wow!' -> {upto_eos(ref['tokenizer.ids'][3].tolist())}, "
            f"'!!!' -> {upto_eos(ref['tokenizer.ids'][2].tolist())})")
        assert bad, "expected transformers' SD2 '!' behaviour"

    te = CLIPTextModel.from_pretrained(out / "text_encoder", variant="fp16", dtype=f32).eval()
    last, skip1 = text_encoder_refs(te, ref["text_encoder.input_ids"])
    assert torch.equal(last, ref["text_encoder.last_hidden_state"]) and torch.equal(skip1, ref["text_encoder.clip_skip1"])

    unet = UNet2DConditionModel.from_pretrained(out / "unet", variant=variant, dtype=f32).eval()
    for k, v in unet_refs(unet, ref["unet.sample"], ref["unet.encoder_hidden_states"]).items():
        assert torch.equal(v, ref[k]), k

    vae = AutoencoderKL.from_pretrained(out / "vae", variant=variant, dtype=f32).eval()
    for k, v in vae_refs(vae, ref["vae.latents"], ref["vae.image"]).items():
        assert torch.equal(v, ref[k]), k
    report["components"] = ("text_encoder, unet and vae reloaded from disk with transformers/diffusers "
                            "(from_pretrained, float32) reproduce every reference bit-exactly")

    # Whole pipeline folder loads with diffusers (sd1 mixes an fp16-only text encoder with fp32 unet/vae).
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe = StableDiffusionPipeline.from_pretrained(out, variant="fp16", dtype=f32)
        report["pipeline"] = "StableDiffusionPipeline.from_pretrained(folder, variant='fp16') loads"
        if pipe.unet.config.sample_size != unet_cfg_sample_size(out):
            # diffusers quirk: unet configs with _diffusers_version < 0.9 and sample_size < 64 (here the
            # verbatim SD 1.5 value "0.6.0") are silently bumped to sample_size 64 by the pipeline, so its
            # default height/width becomes 64 * vae_scale_factor. Always pass height/width explicitly.
            report["pipeline"] += (
                f"; NOTE: the pipeline silently changes unet sample_size {unet_cfg_sample_size(out)} -> "
                f"{pipe.unet.config.sample_size} (unet/config.json _diffusers_version < 0.9 rule) and warns "
                f"({sum('sample_size' in str(w.message) for w in caught)} warning); pass height/width explicitly")
    except Exception as e:  # record, do not fail: the layout mirrors the published repos on purpose
        report["pipeline"] = f"StableDiffusionPipeline.from_pretrained(folder, variant='fp16') fails: {type(e).__name__}: {e}"
    return report


def unet_cfg_sample_size(out: Path) -> int:
    return read_json(out / "unet/config.json")["sample_size"]


# --------------------------------------------------------------------------------------------------------
# reference.json
# --------------------------------------------------------------------------------------------------------
def versions() -> dict:
    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    try:
        import open_clip

        v["open_clip_torch"] = open_clip.__version__
    except ImportError:
        pass
    return v


RULES = [
    "All weights are random (seeds below): LayerNorm/GroupNorm weight = 1 + 0.1*N(0,1), norm bias = 0.1*N(0,1); "
    "Linear/Conv2d weight = N(0,1)/sqrt(fan_in), their bias = 0.1*N(0,1); token embedding N(0,1), position "
    "embedding 0.5*N(0,1). Every parameter was rounded to fp16 precision BEFORE computing references, so fp16 "
    "files hold exactly the weights used; references are float32 on CPU, 1 thread.",
    "Configs are the published SD 1.5 / SD 2.1-base config files (tools/reference/published) with only size "
    "fields changed. model_index.json: safety_checker and feature_extractor set to [null, null] and "
    "requires_safety_checker false (those folders are not shipped). scheduler and tokenizer json copied verbatim.",
    "tiny-sd1 files: text_encoder/model.fp16.safetensors (fp16 only), unet and vae fp32 "
    "diffusion_pytorch_model.safetensors; the vae file uses the OLD mid-block attention names "
    "query/key/value/proj_attn (Linear [C,C]/[C]) like the published SD 1.5 fp32 VAE. tiny-sd2 files: all "
    "three as fp16 variants (*.fp16.safetensors) with the new names to_q/to_k/to_v/to_out.0.",
    "Text-encoder files use the 'text_model.' prefix and contain text_model.embeddings.position_ids "
    "(int64 [1,77], 0..76) like the published files. All safetensors carry metadata {'format': 'pt'}.",
    "tokenizer.ids int32 [P,77]: BOS 49406 first; if too long, the text is cut so that EOS 49407 is the last "
    "kept token (position 76); then padding. tiny-sd1 pads with 49407. tiny-sd2 follows OpenCLIP: '!' in the "
    "text is ordinary ('!' -> 256, '!!!' -> 995, i.e. '!!!</w>') and ONLY the padding after EOS is 0. "
    "(transformers' CLIPTokenizer on the SD2 tokenizer folder wrongly maps every '!' to 0; tiny-sd2 ids are "
    "therefore the tiny-sd1 ids with padding positions replaced by 0.) Text normalisation = transformers' "
    "CLIPTokenizer (NFC, whitespace collapse, lower-case; no ftfy/html unescape).",
    "tokenizer.num_tokens int32 [P]: number of tokens including BOS and EOS BEFORE truncation "
    "(dropped = max(0, num_tokens - 77)).",
    "text_encoder.input_ids = tokenizer.ids[te_prompt_indices]. text_encoder.last_hidden_state = "
    "CLIPTextModel(input_ids) with NO attention mask (as SD pipelines call it) = final_layer_norm(last layer). "
    "text_encoder.clip_skip1 = final_layer_norm(hidden_states[-2]) (diffusers clip_skip=1).",
    "unet.out_tT = UNet2DConditionModel(unet.sample, timestep=torch.tensor(float(T)) (0-d), "
    "encoder_hidden_states=unet.encoder_hidden_states).sample, for T in unet.timesteps. Both batch items "
    "are independent random inputs (no classifier-free-guidance pairing).",
    "vae.decoded = AutoencoderKL.decode(vae.latents).sample: raw decode, no scaling_factor (0.18215) applied, "
    "post_quant_conv included, no clamping. vae.posterior_mean/logvar = encode(vae.image).latent_dist.mean/"
    ".logvar (quant_conv included; logvar already clamped to [-30, 20] by diffusers). vae.image ~ U[-1,1).",
    "reference.safetensors, weight files and configs are byte-identical when the script is re-run.",
]


def tensor_table(ref: dict) -> list:
    return [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in ref.items()]


def write_reference_json(name: str, res: dict, crosscheck: dict) -> None:
    style = STYLES[name]
    doc = OrderedDict()
    doc["description"] = (f"Tiny random {'SD 1.5' if name == 'tiny-sd1' else 'SD 2.1-base'}-style pipeline "
                          "and reference outputs, generated by tools/reference/make_fixtures.py")
    doc["mirrors"] = style["published"]
    doc["versions"] = versions()
    doc["seeds"] = SEEDS[name]
    doc["prompts"] = PROMPTS
    doc["te_prompt_indices"] = TE_PROMPTS
    doc["timesteps"] = TIMESTEPS
    doc["weight_files"] = {
        "text_encoder": f"text_encoder/{style['te_file']}",
        "unet": f"unet/{style['unet_file']}",
        "vae": f"vae/{style['vae_file']}",
    }
    doc["param_counts"] = res["param_counts"]
    doc["text_encoder_attn_implementation"] = res["attn_impl"]
    doc["rules"] = RULES
    doc["tensors"] = tensor_table(res["ref"])
    doc["verification"] = res["verify"]
    doc["open_clip_crosscheck"] = crosscheck
    write_json(FIXTURES / name / "reference.json", doc)


# --------------------------------------------------------------------------------------------------------
def main() -> None:
    # Tokenize once with the SD1 rules (the SD1 tokenizer files: pad '<|endoftext|>').
    with tempfile.TemporaryDirectory() as tmp:
        tmp_tok = Path(tmp)
        for f in ("vocab.json", "merges.txt"):
            shutil.copyfile(CLIP_BPE / f, tmp_tok / f)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(PUBLISHED / "stable-diffusion-v1-5/tokenizer" / f, tmp_tok / f)
        tok = CLIPTokenizer.from_pretrained(tmp_tok)
    sd1_ids, counts = tokenize_sd1(tok, PROMPTS)
    # Sanity anchors: well-known ids.
    assert sd1_ids[0, :12].tolist() == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]
    assert sd1_ids[3, :4].tolist() == [49406, 2781, 256, 49407]  # "wow!"
    assert sd1_ids[2, :3].tolist() == [49406, 995, 49407]  # "!!!"
    assert counts[12] > MAX_LEN and counts[13] == MAX_LEN and counts[14] == MAX_LEN + 1
    crosscheck = open_clip_crosscheck(sd1_ids, sd2_from_sd1(sd1_ids, counts))

    for name in STYLES:
        res = build(name, sd1_ids, counts)
        write_reference_json(name, res, crosscheck)
        print(f"== {name}: params {res['param_counts']}")
        for k, v in res["ref"].items():
            print(f"   {k:34s} {str(list(v.shape)):18s} {str(v.dtype):14s}"
                  + (f" std {v.float().std():.4f}" if v.is_floating_point() else ""))
        for k, v in res["verify"].items():
            print(f"   verify {k}: {v}")

    # Summary: sizes and hashes (for the determinism check).
    total = 0
    for p in sorted(FIXTURES.glob("tiny-sd[12]/**/*")):
        if p.is_file():
            b = p.read_bytes()
            total += len(b)
            print(f"{len(b):>9d}  {hashlib.sha256(b).hexdigest()[:16]}  {p.relative_to(REPO)}")
    print(f"total {total} bytes (vocab.json/merges.txt counted twice)")
    print(f"open_clip cross-check: {crosscheck.get('status')}, differing prompts: {crosscheck.get('prompts_differing')}")


if __name__ == "__main__":
    main()
