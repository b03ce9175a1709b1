#!/usr/bin/env python3
"""Run whole diffusers pipelines on the tiny fixture models and record every intermediate (pipeline fixtures).

What it makes
-------------
For each tiny model built by make_fixtures.py (tests/fixtures/tiny-sd1, tests/fixtures/tiny-sd2) this runs
StableDiffusionPipeline / StableDiffusionImg2ImgPipeline end to end with several schedulers and writes

    tests/fixtures/<model>/pipeline/<case>.safetensors   one file per case (tensors below)
    tests/fixtures/<model>/pipeline/cases.json           every case: call arguments, FULL scheduler config used,
                                                          timesteps, sigmas, noise-draw count/order, notes

so the Rust pipeline can replay exactly the same call: same initial latents, same random draws, same schedule.
(tests/fixtures/tiny-lcm -- model and pipeline cases, same format -- is built by make_lcm_fixture.py, which reuses
this module's noise injection and instrumentation.)

Randomness is injected, not reproduced
--------------------------------------
Every standard-normal draw the pipeline, its scheduler or the VAE makes goes through
diffusers.utils.torch_utils.randn_tensor. During each call, `randn_tensor` is replaced in EVERY loaded module
namespace that imported it (the scheduler modules, both pipeline modules, the VAE's DiagonalGaussianDistribution
module, ...) by a function that hands out pre-drawn tensors of a seeded pool, in order, and records which module
asked. The recorded draws are stored as `noise` [K,1,4,8,8] in the order they were made; the script asserts K and
the order of the callers (Euler ancestral: one per step; LCM: one per step except the last; DDIM eta=0, Euler,
DPM++ 2M: none; img2img: VAE posterior sample, then the noise added to the init latents, then the scheduler's own).
While the pipeline runs, torch.randn/rand/randn_like/rand_like/randint/normal/bernoulli/multinomial raise, so no
draw can bypass the injection.

Per-case tensors (float32 unless said; S = number of denoising steps actually run)
----------------------------------------------------------------------------------
  latents        [1,4,8,8]    txt2img only: the `latents=` argument (N(0,1)), BEFORE the pipeline multiplies it
                              by scheduler.init_noise_sigma (recorded in cases.json).
  noise          [K,1,4,8,8]  every N(0,1) draw in call order (K may be 0: shape [0,1,4,8,8]).
  timesteps      [S]          the timesteps the denoising loop iterated (= scheduler.timesteps for txt2img; for
                              img2img the tail scheduler.timesteps[t_start:]); cases.json has the scheduler's own
                              dtype (int64 for DDIM/DPM/LCM, float32 for Euler*) -- the U-Net gets that value.
  start_latents  [1,4,8,8]    the sample entering the first scheduler step (txt2img: latents * init_noise_sigma;
                              img2img: scheduler.add_noise(image_latents, noise[1], timesteps[0])).
  model_outputs  [S,1,4,8,8]  the model output handed to scheduler.step at each step (after classifier-free
                              guidance: uncond + g * (cond - uncond)), so schedulers can be tested without a U-Net.
  step_latents   [S,1,4,8,8]  `latents` after each step (captured with callback_on_step_end).
  final_latents  [1,4,8,8]    latents the VAE decodes (= step_latents[-1]; asserted: the decoder input is exactly
                              final_latents / vae.config.scaling_factor).
  image_float    [1,3,64,64]  raw VAE decode of final_latents / scaling_factor (the pipeline's own call, captured),
                              before any post-processing.
  image          uint8 [64,64,3]  np.array(pipeline(..., output_type="pil").images[0]).
  text_ids       int32 [2,77] (uncond first, then cond) when CFG runs, else [1,77]: the ids the pipeline's
                              tokenizer produced and fed to the text encoder (captured with a forward pre-hook).
  sigmas         [N+1]        Euler / Euler ancestral / DPM++ only: scheduler.sigmas as set (N = num_inference_steps,
                              last entry is the final sigma).
  img2img only:  init_image uint8 [64,64,3] (synthetic, fed as a PIL image), image_latents [1,4,8,8] (=
                 scaling_factor * posterior sample, the x0 passed to add_noise), scheduler_timesteps [N] (full
                 schedule, float32).

float -> uint8 rule (diffusers VaeImageProcessor.postprocess + numpy_to_pil, all in float32):
    u8 = uint8( round_half_to_even( float32( clamp(float32(x * 0.5 + 0.5), 0, 1) * 255 ) ) )
i.e. torch: (x * 0.5 + 0.5).clamp(0, 1) (two separately rounded float32 ops; x*0.5 is exact), then numpy:
(images * 255).round().astype("uint8") (np.round = round half to even, like WGSL round()). Asserted per case.

Seeds: case seed = crc32("<model>/<case>"); latents = torch.randn([1,4,8,8], Generator(seed)); the noise pool =
torch.randn([P,1,4,8,8], Generator(seed + 1)) with P = 8 (12 for the 5-step DPM++ SDE cases, whose entries say
noise_pool_size) (only the first K are used and stored).

Everything runs in float32 on CPU with one thread; the output is byte-identical when re-run on the same
machine/library versions (tools/reference/requirements.txt).

How to run (from the repository root, after make_fixtures.py; ~15 s on 2 cores):

    /tmp/refenv/bin/python tools/reference/make_pipeline_fixtures.py
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import sys
import warnings
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import diffusers  # noqa: E402
import diffusers.utils.torch_utils  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from diffusers.models.autoencoders import vae as _vae_module  # noqa: E402,F401  (DiagonalGaussianDistribution)

import diffusers.schedulers.scheduling_dpmsolver_sde as _sde_module  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
PUBLISHED = REPO / "tools" / "reference" / "published"
# Published scheduler configs (copied verbatim from the project's shared model notes; provenance there:
# both are reconstructions of the HF files whose byte sizes reproduce the published ones).
TURBO_SCHEDULER = PUBLISHED / "sd-turbo" / "scheduler" / "scheduler_config.json"  # stabilityai/sd-turbo
LCM_SCHEDULER = PUBLISHED / "LCM_Dreamshaper_v7" / "scheduler" / "scheduler_config.json"  # SimianLuo/LCM_Dreamshaper_v7

MODELS = ["tiny-sd1", "tiny-sd2"]
PROMPT = "a red circle on a blue background"
HEIGHT = WIDTH = 64
LATENT_SHAPE = (1, 4, 8, 8)
POOL = 8  # noise pool size (max draws of any case is 5)
IMG2IMG_STRENGTH = 0.6

MOD_VAE = "diffusers.models.autoencoders.vae"
MOD_IMG2IMG = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img"
SCHED_MODULE = {
    "DDIMScheduler": "diffusers.schedulers.scheduling_ddim",
    "EulerDiscreteScheduler": "diffusers.schedulers.scheduling_euler_discrete",
    "EulerAncestralDiscreteScheduler": "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "DPMSolverMultistepScheduler": "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "LCMScheduler": "diffusers.schedulers.scheduling_lcm",
    "PNDMScheduler": "diffusers.schedulers.scheduling_pndm",
    "HeunDiscreteScheduler": "diffusers.schedulers.scheduling_heun_discrete",
    "LMSDiscreteScheduler": "diffusers.schedulers.scheduling_lms_discrete",
    "UniPCMultistepScheduler": "diffusers.schedulers.scheduling_unipc_multistep",
    # Its Brownian tree is replaced by RecordedBrownian (below), which draws in this module.
    "DPMSolverSDEScheduler": __name__,
}
SCHED_CLASS = {c.__name__: c for c in (DDIMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                                         DPMSolverMultistepScheduler, LCMScheduler, PNDMScheduler,
                                         HeunDiscreteScheduler, LMSDiscreteScheduler, UniPCMultistepScheduler,
                                         DPMSolverSDEScheduler)}
DPMPP2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}


def case(name, sched, steps, *, base="model", overrides=None, guidance=7.5, negative="", kind="txt2img",
         models=("tiny-sd1", "tiny-sd2"), notes=(), eta=0.0, pool=POOL):
    if guidance <= 1.0:
        negative = None  # never used without CFG: diffusers only encodes the negative prompt when guidance > 1
    return dict(name=name, sched=sched, steps=steps, base=base, overrides=dict(overrides or {}), guidance=guidance,
                negative=negative, kind=kind, models=list(models), notes=list(notes), eta=eta, pool=pool)


NOTE_LCM = ("LatentConsistencyModelPipeline cannot run these U-Nets: it always builds the guidance embedding with "
            "embedding_dim=unet.config.time_cond_proj_dim, which is None here (TypeError in "
            "get_guidance_scale_embedding). So this is StableDiffusionPipeline + LCMScheduler, guidance_scale 1.0 "
            "(no CFG, no w-embedding). StableDiffusionPipeline takes scheduler.step(...)[0] = prev_sample; at the "
            "last step LCM returns prev_sample = denoised, so the decoded latents equal what the LCM pipeline "
            "decodes. Scheduler config: the published LCM_Dreamshaper_v7 one (set_alpha_to_one true, steps_offset "
            "0); LCMScheduler.from_config(model scheduler config) gives the same timesteps and alphas_cumprod "
            "(asserted), and neither set_alpha_to_one nor steps_offset is used by LCM here.")
NOTE_IMG2IMG = ("StableDiffusionImg2ImgPipeline, strength 0.6, num_inference_steps 4: the scheduler is set for 4 steps "
                "(scheduler_timesteps), init_timestep = min(int(4 * 0.6), 4) = 2, t_start = 4 - 2 = 2, so only the "
                "last 2 timesteps run (timesteps), and set_begin_index(t_start) is called when the scheduler has it. "
                "The init image is preprocessed as float32 x / 255 * 2 - 1 (HWC -> NCHW, no resize at 64x64), "
                "encoded, sampled (mean + exp(0.5 * logvar) * noise[0]), scaled by vae.config.scaling_factor "
                "(image_latents), then add_noise(image_latents, noise[1], timesteps[0]) = start_latents.")

NOTE_PNDM = ("PNDMScheduler from the model's own config (skip_prk_steps true, as SD 1.x ships): PLMS, whose "
             "schedule has N + 1 timesteps (the second-to-last, i.e. the first one run after the start, twice: the "
             "warm-up), so the loop runs N + 1 U-Net calls; img2img slices that list at t_start (order 1).")

NOTE_HEUN = ("HeunDiscreteScheduler: every sigma after the first twice, so the loop runs 2N - 1 U-Net calls; order 2, "
             "so img2img starts at timesteps[t_start * 2:] with set_begin_index(t_start * 2).")

NOTE_UNIPC = ("UniPCMultistepScheduler from the model's config with its own defaults (solver_order 2, bh2, "
              "predict_x0, lower_order_final, the corrector on every step after the first): order 1 on the first "
              "and last step; no random draws.")

NOTE_SDE = ("DPMSolverSDEScheduler: every sigma after the first twice (the midpoint in log-sigma), 2N - 1 U-Net "
            "calls, order 2 for img2img. Its torchsde Brownian tree is replaced by RecordedBrownian: the same "
            "Brownian motion in sigma built from the injected draws (two per step, none on the last Euler step), "
            "so the run can be replayed; noise_pool_size says how many draws were pooled.")

CASES = [
    case("ddim_2", "DDIMScheduler", 2),
    case("ddim_5", "DDIMScheduler", 5),
    case("ddim_eta1_3", "DDIMScheduler", 3, eta=1.0,
         notes=["eta 1.0: DDIMScheduler.step draws variance_noise (randn_tensor) every step and adds "
                "eta * sqrt(variance) * noise; the direction term uses 1 - alpha_prev - std^2."]),
    case("ddim_eta05_5", "DDIMScheduler", 5, eta=0.5, notes=["eta 0.5, as ddim_eta1_3."]),
    case("euler_2", "EulerDiscreteScheduler", 2),
    case("euler_5", "EulerDiscreteScheduler", 5),
    case("euler_a_2", "EulerAncestralDiscreteScheduler", 2),
    case("euler_a_5", "EulerAncestralDiscreteScheduler", 5),
    case("dpmpp2m_2", "DPMSolverMultistepScheduler", 2, overrides=DPMPP2M),
    case("dpmpp2m_5", "DPMSolverMultistepScheduler", 5, overrides=DPMPP2M),
    case("dpmpp2m_karras_2", "DPMSolverMultistepScheduler", 2, overrides={**DPMPP2M, "use_karras_sigmas": True}),
    case("dpmpp2m_karras_5", "DPMSolverMultistepScheduler", 5, overrides={**DPMPP2M, "use_karras_sigmas": True}),
    case("lcm_2", "LCMScheduler", 2, base="lcm", guidance=1.0, notes=[NOTE_LCM]),
    case("lcm_4", "LCMScheduler", 4, base="lcm", guidance=1.0, notes=[NOTE_LCM]),
    case("euler_vpred_3", "EulerDiscreteScheduler", 3, overrides={"prediction_type": "v_prediction"},
         models=["tiny-sd2"], notes=["prediction_type v_prediction as SD 2.1-768 uses (the tiny U-Net is random)."]),
    case("ddim_vpred_3", "DDIMScheduler", 3, overrides={"prediction_type": "v_prediction"},
         models=["tiny-sd2"], notes=["prediction_type v_prediction as SD 2.1-768 uses (the tiny U-Net is random)."]),
    case("turbo_euler_1", "EulerDiscreteScheduler", 1, base="turbo", guidance=0.0, models=["tiny-sd2"],
         notes=["published SD-Turbo scheduler config; guidance_scale 0.0: no CFG, no negative prompt batch."]),
    case("turbo_euler_4", "EulerDiscreteScheduler", 4, base="turbo", guidance=0.0, models=["tiny-sd2"],
         notes=["published SD-Turbo scheduler config; guidance_scale 0.0: no CFG, no negative prompt batch."]),
    case("guidance_1_euler_3", "EulerDiscreteScheduler", 3, guidance=1.0,
         notes=["guidance_scale 1.0: do_classifier_free_guidance is guidance_scale > 1, so only the cond batch runs "
                "and the negative prompt is never encoded."]),
    case("pndm_2", "PNDMScheduler", 2, notes=[NOTE_PNDM]),
    case("pndm_5", "PNDMScheduler", 5, notes=[NOTE_PNDM]),
    case("pndm_prk_4", "PNDMScheduler", 4, overrides={"skip_prk_steps": False}, models=["tiny-sd1"],
         notes=["skip_prk_steps False: 12 Runge-Kutta calls (the last 4 timesteps and their half-steps) before PLMS."]),
    case("pndm_vpred_3", "PNDMScheduler", 3, overrides={"prediction_type": "v_prediction"}, models=["tiny-sd2"],
         notes=["prediction_type v_prediction (the tiny U-Net is random)."]),
    case("heun_2", "HeunDiscreteScheduler", 2, notes=[NOTE_HEUN]),
    case("heun_5", "HeunDiscreteScheduler", 5, notes=[NOTE_HEUN]),
    case("heun_vpred_3", "HeunDiscreteScheduler", 3, overrides={"prediction_type": "v_prediction"},
         models=["tiny-sd2"], notes=[NOTE_HEUN, "prediction_type v_prediction (the tiny U-Net is random)."]),
    case("lms_2", "LMSDiscreteScheduler", 2),
    case("lms_5", "LMSDiscreteScheduler", 5),
    case("lms_karras_2", "LMSDiscreteScheduler", 2, overrides={"use_karras_sigmas": True}),
    case("lms_karras_5", "LMSDiscreteScheduler", 5, overrides={"use_karras_sigmas": True}),
    case("img2img_ddim_4", "DDIMScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG]),
    case("img2img_heun_4", "HeunDiscreteScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG, NOTE_HEUN]),
    case("img2img_lms_4", "LMSDiscreteScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG]),
    case("img2img_pndm_4", "PNDMScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG, NOTE_PNDM]),
    case("img2img_euler_a_4", "EulerAncestralDiscreteScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG]),
    case("unipc_2", "UniPCMultistepScheduler", 2, notes=[NOTE_UNIPC]),
    case("unipc_5", "UniPCMultistepScheduler", 5, notes=[NOTE_UNIPC]),
    case("unipc_karras_5", "UniPCMultistepScheduler", 5, overrides={"use_karras_sigmas": True}, notes=[NOTE_UNIPC]),
    case("unipc_vpred_3", "UniPCMultistepScheduler", 3, overrides={"prediction_type": "v_prediction"},
         models=["tiny-sd2"], notes=[NOTE_UNIPC, "prediction_type v_prediction (the tiny U-Net is random)."]),
    case("img2img_unipc_4", "UniPCMultistepScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG, NOTE_UNIPC]),
    case("dpmsde_2", "DPMSolverSDEScheduler", 2, notes=[NOTE_SDE]),
    case("dpmsde_5", "DPMSolverSDEScheduler", 5, notes=[NOTE_SDE], pool=12),
    case("dpmsde_karras_5", "DPMSolverSDEScheduler", 5, overrides={"use_karras_sigmas": True}, notes=[NOTE_SDE],
         pool=12),
    case("dpmsde_vpred_3", "DPMSolverSDEScheduler", 3, overrides={"prediction_type": "v_prediction"},
         models=["tiny-sd2"], notes=[NOTE_SDE, "prediction_type v_prediction (the tiny U-Net is random)."]),
    case("img2img_dpmsde_4", "DPMSolverSDEScheduler", 4, kind="img2img", notes=[NOTE_IMG2IMG, NOTE_SDE]),
]

RULES = [
    "Pipelines: StableDiffusionPipeline / StableDiffusionImg2ImgPipeline .from_pretrained(<model folder>, "
    "variant='fp16', dtype=float32) (tiny-sd1 only has an fp16 text encoder; the fp32 unet/vae are used as they are), "
    "CPU, float32, 1 thread. height=width=64 are always passed (diffusers silently bumps tiny-sd1's unet sample_size "
    "8 -> 64 because its config says _diffusers_version 0.6.0, which would change the default size).",
    "Scheduler per case: <class>.from_config(<base config>, **overrides); 'scheduler_config' is dict(pipe.scheduler."
    "config) of the scheduler actually used. NOTE from_config drops the keys listed in the base config's "
    "'_use_default_values' (tiny-sd1's lists timestep_spacing and prediction_type, tiny-sd2's timestep_spacing), "
    "so each scheduler class falls back to ITS OWN default: DDIM 'leading', Euler/EulerA/DPM++ 'linspace', LCM 'leading'.",
    "Call: prompt, negative_prompt, num_inference_steps, guidance_scale, eta (0.0 unless the case sets one; only DDIM's step accepts it), "
    "generator=torch.Generator().manual_seed(0) (unused: every draw is injected), callback_on_step_end capturing "
    "latents, output_type='pil'. txt2img passes latents=<latents>; img2img passes image=<init_image as PIL RGB> and "
    "strength=0.6.",
    "Noise injection: see 'noise_injection'; noise[k] is the k-th draw, noise_sources[k] the module that drew it.",
    "float -> uint8 (VaeImageProcessor.postprocess + numpy_to_pil): y = (x * 0.5 + 0.5).clamp(0, 1) in torch float32, "
    "then numpy float32 (y * 255).round().astype('uint8'); np.round is round-half-to-even (WGSL round() is too). "
    "Asserted equal to the PIL image for every case.",
    "CFG (guidance_scale > 1): text embeddings batch = [uncond, cond] (negative first); the U-Net runs on "
    "cat([latents] * 2) (after scale_model_input) and model_output = uncond + g * (cond - uncond). text_ids follows "
    "the same order.",
    "Seeds: seed = zlib.crc32('<model>/<case>'); latents = torch.randn([1,4,8,8], generator=Generator().manual_seed("
    "seed)); noise pool = torch.randn([8,1,4,8,8], generator=Generator().manual_seed(seed + 1)), draws used in order.",
]


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------
def read_json(path: Path) -> OrderedDict:
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=OrderedDict)


def jsonable(x):
    if isinstance(x, dict):
        # diffusers builds '_use_default_values' from a set: its order follows PYTHONHASHSEED, so sort it.
        return OrderedDict((str(k), jsonable(sorted(v) if k == "_use_default_values" else v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return jsonable(x.tolist())
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def dumps(x, indent: int = 0) -> str:
    """json.dumps(indent=2) style, but lists of scalars and flat dicts of scalars (short) stay on one line."""
    scalar = lambda v: v is None or isinstance(v, (str, int, float, bool))  # noqa: E731
    one_line = json.dumps(x, ensure_ascii=False)
    flat = (isinstance(x, list) and all(scalar(v) for v in x)
            and (len(one_line) <= 120 or not any(isinstance(v, str) for v in x))) or (
        isinstance(x, dict) and len(one_line) <= 120
        and all(scalar(v) or (isinstance(v, list) and all(scalar(u) for u in v)) for v in x.values()))
    if scalar(x) or flat or not x:
        return one_line
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(x, list):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 2) for v in x) + "\n" + pad + "]"
    items = (inner + json.dumps(str(k), ensure_ascii=False) + ": " + dumps(v, indent + 2) for k, v in x.items())
    return "{\n" + ",\n".join(items) + "\n" + pad + "}"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(jsonable(obj)) + "\n")


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def to_uint8(image_float: torch.Tensor) -> np.ndarray:
    """diffusers' float -> uint8 rule, written out (must equal the PIL output bit for bit)."""
    y = (image_float * 0.5 + 0.5).clamp(0, 1)  # torch float32
    y = y.cpu().permute(0, 2, 3, 1).float().numpy()  # NHWC float32
    return (y * 255).round().astype("uint8")[0]  # numpy float32 multiply, round half to even


