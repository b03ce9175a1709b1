#!/usr/bin/env python3
"""Build tests/fixtures/tiny-sdxl (a tiny stabilityai/sdxl-turbo-style pipeline) and its diffusers references.

What it makes
-------------
    tests/fixtures/tiny-sdxl/   mirrors stabilityai/sdxl-turbo file for file (the fp16 variant files only)
        model_index.json                 published (StableDiffusionXLPipeline, force_zeros_for_empty_prompt true)
        scheduler/scheduler_config.json  published, verbatim (EulerAncestral, timestep_spacing "trailing")
        tokenizer/, tokenizer_2/         CLIP BPE (tools/reference/clip-tokenizer) + the published tokenizer_config /
                                         special_tokens_map (tokenizer pads with <|endoftext|>, tokenizer_2 with "!")
        text_encoder/                    CLIPTextModel, hidden 16, 3 layers (published: ViT-L, 768, 12 layers)
        text_encoder_2/                  CLIPTextModelWithProjection, hidden 24, 3 layers, projection 20
                                         (published: OpenCLIP bigG, 1280, 32 layers, projection 1280)
        unet/                            SDXL layout: [DownBlock2D, CrossAttn, CrossAttn], channels [16, 32, 32],
                                         transformer_layers_per_block [1, 2, 3] (published [1, 2, 10]),
                                         addition_embed_type text_time, addition_time_embed_dim 8 (256),
                                         projection_class_embeddings_input_dim 6*8 + 20 = 68 (2816),
                                         cross_attention_dim 16 + 24 = 40 (2048)
        vae/                             [16, 32, 32, 32] (published [128, 256, 512, 512]); scaling 0.13025 and
                                         force_upcast true kept
        reference.safetensors            component references (below)
        pipeline/cases.json, pipeline/<case>.safetensors   whole-pipeline replays, make_pipeline_fixtures.py format

All configs are the published ones with only size fields changed (tools/reference/published/sdxl-turbo are verbatim
copies of the project's shared model notes; sha256 of model_index.json and scheduler_config.json equal the pinned
published ones). Weights: make_fixtures.init_weights (random, rounded to fp16), stored as fp16 variant files.

reference.safetensors (float32 unless said)
    te.input_ids        int32 [2,77]  tokenizer ids of PROMPTS (tokenizer: pad 49407)
    te2.input_ids       int32 [2,77]  tokenizer_2 ids (pad 0 = "!")
    te.penultimate      [2,77,16]     text_encoder(..., output_hidden_states=True).hidden_states[-2] (what SDXL uses:
                                      no final layer norm)
    te2.penultimate     [2,77,24]     the same for text_encoder_2
    te2.text_embeds     [2,20]        text_encoder_2(...).text_embeds = text_projection(final_layer_norm(last hidden
                                      state at the first EOS)) -- transformers' eos_token_id 2 legacy path: argmax id
    unet.sample [2,4,8,8], unet.encoder_hidden_states [2,77,40], unet.text_embeds [2,20], unet.time_ids [2,6]
    unet.out_t{1,500,999} [2,4,8,8]   unet(sample, t, ehs, added_cond_kwargs={text_embeds, time_ids}).sample
    unet.out_t500_zero_added          the same at t 500 with text_embeds and time_ids zero (the added embedding
                                      still contributes linear_2(silu(linear_1(0))))
    vae.latents [1,4,8,8], vae.decoded [1,3,64,64]   raw decode (no scaling factor)

Pipeline cases (StableDiffusionXLPipeline, add_watermarker=False, height=width=64, CPU float32, 1 thread):
    eulera_turbo_1   the published scheduler (EulerAncestral trailing), 1 step, guidance 0.0 -- how sdxl-turbo ships
    dpmpp2m_g5_3     DPMSolverMultistepScheduler.from_config(published), 3 steps, guidance 5.0, negative_prompt None:
                     force_zeros_for_empty_prompt makes the unconditional context AND pooled embedding zeros
    img2img_eulera_turbo_2   StableDiffusionXLImg2ImgPipeline (same folder), the published scheduler, 2 steps,
                     strength 0.5 (one step runs), guidance 0, image = make_pipeline_fixtures.synthetic_image(); draws:
                     the VAE posterior sample, the noise add_noise mixes in, the ancestral step's
                     (requires_aesthetics_score false: add_time_ids as txt2img's, from the image's size)
Micro-conditioning defaults: original_size = target_size = (64, 64), crops (0, 0) -> add_time_ids [64,64,0,0,64,64],
the same for the negative half. Noise is injected as make_pipeline_fixtures.py does (every randn_tensor draw from a
seeded pool, recorded in order).

How to run (from the repository root, ~20 s on 2 cores; /tmp/refenv as in make_fixtures.py):

    /tmp/refenv/bin/python tools/reference/make_sdxl_fixture.py
"""

