#!/usr/bin/env python3
"""Inpainting references: diffusers' StableDiffusionInpaintPipeline on tiny models, every random draw
recorded, for tests/pipeline.rs (the same machinery as make_pipeline_fixtures.py, whose noise injection
and instrumentation this imports).

What it makes
-------------
    tests/fixtures/tiny-sd1-inpaint/            tiny-sd1 with a 9-channel inpainting U-Net (in_channels 9:
        unet/                                   latents + mask + masked-image latents, as
                                                stable-diffusion-v1-5/stable-diffusion-inpainting), random
                                                init (seed 9), weights rounded to fp16 as make_fixtures.py
                                                does; model_index.json names StableDiffusionInpaintPipeline;
                                                text_encoder/, vae/, tokenizer/, scheduler/ are links to
                                                tiny-sd1's (the same files)
    tests/fixtures/tiny-sd1/inpaint/            cases on tiny-sd1 itself: an ordinary 4-channel U-Net, which
                                                diffusers' pipeline inpaints by re-noising the kept region to
                                                each next timestep and pasting it back
    tests/fixtures/tiny-sd1-inpaint/inpaint/    cases on the 9-channel model
        cases.json, <case>.safetensors          per case: init_image uint8 [64,64,3], mask uint8 [64,64]
                                                (255 = redraw), noise [K,1,4,8,8] (every randn_tensor draw in
                                                order: the image's VAE posterior sample when the pipeline
                                                encodes it, the start noise, the masked image's posterior
                                                sample, then the scheduler's), timesteps, step_latents (after
                                                each step, after the paste-back for 4-channel U-Nets),
                                                final_latents, image uint8 [64,64,3]

Run from the repository root with the pinned environment (tools/reference/requirements.txt); seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_pipeline_fixtures as mp  # noqa: E402
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       StableDiffusionInpaintPipeline, UNet2DConditionModel)

FIXTURES = mp.FIXTURES
PROMPT = mp.PROMPT
LATENT_SHAPE = mp.LATENT_SHAPE
HEIGHT, WIDTH = mp.HEIGHT, mp.WIDTH
SCHEDULERS = {"EulerDiscreteScheduler": EulerDiscreteScheduler, "DDIMScheduler": DDIMScheduler,
              "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}

CASES = [
    # model, name, scheduler, steps, strength
    ("tiny-sd1", "inpaint_euler_4", "EulerDiscreteScheduler", 4, 1.0),
    ("tiny-sd1", "inpaint_ddim_5_s06", "DDIMScheduler", 5, 0.6),
    ("tiny-sd1-inpaint", "inpaint9_euler_4", "EulerDiscreteScheduler", 4, 1.0),
    ("tiny-sd1-inpaint", "inpaint9_dpmpp2m_5_s06", "DPMSolverMultistepScheduler", 5, 0.6),
]


def synthetic_mask() -> np.ndarray:
    """255 inside a rectangle off the centre (the region to redraw), 0 elsewhere."""
    m = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    m[12:44, 20:56] = 255
    return m


def make_inpaint_model() -> Path:
    src, dst = FIXTURES / "tiny-sd1", FIXTURES / "tiny-sd1-inpaint"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    for part in ("text_encoder", "vae", "tokenizer", "scheduler"):
        os.symlink(f"../tiny-sd1/{part}", dst / part)
    index = json.loads((src / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    (dst / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = dict(UNet2DConditionModel.load_config(src / "unet"))
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config["in_channels"] = 9
    torch.manual_seed(9)
    unet = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(p.to(torch.float16).to(torch.float32))
    unet.save_pretrained(dst / "unet", safe_serialization=True)
    return dst


@torch.no_grad()
def run_case(model, name, sched_name, steps, strength, init_image, mask):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionInpaintPipeline.from_pretrained(FIXTURES / model, variant="fp16", dtype=torch.float32,
                                                              safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    sched = SCHEDULERS[sched_name].from_config(pipe.scheduler.config)
    pipe.scheduler = sched
    seed = mp.zlib.crc32(f"{model}/{name}".encode())
    pool = torch.randn((24,) + LATENT_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    cb_latents, cb_t = [], []

    def on_step_end(p, i, t, kw):
        cb_latents.append(kw["latents"].clone())
        cb_t.append(t.clone() if torch.is_tensor(t) else torch.tensor(t))
        return kw

    rec = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mp.instrument(pipe, sched, rec), mp.injected_randn(pool, rec):
            out = pipe(prompt=PROMPT, negative_prompt="", image=PIL.Image.fromarray(init_image),
                       mask_image=PIL.Image.fromarray(mask, mode="L"), height=HEIGHT, width=WIDTH,
                       num_inference_steps=steps, strength=strength, guidance_scale=7.5,
                       generator=torch.Generator().manual_seed(0), output_type="pil",
                       callback_on_step_end=on_step_end)
    image = np.array(out.images[0])
    (dec,) = rec["decode"]
    assert torch.equal(dec["in"], cb_latents[-1] / pipe.vae.config.scaling_factor)
    assert np.array_equal(mp.to_uint8(dec["out"]), image)
    draws = torch.stack(rec["draws"])
    assert torch.equal(draws, pool[: len(draws)])
    t = OrderedDict()
    t["init_image"] = torch.from_numpy(init_image)
    t["mask"] = torch.from_numpy(mask)
    t["noise"] = draws
    t["timesteps"] = torch.stack(cb_t).to(torch.float32)
    t["step_latents"] = torch.stack(cb_latents)
    t["final_latents"] = cb_latents[-1]
    t["image"] = torch.from_numpy(image)
    t = OrderedDict((k, v.detach().contiguous()) for k, v in t.items())
    entry = OrderedDict()
    entry["case"] = name
    entry["file"] = f"{name}.safetensors"
    entry["pipeline"] = type(pipe).__name__
    entry["unet_in_channels"] = pipe.unet.config.in_channels
    entry["prompt"] = PROMPT
    entry["negative_prompt"] = ""
    entry["num_inference_steps"] = steps
    entry["guidance_scale"] = 7.5
    entry["strength"] = strength
    entry["width"], entry["height"] = WIDTH, HEIGHT
    entry["scheduler_class"] = type(sched).__name__
    entry["scheduler_config"] = dict(sched.config)
    entry["scheduler_overrides"] = {}
    entry["scheduler_config_source"] = f"tests/fixtures/{model}/scheduler/scheduler_config.json (as loaded)"
    entry["timesteps"] = [float(x) for x in t["timesteps"]]
    entry["noise_draws"] = len(draws)
    entry["noise_sources"] = rec["sources"]
    entry["seed"] = seed
    entry["tensors"] = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in t.items()]
    return t, entry


def main() -> None:
    make_inpaint_model()
    init_image, mask = mp.synthetic_image(), synthetic_mask()
    by_model: dict = {}
    for model, name, sched, steps, strength in CASES:
        t, entry = run_case(model, name, sched, steps, strength, init_image, mask)
        out = FIXTURES / model / "inpaint"
        if model not in by_model:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            by_model[model] = []
        save_file(dict(t), str(out / entry["file"]), metadata={"format": "pt"})
        by_model[model].append(entry)
        print(f"{model:17s} {name:24s} K={entry['noise_draws']} sources={entry['noise_sources']}")
    for model, entries in by_model.items():
        doc = OrderedDict()
        doc["description"] = (f"StableDiffusionInpaintPipeline references for {model}, generated by "
                              "tools/reference/make_inpaint_fixtures.py (see its docstring).")
        doc["versions"] = mp.versions()
        doc["cases"] = entries
        mp.write_json(FIXTURES / model / "inpaint" / "cases.json", doc)


if __name__ == "__main__":
    main()