def synthetic_image() -> np.ndarray:
    """64x64 RGB uint8: red/green gradients, blue diagonal ramp, a filled circle and a square."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    img = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.int64)
    img[(x - 24) ** 2 + (y - 26) ** 2 < 13 ** 2] = (230, 40, 40)
    img[(x >= 40) & (x < 58) & (y >= 36) & (y < 54)] = (20, 200, 90)
    img[(x >= 6) & (x < 58) & (y >= 58) & (y < 61)] = (250, 250, 250)
    return np.clip(img, 0, 255).astype(np.uint8)


def base_config(pipes: dict, base: str) -> dict:
    if base == "model":
        return dict(pipes["model_scheduler_config"])  # the model folder's PNDMScheduler config as loaded
    if base == "turbo":
        return dict(read_json(TURBO_SCHEDULER))
    if base == "lcm":
        return dict(read_json(LCM_SCHEDULER))
    raise ValueError(base)


def expected_sources(c: dict, n_run: int) -> list:
    per_step = {"EulerAncestralDiscreteScheduler": n_run, "LCMScheduler": n_run - 1,
                "DPMSolverSDEScheduler": n_run - 1}.get(c["sched"], 0)
    if c["sched"] == "DDIMScheduler" and c["eta"] > 0:
        per_step = n_run
    pre = [MOD_VAE, MOD_IMG2IMG] if c["kind"] == "img2img" else []
    return pre + [SCHED_MODULE[c["sched"]]] * per_step


# --------------------------------------------------------------------------------------------------------
# Noise injection and instrumentation
# --------------------------------------------------------------------------------------------------------
_FORBIDDEN = ("randn", "rand", "randn_like", "rand_like", "randint", "normal", "bernoulli", "multinomial")


class RecordedBrownian:
    """Stands in for diffusers' BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed): a Brownian motion W over
    sigma built from injected N(0,1) draws. A step asks for (sigma, sigma_mid) and then (sigma, sigma_next): the
    first is sqrt(a) z1 over a = |sigma_mid - sigma|, the second extends it by sqrt(b) z2 over
    b = |sigma_next - sigma_mid|, and each call returns its increment divided by sqrt of its interval, as diffusers'
    sampler does. Intervals of different steps are disjoint, hence independent draws."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda v: v):
        self.shape, self.open = tuple(x.shape), None

    def __call__(self, sigma, sigma_next):
        t0, t1 = float(sigma), float(sigma_next)
        z = diffusers.utils.torch_utils.randn_tensor(self.shape, dtype=torch.float32)
        if self.open is not None and self.open[0] == t0:
            _, tm, w = self.open
            w = w + abs(t1 - tm) ** 0.5 * z
            self.open = None
        else:
            w = abs(t1 - t0) ** 0.5 * z
            self.open = (t0, t1, w)
        return w / abs(t1 - t0) ** 0.5


