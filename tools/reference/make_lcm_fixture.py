#!/usr/bin/env python3
"""Build tests/fixtures/tiny-lcm (a tiny LCM_Dreamshaper_v7-style pipeline) and its whole-pipeline references.

What it makes
-------------
    tests/fixtures/tiny-lcm/   mirrors SimianLuo/LCM_Dreamshaper_v7 (an SD 1.5 fine-tune, LCM-distilled)
        model_index.json              published LCM model_index (LatentConsistencyModelPipeline, LCMScheduler) with
                                      safety_checker / feature_extractor [null, null], requires_safety_checker false
                                      (as make_fixtures.py does for tiny-sd1)
        scheduler/scheduler_config.json   the published LCM scheduler config, verbatim
        tokenizer/*, text_encoder/{config.json, model.fp16.safetensors}, vae/{config.json,
        diffusion_pytorch_model.safetensors}   byte-for-byte copies of tests/fixtures/tiny-sd1 (run make_fixtures.py
                                      first); the sha256 of each copy is recorded in pipeline/cases.json
        unet/config.json              the published LCM unet config with tiny-sd1's size fields and
                                      time_cond_proj_dim 32 (published: 256); same architecture as tiny-sd1's U-Net
                                      plus time_embedding.cond_proj (Linear 32 -> 16, no bias)
        unet/diffusion_pytorch_model.fp16.safetensors   the only U-Net file (fp16 variant); random weights initialised
                                      as in make_fixtures.py (cond_proj too), rounded to fp16 precision, so the
                                      float32 references use exactly the stored weights
        pipeline/<case>.safetensors, pipeline/cases.json   same format as make_pipeline_fixtures.py writes (see its
                                      docstring), from diffusers' LatentConsistencyModelPipeline run for real,
                                      plus two tensors per case:
            w_embedding  [1,32]       the guidance-scale embedding the pipeline passed to the U-Net as
                                      timestep_cond (captured with a forward pre-hook; equal at every step)
            denoised     [S,1,4,8,8]  LCMScheduler.step(...)[1] at each step (the boundary-condition x0 estimate)

LatentConsistencyModelPipeline specifics (diffusers 0.42.1)
-----------------------------------------------------------
* No classifier-free guidance ever (do_classifier_free_guidance is hard-wired False): the prompt alone is encoded
  (text_ids [1,77]), no negative prompt is accepted, the U-Net runs batch 1 and model_outputs are its raw output.
  The guidance scale only enters through w_embedding.
* w = torch.tensor(guidance_scale - 1).repeat(batch)  (Python double subtraction, then float32)
  get_guidance_scale_embedding(w, embedding_dim=unet.config.time_cond_proj_dim, dtype=float32):
      w = w * 1000.0                                          (float32)
      half = dim // 2
      e = torch.log(torch.tensor(10000.0)) / (half - 1)       (float32 log, float32 divide by the int)
      e = torch.exp(torch.arange(half, dtype=float32) * -e)  (float32)
      e = w[:, None] * e[None, :]                             (float32)
      emb = cat([sin(e), cos(e)], dim=1)                      (sin FIRST, then cos; zero pad if dim odd)
  guidance_scale 1.0 gives w = 0: emb = [0]*16 + [1]*16, which still goes through cond_proj.
* U-Net: unet(latents, t, timestep_cond=w_embedding, encoder_hidden_states=prompt_embeds); inside
  TimestepEmbedding: linear_2(silu(linear_1(t_proj + cond_proj(w_embedding)))), t_proj = the usual sinusoidal
  timestep projection (flip_sin_to_cos true, freq_shift 0).
* latents * scheduler.init_noise_sigma (1.0 for LCM): start_latents == latents.
* Each step: latents, denoised = scheduler.step(model_pred, t, latents). step_latents are those `latents` (=
  prev_sample, as callback_on_step_end sees them). Noise is drawn at every step but the last; at the last step
  prev_sample IS denoised. After the loop the pipeline decodes `denoised` (not `latents`): vae.decode(denoised /
  scaling_factor). Asserted: denoised[-1] == step_latents[-1] == final_latents bit for bit, and the decoder input
  == final_latents / scaling_factor.

How to run (from the repository root, after make_fixtures.py; ~15 s on 2 cores):

    /tmp/refenv/bin/python tools/reference/make_lcm_fixture.py

Deterministic: a re-run writes byte-identical files (same machine/library versions, tools/reference/requirements.txt).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import make_fixtures as mf  # noqa: E402  (weights init, config helpers)
import make_pipeline_fixtures as mpf  # noqa: E402  (noise injection, instrumentation, json style)
from diffusers import AutoencoderKL, LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

REPO = mpf.REPO
FIXTURES = mpf.FIXTURES
PUB_LCM = mpf.PUBLISHED / "LCM_Dreamshaper_v7"  # verbatim copies of the shared model notes' reconstructions
SRC = FIXTURES / "tiny-sd1"
OUT = FIXTURES / "tiny-lcm"
MODEL = "tiny-lcm"

UNET_SEED = 3002  # tiny-sd1 uses 1002, tiny-sd2 2002
TIME_COND_PROJ_DIM = 32  # published: 256
UNET_OVERRIDES = {**mf.STYLES["tiny-sd1"]["unet"], "time_cond_proj_dim": TIME_COND_PROJ_DIM}
UNET_FILE = "diffusion_pytorch_model.fp16.safetensors"

# Copied byte-for-byte from tiny-sd1.
COPIED = [
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]

PROMPT = mpf.PROMPT
HEIGHT = WIDTH = 64
LATENT_SHAPE = mpf.LATENT_SHAPE
POOL = mpf.POOL
MOD_LCM = mpf.SCHED_MODULE["LCMScheduler"]

NOTE = ("LatentConsistencyModelPipeline: no CFG (do_classifier_free_guidance is always False; the guidance scale "
        "only enters as w_embedding = get_guidance_scale_embedding(guidance_scale - 1, time_cond_proj_dim), passed "
        "to the U-Net as timestep_cond). step_latents = scheduler.step(...)[0] = prev_sample (the pipeline's "
        "`latents`); denoised = scheduler.step(...)[1]. The pipeline decodes `denoised` of the last step, which is "
        "bit-identical to prev_sample there (LCM injects no noise at the last step), so final_latents = "
        "step_latents[-1] = denoised[-1] (asserted).")
CASES = [
    dict(name="lcm_pipe_2", steps=2, guidance=8.5, notes=[NOTE]),
    dict(name="lcm_pipe_4", steps=4, guidance=8.5, notes=[NOTE]),
    dict(name="lcm_pipe_g1_3", steps=3, guidance=1.0,
         notes=[NOTE, "guidance_scale 1.0 -> w = 0 -> w_embedding = [sin(0)]*16 + [cos(0)]*16 = [0]*16 + [1]*16 "
                      "(not all zero: cond_proj still adds cond_proj.weight[:, 16:].sum(1) to the timestep "
                      "projection)."]),
]

RULES = [
    "Pipeline: LatentConsistencyModelPipeline.from_pretrained(tests/fixtures/tiny-lcm, variant='fp16', "
    "dtype=float32): unet/diffusion_pytorch_model.fp16.safetensors and text_encoder/model.fp16.safetensors are "
    "fp16 variants (values exactly representable, upcast to float32), the VAE has no fp16 file and diffusers "
    "falls back to vae/diffusion_pytorch_model.safetensors (fp32, old attention names). CPU, float32, 1 thread. "
    "height=width=64 are always passed.",
    "Scheduler: LCMScheduler.from_config(the model folder's scheduler_config.json = the published LCM_Dreamshaper_v7 "
    "one, verbatim); 'scheduler_config' is dict(pipe.scheduler.config). timestep_scaling is absent from the "
    "published file, so LCMScheduler's default 10.0 is used (listed in _use_default_values).",
    "Call: prompt, num_inference_steps, guidance_scale, generator=torch.Generator().manual_seed(0) (unused: every "
    "draw is injected), latents=<latents>, height=width=64, callback_on_step_end with tensor inputs [latents, "
    "denoised], output_type='pil'. No negative_prompt (the LCM pipeline has none), no eta.",
    "No CFG: the prompt alone is encoded (text_ids [1,77]); the U-Net runs batch 1 on the latents (LCM's "
    "scale_model_input is the identity) with timestep_cond=w_embedding; model_outputs = its raw output.",
    "w_embedding [1,32] float32: w = torch.tensor(guidance_scale - 1).repeat(1) (float32); w = w * 1000.0; "
    "e = log(float32 10000) / 15; f_j = exp(arange(16, float32) * -e); a_j = w * f_j; emb = [sin(a_0..a_15), "
    "cos(a_0..a_15)] (sin first), all float32 ops. Captured from the U-Net's forward kwargs; identical at every step.",
    "LCM step (epsilon): x0 = (sample - sqrt(1 - a_t) * eps) / sqrt(a_t); denoised = c_out * x0 + c_skip * sample "
    "(timestep_scaling 10); prev_sample = sqrt(a_prev) * denoised + sqrt(1 - a_prev) * noise[k] except at the last "
    "step, where prev_sample = denoised and nothing is drawn. step_latents = prev_sample, denoised stored "
    "separately; the pipeline decodes denoised[-1] / scaling_factor (== step_latents[-1] / scaling_factor).",
    "Noise injection: as make_pipeline_fixtures.py; noise[k] is the k-th draw (LCMScheduler, steps 0..S-2).",
    "float -> uint8 (VaeImageProcessor.postprocess + numpy_to_pil): y = (x * 0.5 + 0.5).clamp(0, 1) in torch float32, "
    "then numpy float32 (y * 255).round().astype('uint8') (round half to even). Asserted equal to the PIL image.",
    "Seeds: seed = zlib.crc32('tiny-lcm/<case>'); latents = torch.randn([1,4,8,8], generator=Generator().manual_seed("
    "seed)); noise pool = torch.randn([8,1,4,8,8], generator=Generator().manual_seed(seed + 1)), draws used in order.",
]


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------------
# Model folder
# --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def build_model() -> dict:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    model_index = mf.read_json(PUB_LCM / "model_index.json")
    assert model_index["_class_name"] == "LatentConsistencyModelPipeline"
    assert model_index["scheduler"] == ["diffusers", "LCMScheduler"]
    model_index["feature_extractor"] = [None, None]
    model_index["safety_checker"] = [None, None]
    model_index["requires_safety_checker"] = False
    mf.write_json(OUT / "model_index.json", model_index)

    (OUT / "scheduler").mkdir()
    shutil.copyfile(PUB_LCM / "scheduler/scheduler_config.json", OUT / "scheduler/scheduler_config.json")

    copies = OrderedDict()
    for rel in COPIED:
        (OUT / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SRC / rel, OUT / rel)
        copies[rel] = sha256(OUT / rel)
        assert copies[rel] == sha256(SRC / rel)

    unet_cfg = mf.derived_config(PUB_LCM, "unet/config.json", UNET_OVERRIDES)
    mf.write_json(OUT / "unet/config.json", unet_cfg)
    unet = UNet2DConditionModel.from_config(dict(unet_cfg)).eval()
    cp = unet.time_embedding.cond_proj
    assert isinstance(cp, torch.nn.Linear) and cp.bias is None and tuple(cp.weight.shape) == (16, TIME_COND_PROJ_DIM)
    stats = mf.init_weights(unet, UNET_SEED)
    sd = mf.to_file_dtype(unet.state_dict(), torch.float16)
    mf.save_st(sd, OUT / "unet" / UNET_FILE)

    # Same architecture as tiny-sd1's U-Net, plus cond_proj.
    sd1 = load_file(str(SRC / "unet/diffusion_pytorch_model.safetensors"))
    ours = {k: tuple(v.shape) for k, v in sd.items()}
    theirs = {k: tuple(v.shape) for k, v in sd1.items()}
    extra = sorted(set(ours) - set(theirs))
    assert extra == ["time_embedding.cond_proj.weight"] and not set(theirs) - set(ours), extra
    assert all(ours[k] == theirs[k] for k in theirs)
    sd1_cfg = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SRC / "unet")).config
    cfg_diff = OrderedDict()
    for k in sorted(set(unet.config) | set(sd1_cfg)):
        if k.startswith("_"):
            continue
        a, b = unet.config.get(k), sd1_cfg.get(k)
        if a != b:
            cfg_diff[k] = {"tiny-lcm": a, "tiny-sd1": b}
    return {"unet": unet, "unet_cfg": unet_cfg, "copies": copies, "params": stats["parameters"],
            "config_diff_vs_tiny_sd1": cfg_diff}


@torch.no_grad()
def verify_model(pipe: LatentConsistencyModelPipeline, built: dict) -> OrderedDict:
    rep = OrderedDict()
    assert pipe.unet.config.time_cond_proj_dim == TIME_COND_PROJ_DIM
    for k, v in built["unet"].state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[k], v), k
    rep["unet"] = ("UNet2DConditionModel from unet/diffusion_pytorch_model.fp16.safetensors (variant fp16) equals the "
                   "in-memory float32 weights bit for bit")
    te = CLIPTextModel.from_pretrained(SRC / "text_encoder", variant="fp16", dtype=torch.float32)
    for k, v in te.state_dict().items():
        assert torch.equal(pipe.text_encoder.state_dict()[k], v), k
    vae = AutoencoderKL.from_pretrained(SRC / "vae", dtype=torch.float32)
    for k, v in vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[k], v), k
    rep["text_encoder_vae"] = "the pipeline's text encoder and VAE equal tiny-sd1's (same files)"
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.unet.config.sample_size == built["unet_cfg"]["sample_size"]  # 0.22.0.dev0: no sample_size bump
    rep["pipeline"] = ("LatentConsistencyModelPipeline.from_pretrained(folder, variant='fp16', dtype=float32) loads "
                       "(LCMScheduler; unet sample_size stays 8: _diffusers_version 0.22.0.dev0)")
    return rep


# --------------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def run_case(pipe: LatentConsistencyModelPipeline, c: dict):
    sched = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = sched

    seed = zlib.crc32(f"{MODEL}/{c['name']}".encode())
    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    pool = torch.randn((POOL,) + LATENT_SHAPE, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float32)

    cb_latents, cb_denoised, cb_t = [], [], []

    def on_step_end(p, i, t, kw):
        assert i == len(cb_latents)
        cb_latents.append(kw["latents"].clone())
        cb_denoised.append(kw["denoised"].clone())
        cb_t.append(t.clone() if torch.is_tensor(t) else torch.tensor(t))
        return kw

    unet_calls = []

    def unet_hook(module, args, kwargs):
        unet_calls.append({"sample": args[0].clone(), "t": args[1].clone() if torch.is_tensor(args[1]) else args[1],
                           "timestep_cond": kwargs["timestep_cond"].clone(),
                           "ehs": kwargs["encoder_hidden_states"].clone()})

    kwargs = dict(prompt=PROMPT, num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                  generator=torch.Generator().manual_seed(0), latents=latents.clone(), height=HEIGHT, width=WIDTH,
                  output_type="pil", callback_on_step_end=on_step_end,
                  callback_on_step_end_tensor_inputs=["latents", "denoised"])

    rec = {}
    denoised_out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mpf.instrument(pipe, sched, rec), mpf.injected_randn(pool, rec) as patched:
            inner = sched.step  # instrument's wrapper (records prev_sample); also keep step(...)[1] = denoised

            @functools.wraps(inner)
            def step(*a, **k):
                out = inner(*a, **k)
                denoised_out.append(out[1].detach().clone())
                return out

            sched.step = step
            h = pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True)
            try:
                out = pipe(**kwargs)
            finally:
                h.remove()
    image = np.array(out.images[0])
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)

    # ---- checks ------------------------------------------------------------------------------------------
    steps = rec["steps"]
    S = len(steps)
    assert S == c["steps"] == len(unet_calls) == len(denoised_out)
    assert pipe.do_classifier_free_guidance is False
    sched_ts = sched.timesteps.clone()
    assert sched_ts.dtype == torch.int64
    assert torch.equal(torch.stack([s["t"] for s in steps]), sched_ts)
    assert sched.init_noise_sigma == 1.0
    start = latents * sched.init_noise_sigma
    assert torch.equal(steps[0]["sample"], start) and torch.equal(start, latents)
    assert [s["t"].item() for s in steps] == [t.item() for t in cb_t]

    w = torch.tensor(c["guidance"] - 1).repeat(1)
    w_emb = pipe.get_guidance_scale_embedding(w, embedding_dim=pipe.unet.config.time_cond_proj_dim)
    assert w_emb.dtype == torch.float32 and w_emb.shape == (1, TIME_COND_PROJ_DIM)
    assert torch.equal(w_emb, guidance_embedding_written_out(c["guidance"] - 1, TIME_COND_PROJ_DIM))
    for i, call in enumerate(unet_calls):
        assert torch.equal(call["timestep_cond"], w_emb), "U-Net got a different w_embedding"
        assert torch.equal(call["sample"], steps[i]["sample"]) and call["t"].item() == steps[i]["t"].item()
        assert torch.equal(call["ehs"], unet_calls[0]["ehs"]) and call["ehs"].shape[0] == 1
        # model_outputs = the raw U-Net output (no CFG): recompute to be sure
        again = pipe.unet(call["sample"], call["t"], timestep_cond=w_emb, encoder_hidden_states=call["ehs"],
                          return_dict=False)[0]
        assert torch.equal(again, steps[i]["model_output"])
    # The w-embedding matters: without it (zeros) the U-Net output changes.
    c0 = unet_calls[0]
    plain = pipe.unet(c0["sample"], c0["t"], timestep_cond=torch.zeros_like(w_emb), encoder_hidden_states=c0["ehs"],
                      return_dict=False)[0]
    w_effect = float((plain - steps[0]["model_output"]).abs().max())
    assert w_effect > 1e-3, w_effect

    for i in range(S):
        assert torch.equal(cb_latents[i], steps[i]["prev_sample"])
        assert torch.equal(cb_denoised[i], denoised_out[i])
        if i + 1 < S:
            assert torch.equal(steps[i + 1]["sample"], steps[i]["prev_sample"])
            assert not torch.equal(steps[i]["prev_sample"], denoised_out[i])
    assert torch.equal(steps[-1]["prev_sample"], denoised_out[-1]), "last step: prev_sample != denoised"
    final = denoised_out[-1]  # what the pipeline decodes
    (dec,) = rec["decode"]
    assert torch.equal(dec["in"], final / pipe.vae.config.scaling_factor), "decoder input != denoised / sf"
    image_float = dec["out"]
    assert np.array_equal(mpf.to_uint8(image_float), image), "float->uint8 rule does not reproduce the PIL image"

    sources = rec["sources"]
    assert sources == [MOD_LCM] * (S - 1), sources
    K = len(rec["draws"])
    noise = torch.stack(rec["draws"]) if K else torch.zeros((0,) + LATENT_SHAPE)
    assert torch.equal(noise, pool[:K])

    (te_ids,) = rec["text_ids"]
    text_ids = te_ids.to(torch.int32)
    assert text_ids.shape == (1, 77)

    # ---- tensors (same names/order as make_pipeline_fixtures.py, then the LCM extras) ---------------------
    t = OrderedDict()
    t["latents"] = latents
    t["noise"] = noise
    t["timesteps"] = sched_ts.to(torch.float32)
    t["start_latents"] = steps[0]["sample"]
    t["model_outputs"] = torch.stack([s["model_output"] for s in steps])
    t["step_latents"] = torch.stack(cb_latents)
    t["final_latents"] = final
    t["image_float"] = image_float
    t["image"] = torch.from_numpy(image)
    t["text_ids"] = text_ids
    t["w_embedding"] = w_emb
    t["denoised"] = torch.stack(denoised_out)
    t = OrderedDict((k, v.detach().contiguous()) for k, v in t.items())
    for k, v in t.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k

    # ---- json entry (make_pipeline_fixtures.py schema + w_embedding) ----------------------------------------
    e = OrderedDict()
    e["case"] = c["name"]
    e["file"] = f"{c['name']}.safetensors"
    e["pipeline"] = type(pipe).__name__
    e["prompt"] = PROMPT
    e["negative_prompt"] = None
    e["num_inference_steps"] = c["steps"]
    e["steps_run"] = S
    e["guidance_scale"] = c["guidance"]
    e["do_classifier_free_guidance"] = False
    e["strength"] = None
    e["width"], e["height"] = WIDTH, HEIGHT
    e["eta"] = None
    e["scheduler_class"] = type(sched).__name__
    e["scheduler_config_source"] = (f"tests/fixtures/{MODEL}/scheduler/scheduler_config.json (as loaded by the "
                                    "pipeline; = tools/reference/published/LCM_Dreamshaper_v7/scheduler/"
                                    "scheduler_config.json verbatim)")
    e["scheduler_overrides"] = {}
    e["scheduler_config"] = dict(sched.config)
    e["init_noise_sigma"] = float(sched.init_noise_sigma)
    e["timesteps"] = [s["t"].item() for s in steps]
    e["timesteps_dtype"] = str(sched_ts.dtype).replace("torch.", "")
    e["vae_scaling_factor"] = pipe.vae.config.scaling_factor
    e["noise_draws"] = K
    e["noise_sources"] = sources
    e["seed"] = seed
    e["w_embedding"] = OrderedDict([
        ("w", float(w.item())),
        ("embedding_dim", TIME_COND_PROJ_DIM),
        ("formula", "w = tensor(guidance_scale - 1, float32) * 1000; f_j = exp(arange(16) * -(log(10000) / 15)); "
                    "a_j = w * f_j; [sin(a_0..15), cos(a_0..15)] (all float32)"),
        ("unet_output_change_if_zeroed", w_effect),
    ])
    e["decoded"] = "denoised[-1] / vae_scaling_factor (== step_latents[-1] == final_latents, bit-identical)"
    e["tensors"] = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in t.items()]
    e["notes"] = c["notes"]
    return t, e, patched


def guidance_embedding_written_out(w: float, dim: int) -> torch.Tensor:
    """get_guidance_scale_embedding for one w, op by op (must equal diffusers bit for bit)."""
    wt = torch.tensor(w, dtype=torch.float32) * 1000.0
    half = dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    f = torch.exp(torch.arange(half, dtype=torch.float32) * -step)
    a = wt * f
    return torch.cat([torch.sin(a), torch.cos(a)])[None]


def main() -> None:
    built = build_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = LatentConsistencyModelPipeline.from_pretrained(OUT, variant="fp16", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    verification = verify_model(pipe, built)
    model_sched = OrderedDict(pipe.scheduler.config)

    out_dir = OUT / "pipeline"
    out_dir.mkdir(parents=True)
    entries, patched_all = [], set()
    for c in CASES:
        tensors, entry, patched = run_case(pipe, c)
        patched_all.update(patched)
        mf.save_st(dict(tensors), out_dir / entry["file"])
        entries.append(entry)
        print(f"{MODEL} {c['name']:14s} K={entry['noise_draws']} t={entry['timesteps']} "
              f"w={entry['w_embedding']['w']} w_effect={entry['w_embedding']['unet_output_change_if_zeroed']:.3g}")

    doc = OrderedDict()
    doc["description"] = (f"Whole-pipeline references for {MODEL} (LatentConsistencyModelPipeline), generated by "
                          "tools/reference/make_lcm_fixture.py (see its docstring and make_pipeline_fixtures.py's "
                          "for every tensor).")
    doc["versions"] = mpf.versions()
    doc["model"] = MODEL
    doc["model_scheduler_config"] = model_sched
    doc["rules"] = RULES
    doc["noise_injection"] = {
        "replaced": "diffusers.utils.torch_utils.randn_tensor, in every loaded module namespace holding it",
        "patched_modules": sorted(patched_all),
        "forbidden_during_call": [f"torch.{n}" for n in mpf._FORBIDDEN],
    }
    doc["model_build"] = OrderedDict([
        ("mirrors", "SimianLuo/LCM_Dreamshaper_v7"),
        ("published_configs", "tools/reference/published/LCM_Dreamshaper_v7/{model_index.json, "
                              "scheduler/scheduler_config.json, unet/config.json}"),
        ("copied_from_tiny_sd1", built["copies"]),
        ("unet_config_overrides", UNET_OVERRIDES),
        ("unet_config_diff_vs_tiny_sd1_as_loaded", built["config_diff_vs_tiny_sd1"]),
        ("unet_seed", UNET_SEED),
        ("unet_parameters", built["params"]),
        ("unet_file", f"unet/{UNET_FILE} (fp16 only; the published repo ships fp32 unet/diffusion_pytorch_model."
                      "safetensors only)"),
        ("weights", mf.RULES[0]),
        ("verification", verification),
    ])
    doc["cases"] = entries
    mpf.write_json(out_dir / "cases.json", doc)

    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            b = p.read_bytes()
            total += len(b)
            print(f"{len(b):>9d}  {hashlib.sha256(b).hexdigest()[:16]}  {p.relative_to(REPO)}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