from __future__ import annotations

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

import make_fixtures as mf  # noqa: E402
import make_pipeline_fixtures as mpf  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

PUB = mpf.PUBLISHED / "sdxl-turbo"
OUT = mpf.FIXTURES / "tiny-sdxl"
MODEL = "tiny-sdxl"
SEEDS = {"text_encoder": 5001, "text_encoder_2": 5002, "unet": 5003, "vae": 5004, "inputs": 5101}
TE = {"hidden_size": 16, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3,
      "projection_dim": 16}
TE2 = {"hidden_size": 24, "intermediate_size": 96, "num_attention_heads": 2, "num_hidden_layers": 3,
       "projection_dim": 20}
TIME_DIM = 8
UNET = {"block_out_channels": [16, 32, 32], "attention_head_dim": [2, 4, 4], "transformer_layers_per_block": [1, 2, 3],
        "norm_num_groups": 8, "sample_size": 8, "addition_time_embed_dim": TIME_DIM,
        "projection_class_embeddings_input_dim": 6 * TIME_DIM + TE2["projection_dim"],
        "cross_attention_dim": TE["hidden_size"] + TE2["hidden_size"]}
VAE = {"block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}
FILES = {"text_encoder": "model.fp16.safetensors", "text_encoder_2": "model.fp16.safetensors",
         "unet": "diffusion_pytorch_model.fp16.safetensors", "vae": "diffusion_pytorch_model.fp16.safetensors"}
PROMPTS = ["a photo of an astronaut riding a horse on mars", ""]
TIMESTEPS = [1, 500, 999]
PROMPT = mpf.PROMPT
HEIGHT = WIDTH = 64
LATENT_SHAPE = mpf.LATENT_SHAPE
INIT = mpf.synthetic_image()
CASES = [
    dict(name="eulera_turbo_1", sched=None, steps=1, guidance=0.0),
    dict(name="dpmpp2m_g5_3", sched=DPMSolverMultistepScheduler, steps=3, guidance=5.0),
    # sdxl-turbo's documented img2img call: 2 steps at strength 0.5 (one step runs), guidance 0.
    dict(name="img2img_eulera_turbo_2", sched=None, steps=2, guidance=0.0, strength=0.5),
]
SCHED_MODULE = {"EulerAncestralDiscreteScheduler": mpf.SCHED_MODULE["EulerAncestralDiscreteScheduler"],
                "DPMSolverMultistepScheduler": mpf.SCHED_MODULE["DPMSolverMultistepScheduler"]}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def clip_state_dict(te) -> dict:
    """Published layout: 'text_model.' prefix (transformers 5 flattened it), position_ids buffer, text_projection."""
    sd = {}
    for k, v in te.state_dict().items():
        if not k.startswith(("text_model.", "text_projection.")):
            k = "text_model." + k
        sd[k] = v
    sd["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return sd


@torch.no_grad()
def build() -> dict:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    mi = mf.read_json(PUB / "model_index.json")
    assert mi["_class_name"] == "StableDiffusionXLPipeline" and mi["force_zeros_for_empty_prompt"] is True
    mf.write_json(OUT / "model_index.json", mi)
    (OUT / "scheduler").mkdir()
    shutil.copyfile(PUB / "scheduler/scheduler_config.json", OUT / "scheduler/scheduler_config.json")
    for tok in ("tokenizer", "tokenizer_2"):
        (OUT / tok).mkdir()
        for f in ("vocab.json", "merges.txt"):
            shutil.copyfile(mf.CLIP_BPE / f, OUT / tok / f)
        for f in ("tokenizer_config.json", "special_tokens_map.json"):
            shutil.copyfile(PUB / tok / f, OUT / tok / f)

    models = {}
    for name, over, cls in (("text_encoder", TE, CLIPTextModel), ("text_encoder_2", TE2, CLIPTextModelWithProjection)):
        cfg = mf.derived_config(PUB, f"{name}/config.json", over)
        mf.write_json(OUT / name / "config.json", cfg)
        m = cls(CLIPTextConfig.from_dict(dict(cfg))).float().eval()  # config torch_dtype float16
        mf.init_weights(m, SEEDS[name])
        mf.save_st(mf.to_file_dtype(clip_state_dict(m), torch.float16), OUT / name / FILES[name])
        models[name] = m
    cfg = mf.derived_config(PUB, "unet/config.json", UNET)
    mf.write_json(OUT / "unet/config.json", cfg)
    unet = UNet2DConditionModel.from_config(dict(cfg)).eval()
    mf.init_weights(unet, SEEDS["unet"])
    mf.save_st(mf.to_file_dtype(unet.state_dict(), torch.float16), OUT / "unet" / FILES["unet"])
    depth = [len(b.attentions[0].transformer_blocks) for b in unet.down_blocks if hasattr(b, "attentions")]
    assert depth == [2, 3], depth
    cfg = mf.derived_config(PUB, "vae/config.json", VAE)
    mf.write_json(OUT / "vae/config.json", cfg)
    vae = AutoencoderKL.from_config(dict(cfg)).eval()
    mf.init_weights(vae, SEEDS["vae"])
    mf.save_st(mf.to_file_dtype(vae.state_dict(), torch.float16), OUT / "vae" / FILES["vae"])
    models["unet"], models["vae"] = unet, vae
    return models


@torch.no_grad()
def references(m: dict) -> OrderedDict:
    ref = OrderedDict()
    tok = CLIPTokenizer.from_pretrained(OUT / "tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(OUT / "tokenizer_2")
    enc = lambda t: t(PROMPTS, padding="max_length", max_length=77, truncation=True,  # noqa: E731
                      return_tensors="pt").input_ids
    ids, ids2 = enc(tok), enc(tok2)
    assert ids[1, 2] == 49407 and ids2[1, 2] == 0, "pad tokens: <|endoftext|> for tokenizer, '!' for tokenizer_2"
    ref["te.input_ids"], ref["te2.input_ids"] = ids.to(torch.int32), ids2.to(torch.int32)
    o1 = m["text_encoder"](input_ids=ids, output_hidden_states=True)
    o2 = m["text_encoder_2"](input_ids=ids2, output_hidden_states=True)
    ref["te.penultimate"] = o1.hidden_states[-2].contiguous()
    ref["te2.penultimate"] = o2.hidden_states[-2].contiguous()
    ref["te2.text_embeds"] = o2.text_embeds.contiguous()
    g = torch.Generator().manual_seed(SEEDS["inputs"])
    ref["unet.sample"] = mf.randn(g, (2, 4, 8, 8))
    ref["unet.encoder_hidden_states"] = mf.randn(g, (2, 77, UNET["cross_attention_dim"]))
    ref["unet.text_embeds"] = mf.randn(g, (2, TE2["projection_dim"]))
    ref["unet.time_ids"] = torch.tensor([[64, 64, 0, 0, 64, 64], [512, 768, 16, 32, 1024, 1024]], dtype=torch.float32)
    unet = m["unet"]

    def run(t, te, ti):
        return unet(ref["unet.sample"], torch.tensor(float(t)), encoder_hidden_states=ref["unet.encoder_hidden_states"],
                    added_cond_kwargs={"text_embeds": te, "time_ids": ti}).sample.contiguous()

    for t in TIMESTEPS:
        ref[f"unet.out_t{t}"] = run(t, ref["unet.text_embeds"], ref["unet.time_ids"])
    ref["unet.out_t500_zero_added"] = run(500, torch.zeros_like(ref["unet.text_embeds"]),
                                          torch.zeros_like(ref["unet.time_ids"]))
    assert (ref["unet.out_t500_zero_added"] - ref["unet.out_t500"]).abs().max() > 1e-2, "added conditioning is inert"
    ref["vae.latents"] = mf.randn(g, (1, 4, 8, 8))
    ref["vae.decoded"] = m["vae"].decode(ref["vae.latents"]).sample.contiguous()
    for k, v in ref.items():
        assert torch.isfinite(v.float()).all(), k
    mf.save_st(dict(ref), OUT / "reference.safetensors")
    return ref


@torch.no_grad()
def run_case(pipes, c: dict):
    img2img = "strength" in c
    pipe = pipes["img2img" if img2img else "txt2img"]
    base = pipe.scheduler.config
    sched = (c["sched"] or EulerAncestralDiscreteScheduler).from_config(base)
    pipe.scheduler = sched
    seed = zlib.crc32(f"{MODEL}/{c['name']}".encode())
    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    pool = torch.randn((mpf.POOL,) + LATENT_SHAPE, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float32)
    cb = []
    unet_calls = []
    ids2 = []

    def unet_hook(module, args, kwargs):
        unet_calls.append({k: v.clone() for k, v in kwargs["added_cond_kwargs"].items()} |
                          {"ehs": kwargs["encoder_hidden_states"].clone()})

    h = pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True)
    h2 = pipe.text_encoder_2.register_forward_pre_hook(
        lambda mod, a, k: ids2.append(k.get("input_ids", a[0] if a else None).clone()), with_kwargs=True)
    rec = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mpf.instrument(pipe, sched, rec), mpf.injected_randn(pool, rec):
            try:
                kind = (dict(image=mpf.PIL.Image.fromarray(INIT), strength=c["strength"]) if img2img
                        else dict(latents=latents.clone(), height=HEIGHT, width=WIDTH))
                out = pipe(prompt=PROMPT, num_inference_steps=c["steps"], guidance_scale=c["guidance"],
                           generator=torch.Generator().manual_seed(0), output_type="pil", **kind,
                           callback_on_step_end=lambda p, i, t, kw: (cb.append(kw["latents"].clone()), kw)[1])
            finally:
                h.remove()
                h2.remove()
    image = np.array(out.images[0])
    steps = rec["steps"]
    S = len(steps)
    run = int(c["steps"] * c["strength"]) if img2img else c["steps"]
    assert S == run == len(cb) == len(unet_calls)
    cfg = c["guidance"] > 1.0
    b = 2 if cfg else 1
    for call in unet_calls:
        assert call["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * b
        assert call["text_embeds"].shape == (b, TE2["projection_dim"]) and call["ehs"].shape == (b, 77, 40)
        if cfg:  # force_zeros_for_empty_prompt with negative_prompt None
            assert not call["ehs"][0].any() and not call["text_embeds"][0].any()
    sched_ts = sched.timesteps.clone()
    ran_ts = sched_ts[len(sched_ts) - S:].clone()
    assert torch.equal(torch.stack([s["t"] for s in steps]), ran_ts)
    (dec,) = rec["decode"]
    final = cb[-1]
    assert torch.equal(dec["in"], final / pipe.vae.config.scaling_factor)
    assert np.array_equal(mpf.to_uint8(dec["out"]), image)
    K = len(rec["draws"])
    noise = torch.stack(rec["draws"]) if K else torch.zeros((0,) + LATENT_SHAPE)
    mod = SCHED_MODULE[type(sched).__name__]
    own = [mod] * S if c["sched"] is None else []
    if img2img:
        (an,) = rec["add_noise"]
        assert torch.equal(an["out"], steps[0]["sample"]) and torch.equal(an["noise"], rec["draws"][1])
        assert rec["sources"][0] == mpf.MOD_VAE and rec["sources"][2:] == own, rec["sources"]
    else:
        assert rec["sources"] == own, rec["sources"]
    t = OrderedDict()
    if not img2img:
        t["latents"] = latents
    t["noise"] = noise
    t["timesteps"] = ran_ts.to(torch.float32)
    t["start_latents"] = steps[0]["sample"]
    t["model_outputs"] = torch.stack([s["model_output"] for s in steps])
    t["step_latents"] = torch.stack(cb)
    t["final_latents"] = final
    t["image_float"] = dec["out"]
    t["image"] = torch.from_numpy(image)
    t["text_ids"] = rec["text_ids"][0].to(torch.int32)
    t["text_ids_2"] = ids2[0].to(torch.int32)
    t["context"] = unet_calls[0]["ehs"]
    t["text_embeds"] = unet_calls[0]["text_embeds"]
    if img2img:
        t["init_image"] = torch.from_numpy(INIT)
        t["image_latents"] = rec["add_noise"][0]["x0"]
        t["scheduler_timesteps"] = sched_ts.to(torch.float32)
    t = OrderedDict((k, v.detach().contiguous()) for k, v in t.items())
    mf.save_st(dict(t), OUT / "pipeline" / f"{c['name']}.safetensors")
    e = OrderedDict()
    e["case"] = c["name"]
    e["file"] = f"{c['name']}.safetensors"
    e["pipeline"] = type(pipe).__name__
    e["prompt"] = PROMPT
    e["negative_prompt"] = None
    e["num_inference_steps"] = c["steps"]
    e["steps_run"] = S
    e["guidance_scale"] = c["guidance"]
    e["do_classifier_free_guidance"] = cfg
    e["strength"] = c.get("strength")
    e["width"], e["height"] = WIDTH, HEIGHT
    e["eta"] = None
    e["scheduler_class"] = type(sched).__name__
    e["scheduler_config_source"] = "tests/fixtures/tiny-sdxl/scheduler/scheduler_config.json (from_config)"
    e["scheduler_overrides"] = {}
    e["scheduler_config"] = dict(sched.config)
    e["init_noise_sigma"] = float(sched.init_noise_sigma)
    e["timesteps"] = [s["t"].item() for s in steps]
    if img2img:
        e["scheduler_timesteps"] = sched_ts.tolist()
    e["add_time_ids"] = [64, 64, 0, 0, 64, 64]
    e["negative_zeroed"] = cfg
    e["noise_draws"] = K
    e["noise_sources"] = rec["sources"]
    e["seed"] = seed
    return e


def main() -> None:
    models = build()
    references(models)
    pipe = StableDiffusionXLPipeline.from_pretrained(OUT, variant="fp16", dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        mine = models[name].state_dict()
        for k, v in getattr(pipe, name).state_dict().items():
            assert torch.equal(mine[k], v), f"{name}.{k} differs after reloading from disk"
    assert pipe.vae.config.force_upcast and pipe.vae.config.scaling_factor == 0.13025
    pipes = {"txt2img": pipe,
             "img2img": StableDiffusionXLImg2ImgPipeline.from_pretrained(OUT, variant="fp16", dtype=torch.float32,
                                                                          add_watermarker=False)}
    pipes["img2img"].set_progress_bar_config(disable=True)
    assert not pipes["img2img"].config.requires_aesthetics_score
    cases = [run_case(pipes, c) for c in CASES]
    files = OrderedDict((str(p.relative_to(OUT)), sha256(p)) for p in sorted(OUT.rglob("*")) if p.is_file()
                        and p.parent.name != "pipeline")
    mpf.write_json(OUT / "pipeline/cases.json", OrderedDict([
        ("generator", "tools/reference/make_sdxl_fixture.py"), ("versions", mpf.versions()),
        ("model_files_sha256", files), ("cases", cases)]))
    print(f"wrote {OUT} ({len(cases)} pipeline cases)")


if __name__ == "__main__":
    main()