_sde_module.BrownianTreeNoiseSampler = RecordedBrownian


@contextmanager
def injected_randn(pool: torch.Tensor, record: dict):
    """Replace randn_tensor everywhere it was imported; forbid any other torch RNG entry point meanwhile."""
    orig = diffusers.utils.torch_utils.randn_tensor
    draws, sources = record.setdefault("draws", []), record.setdefault("sources", [])

    def fake_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        k = len(draws)
        if k >= pool.shape[0]:
            raise RuntimeError("noise pool exhausted")
        t = pool[k]
        if tuple(shape) != tuple(t.shape):
            raise RuntimeError(f"unexpected randn_tensor shape {tuple(shape)}")
        draws.append(t.clone())
        sources.append(sys._getframe(1).f_globals.get("__name__"))
        return t.clone().to(device=device or "cpu", dtype=dtype or torch.float32)

    patched = []
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None)
        if isinstance(d, dict) and d.get("randn_tensor") is orig:
            d["randn_tensor"] = fake_randn_tensor
            patched.append(mod.__name__)
    saved = {n: getattr(torch, n) for n in _FORBIDDEN}

    def forbid(name):
        def f(*a, **k):
            raise RuntimeError(f"torch.{name} called inside the pipeline: a random draw bypassed the injection")
        return f

    for n in _FORBIDDEN:
        setattr(torch, n, forbid(n))
    try:
        yield sorted(patched)
    finally:
        for n, f in saved.items():
            setattr(torch, n, f)
        for name in patched:
            sys.modules[name].__dict__["randn_tensor"] = orig


@contextmanager
def instrument(pipe, sched, record: dict):
    """Record scheduler.step inputs/outputs, add_noise, vae.decode and the text encoder's input ids."""
    steps = record.setdefault("steps", [])
    orig_step, orig_add_noise, orig_decode = sched.step, sched.add_noise, pipe.vae.decode

    @functools.wraps(orig_step)  # keeps the signature: the pipeline inspects it for `eta` / `generator`
    def step(model_output, timestep, sample, *args, **kwargs):
        out = orig_step(model_output, timestep, sample, *args, **kwargs)
        steps.append({"t": timestep.clone() if torch.is_tensor(timestep) else torch.tensor(timestep),
                      "model_output": model_output.detach().clone(), "sample": sample.detach().clone(),
                      "prev_sample": out[0].detach().clone()})
        return out

    @functools.wraps(orig_add_noise)
    def add_noise(original_samples, noise, timesteps):
        out = orig_add_noise(original_samples, noise, timesteps)
        record.setdefault("add_noise", []).append({"x0": original_samples.clone(), "noise": noise.clone(),
                                                   "t": timesteps.clone(), "out": out.clone()})
        return out

    @functools.wraps(orig_decode)
    def decode(z, *args, **kwargs):
        out = orig_decode(z, *args, **kwargs)
        sample = out[0] if isinstance(out, tuple) else out.sample
        record.setdefault("decode", []).append({"in": z.clone(), "out": sample.detach().clone()})
        return out

    def te_hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        record.setdefault("text_ids", []).append(ids.clone())

    sched.step, sched.add_noise = step, add_noise
    pipe.vae.decode = decode
    handle = pipe.text_encoder.register_forward_pre_hook(te_hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
        del pipe.vae.decode  # back to the class method
        del sched.step, sched.add_noise


# --------------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------------
@torch.no_grad()
def run_case(model: str, pipes: dict, c: dict, init_image: np.ndarray):
    pipe = pipes[c["kind"]]
    cls = SCHED_CLASS[c["sched"]]
    sched = cls.from_config(base_config(pipes, c["base"]), **c["overrides"])
    pipe.scheduler = sched

    seed = zlib.crc32(f"{model}/{c['name']}".encode())
    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    pool = torch.randn((c["pool"],) + LATENT_SHAPE, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float32)

    cb_latents, cb_t = [], []

    def on_step_end(p, i, t, kw):
        assert i == len(cb_latents)
        cb_latents.append(kw["latents"].clone())
        cb_t.append(t.clone() if torch.is_tensor(t) else torch.tensor(t))
        return kw

    kwargs = dict(prompt=PROMPT, negative_prompt=c["negative"], num_inference_steps=c["steps"],
                  guidance_scale=c["guidance"], eta=c["eta"], generator=torch.Generator().manual_seed(0),
                  output_type="pil", callback_on_step_end=on_step_end)
    if c["kind"] == "txt2img":
        kwargs.update(height=HEIGHT, width=WIDTH, latents=latents.clone())
    else:
        kwargs.update(image=PIL.Image.fromarray(init_image), strength=IMG2IMG_STRENGTH)

    rec = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with instrument(pipe, sched, rec), injected_randn(pool, rec) as patched:
            out = pipe(**kwargs)
    image = np.array(out.images[0])
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)

    # ---- checks ------------------------------------------------------------------------------------------
    steps = rec["steps"]
    S = len(steps)
    cfg = pipe.do_classifier_free_guidance
    assert cfg == (c["guidance"] > 1.0)
    sched_ts = sched.timesteps.clone()
    if c["kind"] == "txt2img":
        # PNDM's schedule has more entries than steps (the PLMS warm-up, the RK stages).
        assert S == len(sched_ts) and torch.equal(torch.stack([s["t"] for s in steps]), sched_ts)
        start = latents * sched.init_noise_sigma
        assert torch.equal(steps[0]["sample"], start), "start latents != latents * init_noise_sigma"
    else:
        t_start = c["steps"] - min(int(c["steps"] * IMG2IMG_STRENGTH), c["steps"])
        begin = t_start * sched.order
        assert S == len(sched_ts) - begin
        assert torch.equal(torch.stack([s["t"] for s in steps]), sched_ts[begin:])
        (an,) = rec["add_noise"]
        assert torch.equal(an["out"], steps[0]["sample"]) and torch.equal(an["noise"], rec["draws"][1])
        assert an["t"].tolist() == [steps[0]["t"].item()]
    assert [s["t"].item() for s in steps] == [t.item() for t in cb_t]
    for i in range(S):
        assert torch.equal(cb_latents[i], steps[i]["prev_sample"])
        if i + 1 < S:
            assert torch.equal(steps[i + 1]["sample"], steps[i]["prev_sample"])
    final = cb_latents[-1]
    (dec,) = rec["decode"]
    assert torch.equal(dec["in"], final / pipe.vae.config.scaling_factor), "decoder input != final / scaling_factor"
    image_float = dec["out"]
    assert np.array_equal(to_uint8(image_float), image), "float->uint8 rule does not reproduce the PIL image"

    sources = rec["sources"]
    assert sources == expected_sources(c, S), (c["name"], sources)
    K = len(rec["draws"])
    noise = torch.stack(rec["draws"]) if K else torch.zeros((0,) + LATENT_SHAPE)
    assert torch.equal(noise, pool[:K])

    te_ids = rec["text_ids"]  # encode_prompt encodes the prompt first, then the negative prompt
    assert len(te_ids) == (2 if cfg else 1)
    text_ids = torch.cat(te_ids[::-1] if cfg else te_ids).to(torch.int32)
    assert text_ids.shape == ((2 if cfg else 1), 77)

    # ---- tensors --------------------------------------------------------------------------------------
    t = OrderedDict()
    if c["kind"] == "txt2img":
        t["latents"] = latents
    t["noise"] = noise
    t["timesteps"] = torch.stack([s["t"] for s in steps]).to(torch.float32)
    t["start_latents"] = steps[0]["sample"]
    t["model_outputs"] = torch.stack([s["model_output"] for s in steps])
    t["step_latents"] = torch.stack(cb_latents)
    t["final_latents"] = final
    t["image_float"] = image_float
    t["image"] = torch.from_numpy(image)
    t["text_ids"] = text_ids
    if hasattr(sched, "sigmas"):
        t["sigmas"] = sched.sigmas.to(torch.float32)
    if c["kind"] == "img2img":
        t["init_image"] = torch.from_numpy(init_image)
        t["image_latents"] = rec["add_noise"][0]["x0"]
        t["scheduler_timesteps"] = sched_ts.to(torch.float32)
    t = OrderedDict((k, v.detach().contiguous()) for k, v in t.items())
    for k, v in t.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32 and torch.isfinite(v).all(), k

    # ---- json entry -----------------------------------------------------------------------------------
    entry = OrderedDict()
    entry["case"] = c["name"]
    entry["file"] = f"{c['name']}.safetensors"
    entry["pipeline"] = type(pipe).__name__
    if c["pool"] != POOL:
        entry["noise_pool_size"] = c["pool"]
    entry["prompt"] = PROMPT
    entry["negative_prompt"] = c["negative"]
    entry["num_inference_steps"] = c["steps"]
    entry["steps_run"] = S
    entry["guidance_scale"] = c["guidance"]
    entry["do_classifier_free_guidance"] = cfg
    entry["strength"] = IMG2IMG_STRENGTH if c["kind"] == "img2img" else None
    entry["width"], entry["height"] = WIDTH, HEIGHT
    entry["eta"] = c["eta"] if c["sched"] == "DDIMScheduler" else None
    entry["scheduler_class"] = type(sched).__name__
    entry["scheduler_config_source"] = {
        "model": f"tests/fixtures/{model}/scheduler/scheduler_config.json (as loaded by the pipeline)",
        "turbo": str(TURBO_SCHEDULER.relative_to(REPO)),
        "lcm": str(LCM_SCHEDULER.relative_to(REPO)),
    }[c["base"]]
    entry["scheduler_overrides"] = c["overrides"]
    entry["scheduler_config"] = dict(sched.config)
    entry["init_noise_sigma"] = float(sched.init_noise_sigma)
    entry["timesteps"] = [s["t"].item() for s in steps]
    entry["timesteps_dtype"] = str(sched_ts.dtype).replace("torch.", "")
    if c["kind"] == "img2img":
        entry["scheduler_timesteps"] = sched_ts.tolist()
        entry["begin_index"] = getattr(sched, "begin_index", None)
    if "sigmas" in t:
        entry["sigmas"] = t["sigmas"].tolist()
    entry["vae_scaling_factor"] = pipe.vae.config.scaling_factor
    entry["noise_draws"] = K
    entry["noise_sources"] = sources
    entry["seed"] = seed
    entry["tensors"] = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                        for k, v in t.items()]
    entry["notes"] = c["notes"]
    return t, entry, patched


def lcm_config_equivalence(model_scheduler_config: dict) -> None:
    """LCM from the published LCM config == LCM from the model's PNDM config, for what LCM uses."""
    a = LCMScheduler.from_config(dict(read_json(LCM_SCHEDULER)))
    b = LCMScheduler.from_config(dict(model_scheduler_config))
    assert torch.equal(a.alphas_cumprod, b.alphas_cumprod)
    assert a.config.timestep_scaling == b.config.timestep_scaling and a.config.prediction_type == b.config.prediction_type
    for n in (1, 2, 4, 8):
        a.set_timesteps(n)
        b.set_timesteps(n)
        assert torch.equal(a.timesteps, b.timesteps)


def load_pipes(model: str) -> dict:
    folder = FIXTURES / model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t2i = StableDiffusionPipeline.from_pretrained(folder, variant="fp16", dtype=torch.float32)
    t2i.set_progress_bar_config(disable=True)
    comps = {k: v for k, v in t2i.components.items()}
    i2i = StableDiffusionImg2ImgPipeline(**comps, requires_safety_checker=False)
    i2i.set_progress_bar_config(disable=True)
    assert t2i.unet.config.time_cond_proj_dim is None
    return {"txt2img": t2i, "img2img": i2i, "model_scheduler_config": OrderedDict(t2i.scheduler.config)}


def main() -> None:
    init_image = synthetic_image()
    for model in MODELS:
        pipes = load_pipes(model)
        model_sched = pipes["model_scheduler_config"]
        lcm_config_equivalence(model_sched)
        out_dir = FIXTURES / model / "pipeline"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        entries, patched_all = [], set()
        for c in CASES:
            if model not in c["models"]:
                continue
            tensors, entry, patched = run_case(model, pipes, c, init_image)
            patched_all.update(patched)
            save_file(dict(tensors), str(out_dir / entry["file"]), metadata={"format": "pt"})
            entries.append(entry)
            print(f"{model:9s} {c['name']:20s} K={entry['noise_draws']} t={entry['timesteps']}")
        doc = OrderedDict()
        doc["description"] = (f"Whole-pipeline references for {model}, generated by "
                              "tools/reference/make_pipeline_fixtures.py (see its docstring for every tensor).")
        doc["versions"] = versions()
        doc["model"] = model
        doc["model_scheduler_config"] = model_sched
        doc["rules"] = RULES
        doc["noise_injection"] = {
            "replaced": "diffusers.utils.torch_utils.randn_tensor, in every loaded module namespace holding it",
            "patched_modules": sorted(patched_all),
            "forbidden_during_call": [f"torch.{n}" for n in _FORBIDDEN],
        }
        doc["cases"] = entries
        write_json(out_dir / "cases.json", doc)

    total = 0
    for p in sorted(FIXTURES.glob("tiny-sd[12]/pipeline/*")):
        b = p.read_bytes()
        total += len(b)
        print(f"{len(b):>9d}  {hashlib.sha256(b).hexdigest()[:16]}  {p.relative_to(REPO)}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
