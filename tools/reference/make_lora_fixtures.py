#!/usr/bin/env python3
"""Make tiny LoRA files for the tiny fixture models and record what diffusers does with them (LoRA fixtures).

What it makes
-------------
For each tiny model built by make_fixtures.py (tests/fixtures/tiny-sd1, tests/fixtures/tiny-sd2) this writes

    tests/fixtures/<model>/lora/kohya.safetensors          kohya sd-scripts / A1111 format, DIFFUSERS module layout
    tests/fixtures/<model>/lora/kohya_ldm.safetensors      the same tensors under LDM (CompVis) block names
    tests/fixtures/<model>/lora/peft.safetensors           what `StableDiffusionPipeline.save_lora_weights` writes
                                                           from peft adapters today (lora_A/lora_B, metadata)
    tests/fixtures/<model>/lora/diffusers.safetensors      what the diffusers training scripts write (same tensors
                                                           as peft.safetensors, old key spellings, no metadata)
    tests/fixtures/<model>/lora/reference_<lora>_<scale>.safetensors   diffusers' FUSED weights, float32
    tests/fixtures/<model>/lora/reference_two.safetensors  kohya (adapter "a") + peft (adapter "b") together
    tests/fixtures/<model>/lora/cases.json                 every file: format, ranks, alphas, the touched tensors,
                                                           each reference, the exact diffusers calls, the checks run

so the Rust loader (which merges LoRAs into the weights before quantizing) can be tested against diffusers.
Reference files hold only the tensors a LoRA touches, named "<component>.<tensor name in that component's
safetensors file>", e.g. "unet.down_blocks.0.attentions.0.proj_in.weight",
"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight" (the text encoder FILE uses text_model.*;
transformers 5's CLIPTextModel has no text_model submodule in memory, see "Names" below).
Every other tensor of the U-Net and text encoder is asserted unchanged by the fuse (so a LoRA entry diffusers
silently dropped would fail this script), and the VAE is never touched.

The LoRA files
--------------
kohya.safetensors (float16 like kohya's default save_precision, as on civitai; `.alpha` 0-dim float16):
  key = "lora_unet_" + <U-Net module path with every "." replaced by "_"> + ".lora_down.weight" / ".lora_up.weight"
        / ".alpha", and "lora_te_" + <text-encoder module path as in its FILE (text_model.encoder.layers.N...)>.
  This is what kohya sd-scripts networks/lora.py writes for SD 1.x/2.x: it trains its own copy of the DIFFUSERS
  U-Net (library/original_unet.py keeps diffusers' module names), so SD1.5 LoRAs on civitai are
  `lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q`; the LDM spelling
  (`lora_unet_input_blocks_1_1_...`) is what kohya writes for SDXL (whose U-Net it takes from sgm).
  Targets follow kohya's rules: every Linear / 1x1 Conv under a Transformer2DModel (proj_in, proj_out,
  attn1/attn2 to_q/to_k/to_v/to_out.0, ff.net.0.proj, ff.net.2; proj_in/proj_out are 1x1 convs in tiny-sd1
  (use_linear_projection false) and Linears in tiny-sd2), and with LoCon (`conv_dim`) the 3x3 convs of
  ResnetBlock2D / Downsample2D plus the Linear/1x1 modules there (time_emb_proj, conv_shortcut); text
  encoder: CLIPAttention q/k/v/out_proj and CLIPMLP fc1/fc2.
  Ranks/alphas as kohya sets them: Linear and 1x1 conv: network_dim 4, network_alpha 2 (alpha/rank = 0.5);
  3x3 convs: conv_dim 2, conv_alpha 1.5 (alpha/rank = 0.75). Shapes: Linear down [r,in], up [out,r];
  1x1 conv down [r,in,1,1], up [out,r,1,1]; 3x3 conv ("LoCon") down [r,in,3,3], up [out,r,1,1].
  Safetensors metadata: a few kohya `ss_*` fields (strings); nothing needs them.
kohya_ldm.safetensors: identical tensors; U-Net keys use LDM block names (text-encoder keys unchanged):
    down_blocks.B.resnets.J    -> input_blocks.(1 + B*(L+1) + J).0     (L = layers_per_block = 2)
    down_blocks.B.attentions.J -> input_blocks.(1 + B*(L+1) + J).1
    down_blocks.B.downsamplers.0.conv -> input_blocks.((B+1)*(L+1)).0.op
    mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
    up_blocks.B.resnets.J / attentions.J -> output_blocks.(B*(L+1) + J).0 / .1
    inside resnets: conv1 -> in_layers.2, conv2 -> out_layers.3, time_emb_proj -> emb_layers.1,
    conv_shortcut -> skip_connection; inside attentions: unchanged (proj_in, transformer_blocks.0.attn1.to_q...).
  diffusers' SD1/SD2 loader maps these only when called as load_lora_weights(..., unet_config=pipe.unet.config)
  (StableDiffusionXLLoraLoaderMixin passes it itself; the SD mixin does not). Its fused weights are asserted
  bit-identical to kohya.safetensors' at every scale, so both files share the kohya reference files.
peft.safetensors (float32): pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=[...])),
  peft.inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, ...), pipe.text_encoder) (what transformers'
  add_adapter does; transformers 5.24 refuses its own add_adapter with peft < 0.22, see requirements.txt),
  seeded values written into every lora_A/lora_B, then StableDiffusionPipeline.save_lora_weights(dir,
  unet_lora_layers=get_peft_model_state_dict(unet), text_encoder_lora_layers=get_peft_model_state_dict(te),
  unet_lora_adapter_metadata=cfg.to_dict(), text_encoder_lora_adapter_metadata=...). Keys:
  "unet.<module>.lora_A.weight" (down) / ".lora_B.weight" (up), "text_encoder.encoder.layers.N...lora_A.weight"
  (transformers 5's flat CLIP names, no text_model.). The header's __metadata__["lora_adapter_metadata"] is a JSON
  string of the LoraConfig fields prefixed "unet." / "text_encoder." ("unet.r": 4, "unet.lora_alpha": 8, ...).
diffusers.safetensors (float32, no metadata): the same tensors as the diffusers training scripts
  (train_dreambooth_lora.py, train_text_to_image_lora.py) save them: convert_state_dict_to_diffusers(
  get_peft_model_state_dict(m)), so U-Net attention keys read "...to_q.lora.down.weight" / ".lora.up.weight",
  text-encoder q/k/v/out_proj "...q_proj.lora_linear_layer.down.weight", everything else (proj_in, convs,
  mlp.fc1) stays "lora_A"/"lora_B"; text-encoder keys carry "text_model." as transformers 4 wrote them (this
  script adds it: transformers 5 would write the flat names). No alpha anywhere: diffusers uses alpha = rank.

Merge formulas (each verified below against diffusers' fused tensors, max abs error asserted < 1e-5)
------------------------------------------------------------------------------------------------------
  s = lora_scale of pipe.fuse_lora(lora_scale=s) (a kohya/A1111 "multiplier"); w_i = set_adapters weight.
  Linear:         W' = W + s * (alpha/r) * up @ down          up [out,r], down [r,in]
  1x1 conv:       the same on the [out,in] / [out,r] / [r,in] views of the [.,.,1,1] tensors
  kxk conv:       W'[o,i,y,x] = W[o,i,y,x] + s * (alpha/r) * sum_k up[o,k,0,0] * down[k,i,y,x]
                  i.e. (up.reshape(out,r) @ down.reshape(r, in*k*k)).reshape(out,in,k,k)
  several LoRAs:  W' = W + s * sum_i w_i * (alpha_i/r_i) * up_i @ down_i   (peft adds one delta after another)
  alpha:          kohya: the module's own `.alpha` scalar (absent -> alpha = r, scale 1); PEFT/diffusers files:
                  lora_alpha (and alpha_pattern/rank_pattern) from the safetensors metadata "lora_adapter_metadata"
                  ("unet."/"text_encoder." prefixed LoraConfig fields); NO metadata -> alpha = r (scale 1), no
                  matter what alpha the LoRA was trained with. r = up.shape[1] (= down.shape[0]).
  PEFT lora_A = kohya lora_down = diffusers lora.down / lora_linear_layer.down; lora_B = lora_up = .up.
  Only weights change; biases never. Everything in float32 (kohya's fp16 tensors are upcast exactly).

Names (how diffusers 0.42.1 maps kohya names; the Rust loader should match by module path instead)
----------------------------------------------------------------------------------------------------
  kohya U-Net: strip "lora_unet_", replace EVERY "_" by ".", then re-join the known names: down_blocks,
  mid_block, up_blocks, transformer_blocks, to_q/to_k/to_v (to.q.lora -> to_q_lora...), to_out.0
  ("to.out.0.lora" -> to_out_lora), proj_in, proj_out, conv_in/conv_out, time_emb_proj, conv_shortcut,
  time_embedding.linear_1/2; ff.net.0.proj / ff.net.2 / conv1 / conv2 / resnets / attentions need nothing
  (their "_"-free parts come back as "."). LDM names first go through _maybe_map_sgm_blocks_to_diffusers
  (block arithmetic above) and in_layers.2 -> conv1, out_layers.3 -> conv2, emb_layers.1 -> time_emb_proj,
  skip_connection -> conv_shortcut, op -> conv. A Rust loader can do it exactly without a word list: build
  "lora_unet_" + path.replace(".", "_") for every Linear/Conv module path of the U-Net (and "lora_te_" +
  file path for the text encoder) and look the LoRA names up; this script asserts that map is injective for
  both tiny models (no two modules give the same kohya name), so it is unambiguous.
  kohya text encoder: "lora_te_text_model_encoder_layers_N_self_attn_q_proj" -> file tensor
  text_model.encoder.layers.N.self_attn.q_proj.weight (in memory, transformers 5: encoder.layers.N....;
  diffusers strips a "text_model." prefix itself when the model has no text_model attribute).
  PEFT text encoder: "text_encoder.encoder.layers.N..." (written with transformers 5) or
  "text_encoder.text_model.encoder.layers.N..." (transformers 4) -- both name the same tensor.

Randomness: one torch.Generator per LoRA file, seeded crc32("<model>/<lora>"); for each target in the
listed order: down = N(0,1)/sqrt(fan_in) (fan_in = in*k*k), up = N(0,1) * 0.3/((alpha/r)*sqrt(r)), so
(alpha/r)*up@down has about 0.3x the std of the base weight (base weights are N(0,1)/sqrt(fan_in)):
visible, not explosive. kohya values are then rounded to float16 (the references use the rounded values).

Checks (asserted; results in cases.json "checks"): fresh pipeline weights == the model files; after
load_lora_weights (unfused) every base weight is unchanged; fuse_lora(lora_scale=0.0) leaves every weight
bit-identical; after each fuse exactly the expected tensors changed; every touched tensor matches the
formula (float64) within 1e-5; kohya_ldm fuses bit-identically to kohya.

diffusers quirks (probed on in-memory LoRAs, observed values in cases.json "diffusers_quirks", not asserted; a
loader should not copy them, and the fixtures avoid them):
  * per-module kohya alphas: a module whose alpha is not the file's most common one gets the most common one
    when it is a U-Net to_q/to_k/to_v/to_out.0 (its alpha_pattern entry is named after the old
    "attn1.processor.to_k_lora.down.weight" key) or any text-encoder module under transformers 5 (the entry keeps
    "text_model."); ff/proj/conv modules do get their own. Hence one alpha per module kind in kohya.safetensors.
  * a kohya text-encoder part with q/k/v_proj but no out_proj: the q/k/v entries are dropped silently (the key
    spelling is guessed from the presence of "to_out_lora").
  * LDM names in a StableDiffusionPipeline without unet_config=: NoMatchingPeftModuleError.
  * LDM block ids >= 10 (full-size SD1.5: input/output_blocks 10, 11): KeyError, as block i's keys are
    collected by substring ("output_blocks_1" also matches "output_blocks_11"); the tiny models stop at 8.

Everything runs in float32 on CPU with one thread; re-running gives byte-identical files with the library
versions in tools/reference/requirements.txt.

How to run (from the repository root, after make_fixtures.py; ~20 s on 2 cores):

    /tmp/refenv/bin/python tools/reference/make_lora_fixtures.py
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import struct
import tempfile
import types
import warnings
import zlib
from collections import OrderedDict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers  # noqa: E402
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft import LoraConfig, inject_adapter_in_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
MODELS = ["tiny-sd1", "tiny-sd2"]

# kohya: Linear / 1x1 conv use network_dim/network_alpha; 3x3 convs use conv_dim/conv_alpha.
NET_DIM, NET_ALPHA = 4, 2.0
CONV_DIM, CONV_ALPHA = 2, 1.5
# peft file: one LoraConfig per component (alpha != rank on purpose, different per component).
PEFT_RANK, PEFT_UNET_ALPHA, PEFT_TE_ALPHA = 4, 8.0, 2.0
REL_EFFECT = 0.3  # std of (alpha/r) * up @ down relative to the base weight's std
SCALES = [0.5, 1.0]
TWO_WEIGHTS = [0.8, 0.6]
TOL = 1e-5
LAYERS_PER_BLOCK = 2  # both tiny configs (asserted)

_A = "down_blocks.0.attentions.0."
KOHYA_UNET = (
    [_A + "proj_in", _A + "proj_out"]
    + [_A + "transformer_blocks.0." + m for m in (
        "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
        "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
        "ff.net.0.proj", "ff.net.2")]
    + [
        "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",  # LDM middle_block.1
        "up_blocks.2.attentions.1.proj_out",                       # LDM output_blocks.7.1
        "up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
        "down_blocks.0.resnets.0.conv1",          # 3x3 LoCon; LDM input_blocks.1.0.in_layers.2
        "down_blocks.0.resnets.0.time_emb_proj",  # LDM input_blocks.1.0.emb_layers.1
        "down_blocks.0.downsamplers.0.conv",      # 3x3 LoCon (Downsample2D); LDM input_blocks.3.0.op
        "up_blocks.2.resnets.0.conv_shortcut",    # 1x1 conv; LDM output_blocks.6.0.skip_connection
    ]
)


def kohya_te(num_layers: int) -> list[str]:
    last = num_layers - 1
    return ([f"text_model.encoder.layers.0.{m}" for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")]
        + [f"text_model.encoder.layers.{last}.self_attn.out_proj"])


PEFT_UNET = [
    _A + "transformer_blocks.0.attn1.to_q", _A + "transformer_blocks.0.attn1.to_k",
    _A + "transformer_blocks.0.attn1.to_v", _A + "transformer_blocks.0.attn1.to_out.0",
    "up_blocks.2.attentions.2.proj_in",
    "up_blocks.2.attentions.2.transformer_blocks.0.attn2.to_q",
    "up_blocks.2.attentions.2.transformer_blocks.0.attn2.to_v",
    "down_blocks.0.resnets.0.conv1",  # 3x3 conv (kohya.safetensors touches it too)
]
PEFT_TE = [
    "text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.0.self_attn.v_proj",
    "text_model.encoder.layers.1.self_attn.out_proj", "text_model.encoder.layers.1.mlp.fc1",
]

CALL_LOAD = "pipe = StableDiffusionPipeline.from_pretrained('tests/fixtures/<model>', variant='fp16', dtype=torch.float32)"


# ----------------------------------------------------------------------------------------------- helpers

def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
    }


def load_pipe(model: str) -> StableDiffusionPipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(FIXTURES / model, variant="fp16", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def te_prefix(te) -> str:
    """What to put in front of an in-memory text-encoder name to get its name in the model file."""
    return "" if hasattr(te, "text_model") else "text_model."


def te_mem(te, file_path: str) -> str:
    p = te_prefix(te)
    assert file_path.startswith(p)
    return file_path[len(p):]


def component_file(model: str, comp: str) -> Path:
    folder = FIXTURES / model / comp
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == 1, files
    return files[0]


def base_weights(model: str) -> dict[str, torch.Tensor]:
    """"<component>.<file tensor name>" -> float32 tensor, for the U-Net and the text encoder."""
    out = {}
    for comp in ("unet", "text_encoder"):
        for k, v in load_file(str(component_file(model, comp))).items():
            out[f"{comp}.{k}"] = v.float()
    return out


def effective_weights(pipe) -> dict[str, torch.Tensor]:
    """Current parameters under file names: peft's base_layer folded away, lora_* parameters left out."""
    out = {}
    for comp, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        pre = te_prefix(m) if comp == "text_encoder" else ""
        for k, v in m.state_dict().items():
            if "lora_" in k:
                continue
            out[f"{comp}.{pre}{k.replace('.base_layer.', '.')}"] = v.detach().clone()
    return out


def module(pipe, comp: str, file_path: str) -> torch.nn.Module:
    if comp == "unet":
        return pipe.unet.get_submodule(file_path)
    return pipe.text_encoder.get_submodule(te_mem(pipe.text_encoder, file_path))


def kind_of(mod: torch.nn.Module) -> str:
    if isinstance(mod, torch.nn.Linear):
        return "linear"
    assert isinstance(mod, torch.nn.Conv2d), type(mod)
    return f"conv{mod.kernel_size[0]}x{mod.kernel_size[1]}"


def draw(g: torch.Generator, wshape, r: int, ratio: float):
    """down [r, in(, k, k)], up [out, r(, 1, 1)]: (alpha/r)*up@down has REL_EFFECT x the base weight's std."""
    out = wshape[0]
    fan_in = math.prod(wshape[1:])
    down = torch.randn((r, *wshape[1:]), generator=g) / math.sqrt(fan_in)
    up_shape = (out, r) if len(wshape) == 2 else (out, r, 1, 1)
    up = torch.randn(up_shape, generator=g) * (REL_EFFECT / (ratio * math.sqrt(r)))
    return down, up


def delta64(down: torch.Tensor, up: torch.Tensor, wshape) -> torch.Tensor:
    """up @ down in float64 (Linear, 1x1 and kxk conv alike), shaped like the weight."""
    r = down.shape[0]
    return (up.double().reshape(up.shape[0], r) @ down.double().reshape(r, -1)).reshape(wshape)


def ldm_path(path: str) -> str:
    """diffusers U-Net module path -> original LDM (CompVis/sgm) module path."""
    n = LAYERS_PER_BLOCK + 1
    res = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
           "conv_shortcut": "skip_connection"}

    def inner(kind, rest):
        return res[rest] if kind == "resnets" else rest

    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + b * n + j}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", path)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        idx = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(m[1], int(m[2]))]
        return f"middle_block.{idx}.{inner(m[1], m[3])}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", path)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{b * n + j}.{0 if kind == 'resnets' else 1}.{inner(kind, rest)}"
    raise ValueError(path)


def sort_header_metadata(path: Path) -> None:
    """safetensors writes __metadata__ from a hash map (random order per run): rewrite it sorted, so reruns are
    byte-identical. Tensor entries and data are left as they are."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n], object_pairs_hook=OrderedDict)
    if "__metadata__" in header:
        header["__metadata__"] = OrderedDict(sorted(header["__metadata__"].items()))
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])


def save_sorted(tensors: dict, path: Path, metadata: dict) -> None:
    save_file(tensors, str(path), metadata=metadata)
    sort_header_metadata(path)
    assert all(torch.equal(v, tensors[k]) for k, v in load_file(str(path)).items())


def kohya_name(comp: str, path: str) -> str:
    return ("lora_unet_" if comp == "unet" else "lora_te_") + path.replace(".", "_")


def assert_injective_kohya_names(pipe) -> int:
    seen = {}
    for comp, m in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        pre = te_prefix(m) if comp == "text_encoder" else ""
        for name, mod in m.named_modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                k = kohya_name(comp, pre + name)
                assert k not in seen, (k, seen[k], name)
                seen[k] = name
    return len(seen)


# ----------------------------------------------------------------------------------------------- LoRA files

def make_kohya(model: str, pipe, base, out_dir: Path) -> tuple[list[dict], dict]:
    """kohya.safetensors and kohya_ldm.safetensors (same tensors). Returns (targets, file entries)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{model}/kohya".encode()))
    te_layers = pipe.text_encoder.config.num_hidden_layers
    targets, sd, sd_ldm = [], OrderedDict(), OrderedDict()
    for comp, paths in (("unet", KOHYA_UNET), ("text_encoder", kohya_te(te_layers))):
        for path in paths:
            mod = module(pipe, comp, path)
            kind = kind_of(mod)
            tensor = f"{comp}.{path}.weight"
            wshape = tuple(base[tensor].shape)
            assert wshape == tuple(mod.weight.shape)
            r, alpha = (CONV_DIM, CONV_ALPHA) if kind not in ("linear", "conv1x1") else (NET_DIM, NET_ALPHA)
            down, up = draw(g, wshape, r, alpha / r)
            down, up, a = down.half(), up.half(), torch.tensor(alpha, dtype=torch.float16)
            name = kohya_name(comp, path)
            name_ldm = kohya_name(comp, ldm_path(path)) if comp == "unet" else name
            for d, n in ((sd, name), (sd_ldm, name_ldm)):
                d[n + ".lora_down.weight"] = down
                d[n + ".lora_up.weight"] = up
                d[n + ".alpha"] = a
            targets.append({"tensor": tensor, "kind": kind, "weight_shape": list(wshape), "rank": r,
                            "alpha": alpha, "alpha_over_rank": alpha / r, "down": down.float(), "up": up.float(),
                            "kohya_name": name, "kohya_ldm_name": name_ldm})
    v2 = model == "tiny-sd2"
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(NET_DIM),
        "ss_network_alpha": str(NET_ALPHA),
        "ss_network_args": json.dumps({"conv_dim": str(CONV_DIM), "conv_alpha": str(CONV_ALPHA)}),
        "ss_v2": str(v2),
        "ss_base_model_version": "sd_v2" if v2 else "sd_v1",
        "ss_training_comment": "webdiffusion test fixture (tools/reference/make_lora_fixtures.py), random weights",
    }
    save_sorted(dict(sd), out_dir / "kohya.safetensors", meta)
    save_sorted(dict(sd_ldm), out_dir / "kohya_ldm.safetensors", meta)
    common = {"dtype": "float16", "alpha_dtype": "float16 0-dim", "safetensors_metadata": meta,
              "network_dim": NET_DIM, "network_alpha": NET_ALPHA, "conv_dim": CONV_DIM, "conv_alpha": CONV_ALPHA,
              "rank_rule": "Linear and 1x1 conv: network_dim/network_alpha; 3x3 conv: conv_dim/conv_alpha"}
    files = {
        "kohya": {"file": "kohya.safetensors", "format": "kohya",
                  "layout": "kohya sd-scripts SD1.x/2.x: diffusers module paths, '.' -> '_'",
                  "load_call": "pipe.load_lora_weights('tests/fixtures/<model>/lora', weight_name='kohya.safetensors')",
                  **common},
        "kohya_ldm": {"file": "kohya_ldm.safetensors", "format": "kohya",
                      "layout": "LDM/CompVis block names for the U-Net (input_blocks/middle_block/output_blocks), "
                                "as kohya writes SDXL; text encoder as kohya",
                      "load_call": "pipe.load_lora_weights('tests/fixtures/<model>/lora', "
                                   "weight_name='kohya_ldm.safetensors', unet_config=pipe.unet.config)",
                      **common},
    }
    return targets, files


def make_peft(model: str, out_dir: Path) -> tuple[list[dict], dict]:
    """peft.safetensors (save_lora_weights of real peft adapters) and diffusers.safetensors (training-script form)."""
    pipe = load_pipe(model)
    g = torch.Generator().manual_seed(zlib.crc32(f"{model}/peft".encode()))
    te = pipe.text_encoder
    ucfg = LoraConfig(r=PEFT_RANK, lora_alpha=PEFT_UNET_ALPHA, target_modules=list(PEFT_UNET))
    tcfg = LoraConfig(r=PEFT_RANK, lora_alpha=PEFT_TE_ALPHA, target_modules=[te_mem(te, p) for p in PEFT_TE])
    pipe.unet.add_adapter(ucfg)  # adapter "default"
    inject_adapter_in_model(tcfg, te)  # = transformers' add_adapter minus its peft>=0.22 version check
    targets = []
    for comp, paths, alpha in (("unet", PEFT_UNET, PEFT_UNET_ALPHA), ("text_encoder", PEFT_TE, PEFT_TE_ALPHA)):
        for path in paths:
            mod = module(pipe, comp, path)
            assert isinstance(mod, LoraLayer)
            base_w = mod.get_base_layer().weight
            wshape = tuple(base_w.shape)
            down, up = draw(g, wshape, PEFT_RANK, alpha / PEFT_RANK)
            with torch.no_grad():
                assert mod.lora_A["default"].weight.shape == down.shape and mod.lora_B["default"].weight.shape == up.shape
                mod.lora_A["default"].weight.copy_(down)
                mod.lora_B["default"].weight.copy_(up)
            targets.append({"tensor": f"{comp}.{path}.weight", "kind": kind_of(mod.get_base_layer()),
                            "weight_shape": list(wshape), "rank": PEFT_RANK, "alpha": alpha,
                            "alpha_over_rank": alpha / PEFT_RANK, "down": down, "up": up})
    unet_sd = get_peft_model_state_dict(pipe.unet)
    te_sd = get_peft_model_state_dict(te)
    assert len(unet_sd) == 2 * len(PEFT_UNET) and len(te_sd) == 2 * len(PEFT_TE)

    def metadata(cfg):
        md = cfg.to_dict()
        md["target_modules"] = sorted(md["target_modules"])  # a set in LoraConfig: fix the order
        md["base_model_name_or_path"] = None
        return md

    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd, weight_name="peft.safetensors",
            unet_lora_adapter_metadata=metadata(ucfg), text_encoder_lora_adapter_metadata=metadata(tcfg))
        # The diffusers training scripts' form: convert_state_dict_to_diffusers, no metadata; transformers 4 names.
        StableDiffusionPipeline.save_lora_weights(
            tmp, unet_lora_layers=convert_state_dict_to_diffusers(unet_sd),
            text_encoder_lora_layers={te_prefix(te) + k: v for k, v in convert_state_dict_to_diffusers(te_sd).items()},
            weight_name="diffusers.safetensors")
        for f in ("peft.safetensors", "diffusers.safetensors"):
            shutil.copyfile(Path(tmp) / f, out_dir / f)
            sort_header_metadata(out_dir / f)
    with safe_open(str(out_dir / "peft.safetensors"), "pt") as f:
        header_meta = dict(sorted(f.metadata().items()))
    files = {
        "peft": {"file": "peft.safetensors", "format": "peft", "dtype": "float32",
                 "layout": "StableDiffusionPipeline.save_lora_weights(unet_lora_layers=get_peft_model_state_dict(unet), "
                           "text_encoder_lora_layers=get_peft_model_state_dict(text_encoder), "
                           "unet_lora_adapter_metadata=LoraConfig.to_dict(), text_encoder_lora_adapter_metadata=...)",
                 "rank": PEFT_RANK, "lora_alpha": {"unet": PEFT_UNET_ALPHA, "text_encoder": PEFT_TE_ALPHA},
                 "alpha_source": "safetensors __metadata__['lora_adapter_metadata'] (JSON): 'unet.lora_alpha', "
                                 "'text_encoder.lora_alpha' (+ '.r', '.alpha_pattern', '.rank_pattern')",
                 "safetensors_metadata": header_meta,
                 "load_call": "pipe.load_lora_weights('tests/fixtures/<model>/lora', weight_name='peft.safetensors')"},
        "diffusers": {"file": "diffusers.safetensors", "format": "diffusers", "dtype": "float32",
                      "layout": "diffusers training scripts: convert_state_dict_to_diffusers(get_peft_model_state_dict(m)); "
                                "U-Net to_q/to_k/to_v/to_out.0 -> '.lora.down/.lora.up', text-encoder q/k/v/out_proj -> "
                                "'.lora_linear_layer.down/.up', the rest keeps lora_A/lora_B; text encoder 'text_model.' "
                                "names (transformers 4)",
                      "rank": PEFT_RANK, "lora_alpha": "none in the file: diffusers uses alpha = rank (scale 1.0)",
                      "same_tensors_as": "peft.safetensors",
                      "load_call": "pipe.load_lora_weights('tests/fixtures/<model>/lora', weight_name='diffusers.safetensors')"},
    }
    return targets, files


# ----------------------------------------------------------------------------------------------- references

def check_and_collect(pipe, base, terms: list[tuple[float, list[dict]]], label: str) -> tuple[dict, float]:
    """terms: (multiplier, targets) with multiplier = s * w_i. Asserts only the expected tensors changed and that
    each matches W + sum multiplier * (alpha/r) * up @ down. Returns (touched fused tensors, max abs error)."""
    now = effective_weights(pipe)
    expected = {}
    for mult, targets in terms:
        for t in targets:
            name = t["tensor"]
            if name not in expected:
                expected[name] = base[name].double()
            expected[name] = expected[name] + mult * t["alpha_over_rank"] * delta64(t["down"], t["up"], t["weight_shape"])
    changed = set()
    for k, v in now.items():
        assert k in base, k
        if not torch.equal(v, base[k]):
            changed.add(k)
    assert changed == set(expected), (label, sorted(changed ^ set(expected)))
    max_err = 0.0
    out = OrderedDict()
    for name in sorted(expected):
        got = now[name]
        assert got.dtype == torch.float32
        err = (got.double() - expected[name]).abs().max().item()
        max_err = max(max_err, err)
        out[name] = got.contiguous()
    assert max_err < TOL, (label, max_err)
    return out, max_err


def assert_base(pipe, base, label: str) -> None:
    now = effective_weights(pipe)
    for k, v in now.items():
        assert torch.equal(v, base[k]), (label, k)


def lora_touched(pipe) -> int:
    return sum(isinstance(m, LoraLayer) for c in (pipe.unet, pipe.text_encoder) for m in c.modules())


def run_model(model: str) -> dict:
    out_dir = FIXTURES / model / "lora"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    base = base_weights(model)

    pipe = load_pipe(model)
    cfg = pipe.unet.config
    assert cfg.layers_per_block == LAYERS_PER_BLOCK
    assert_base(pipe, base, "fresh pipeline")
    n_kohya_names = assert_injective_kohya_names(pipe)
    te_pre = te_prefix(pipe.text_encoder)
    kohya_targets, files = make_kohya(model, pipe, base, out_dir)
    del pipe
    peft_targets, peft_files = make_peft(model, out_dir)
    files.update(peft_files)
    files["kohya"]["targets"] = files["kohya_ldm"]["targets"] = kohya_targets
    files["peft"]["targets"] = peft_targets
    # diffusers.safetensors: same tensors, alpha = rank
    diffusers_targets = [{**t, "alpha": None, "alpha_over_rank": 1.0} for t in peft_targets]
    files["diffusers"]["targets"] = diffusers_targets
    lora_dir = str(out_dir)
    load_kw = {"kohya": {"weight_name": "kohya.safetensors"},
               "kohya_ldm": {"weight_name": "kohya_ldm.safetensors", "unet_config": True},
               "peft": {"weight_name": "peft.safetensors"},
               "diffusers": {"weight_name": "diffusers.safetensors"}}

    def load(pipe, lora, adapter_name=None):
        kw = dict(load_kw[lora])
        if kw.pop("unet_config", False):
            kw["unet_config"] = pipe.unet.config
        if adapter_name is not None:
            kw["adapter_name"] = adapter_name
        pipe.load_lora_weights(lora_dir, **kw)

    refs, checks, errors = [], OrderedDict(), OrderedDict()
    kohya_fused = {}
    for lora, scales in (("kohya", SCALES), ("kohya_ldm", SCALES), ("peft", SCALES), ("diffusers", [1.0])):
        targets = files[lora]["targets"]
        # scale 0 / not fused: base weights
        pipe = load_pipe(model)
        load(pipe, lora)
        assert lora_touched(pipe) == len(targets), (lora, lora_touched(pipe), len(targets))
        assert_base(pipe, base, f"{lora} loaded, not fused")
        pipe.fuse_lora(lora_scale=0.0)
        assert_base(pipe, base, f"{lora} fused at 0")
        checks[f"{lora}: loaded-unfused and fuse_lora(lora_scale=0.0) leave every weight bit-identical"] = True
        del pipe
        for s in scales:
            pipe = load_pipe(model)
            load(pipe, lora)
            pipe.fuse_lora(lora_scale=s)
            fused, err = check_and_collect(pipe, base, [(s, targets)], f"{model} {lora} {s}")
            errors[f"{lora} @ {s}"] = err
            del pipe
            ref_lora = lora
            if lora == "kohya":
                kohya_fused[s] = fused
            if lora == "kohya_ldm":
                assert fused.keys() == kohya_fused[s].keys()
                assert all(torch.equal(fused[k], kohya_fused[s][k]) for k in fused)
                checks[f"kohya_ldm @ {s} fuses bit-identically to kohya @ {s}"] = True
                ref_lora = "kohya"
            fname = f"reference_{ref_lora}_{s}.safetensors"
            if ref_lora == lora:
                save_file(dict(fused), str(out_dir / fname), metadata={"format": "pt"})
            refs.append({
                "file": fname, "loras": [lora], "lora_scale": s,
                "calls": [CALL_LOAD, files[lora]["load_call"], f"pipe.fuse_lora(lora_scale={s})"],
                "formula": f"W + {s} * (alpha/r) * up @ down",
                "tensors": sorted(fused), "max_abs_err_vs_formula": err,
                **({"note": "kohya_ldm shares kohya's reference file (asserted bit-identical)"} if ref_lora != lora else {}),
            })
    # two LoRAs at once
    pipe = load_pipe(model)
    load(pipe, "kohya", adapter_name="a")
    load(pipe, "peft", adapter_name="b")
    pipe.set_adapters(["a", "b"], adapter_weights=TWO_WEIGHTS)
    pipe.fuse_lora()
    fused, err = check_and_collect(
        pipe, base, [(TWO_WEIGHTS[0], kohya_targets), (TWO_WEIGHTS[1], peft_targets)], f"{model} two")
    errors["two"] = err
    del pipe
    save_file(dict(fused), str(out_dir / "reference_two.safetensors"), metadata={"format": "pt"})
    refs.append({
        "file": "reference_two.safetensors", "loras": ["kohya", "peft"], "adapter_names": ["a", "b"],
        "adapter_weights": TWO_WEIGHTS, "lora_scale": 1.0,
        "calls": [CALL_LOAD,
                  "pipe.load_lora_weights('tests/fixtures/<model>/lora', weight_name='kohya.safetensors', adapter_name='a')",
                  "pipe.load_lora_weights('tests/fixtures/<model>/lora', weight_name='peft.safetensors', adapter_name='b')",
                  f"pipe.set_adapters(['a', 'b'], adapter_weights={TWO_WEIGHTS})",
                  "pipe.fuse_lora()"],
        "formula": f"W + {TWO_WEIGHTS[0]} * (alpha_a/r_a) * up_a @ down_a + {TWO_WEIGHTS[1]} * (alpha_b/r_b) * up_b @ down_b",
        "tensors": sorted(fused), "max_abs_err_vs_formula": err,
    })
    checks["fresh pipeline weights equal the model files (float16 files upcast)"] = True
    checks[f"kohya names of all {n_kohya_names} Linear/Conv2d modules (U-Net + text encoder) are distinct"] = True
    checks["after every fuse exactly the listed tensors changed (all other U-Net/text-encoder tensors bit-identical)"] = True

    # JSON: targets without tensors, each with the keys it has in its file
    for lora, f in files.items():
        with safe_open(str(out_dir / f["file"]), "pt") as sf:
            keys = set(sf.keys())
        assigned = set()
        targets = []
        for t in f["targets"]:
            comp, path = t["tensor"].split(".", 1)
            path = path.removesuffix(".weight")
            if lora == "kohya":
                prefix = t["kohya_name"] + "."
            elif lora == "kohya_ldm":
                prefix = t["kohya_ldm_name"] + "."
            elif lora == "peft" and comp == "text_encoder":
                assert path.startswith(te_pre)
                prefix = f"{comp}.{path[len(te_pre):]}."
            else:
                prefix = f"{comp}.{path}."
            mine = sorted(k for k in keys if k.startswith(prefix))
            assert len(mine) == (3 if lora.startswith("kohya") else 2), (lora, prefix, mine)
            assert not assigned & set(mine)
            assigned |= set(mine)
            t = {k: v for k, v in t.items() if k not in ("down", "up", "kohya_name", "kohya_ldm_name")}
            t["keys"] = mine
            targets.append(t)
        assert assigned == keys, (lora, sorted(keys - assigned))
        f["targets"] = targets
        f["bytes"] = (out_dir / f["file"]).stat().st_size
    for r in refs:
        r["bytes"] = (out_dir / r["file"]).stat().st_size
    for p in out_dir.iterdir():
        p.chmod(0o644)
    return {"files": files, "references": refs, "checks": checks, "max_abs_err": errors}


# ----------------------------------------------------------------------------------------------- quirks

def probe_quirks(model: str) -> list[dict]:
    """diffusers behaviour a loader should not copy (observed here, not asserted; in-memory LoRAs)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{model}/quirks".encode()))
    quirks = []

    def lin(name, out, inn, alpha, r=4):
        return {name + ".lora_down.weight": torch.randn(r, inn, generator=g) * 0.1,
                name + ".lora_up.weight": torch.randn(out, r, generator=g) * 0.1,
                name + ".alpha": torch.tensor(float(alpha))}

    def scaling(pipe, comp, path):
        m = module(pipe, comp, path)
        return {k: float(v) for k, v in m.scaling.items()} if isinstance(m, LoraLayer) else None

    # 1. per-module alpha on U-Net attention / text encoder modules
    sd = {}
    a = "down_blocks.0.attentions.0.transformer_blocks.0."
    for m in ("attn1.to_q", "attn1.to_v", "ff.net.2"):
        out, inn = (16, 64) if m == "ff.net.2" else (16, 16)
        sd.update(lin(kohya_name("unet", a + m), out, inn, 2.0))
    sd.update(lin(kohya_name("unet", a + "attn1.to_k"), 16, 16, 1.0))  # the odd one: kohya scale 0.25
    sd.update(lin(kohya_name("unet", a + "ff.net.0.proj"), 128, 16, 1.0))  # odd, but a ".lora." name in diffusers
    for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1"):
        out, inn = (64, 16) if m == "mlp.fc1" else (16, 16)
        sd.update(lin(kohya_name("text_encoder", "text_model.encoder.layers.0." + m), out, inn, 2.0))
    sd.update(lin(kohya_name("text_encoder", "text_model.encoder.layers.0.mlp.fc2"), 16, 64, 1.0))  # odd
    pipe = load_pipe(model)
    pipe.load_lora_weights(dict(sd))
    quirks.append({
        "what": "kohya file whose modules have different .alpha values (block-wise alphas): modules whose alpha is not "
                "the most common one",
        "kohya_expected_scaling": {"unet attn1.to_k": 0.25, "unet ff.net.0.proj": 0.25, "text_encoder layers.0.mlp.fc2": 0.25},
        "diffusers_scaling": {
            "unet attn1.to_k": scaling(pipe, "unet", a + "attn1.to_k"),
            "unet ff.net.0.proj": scaling(pipe, "unet", a + "ff.net.0.proj"),
            "text_encoder layers.0.mlp.fc2": scaling(pipe, "text_encoder", "text_model.encoder.layers.0.mlp.fc2")},
        "why": "diffusers names the alpha_pattern entry of to_q/to_k/to_v/to_out.0 after the old "
               "'attn1.processor.to_k_lora.down.weight' key, which matches no module; for the text encoder it keeps the "
               "'text_model.' prefix the transformers-5 module names lack. Unmatched entries fall back to the most "
               "common alpha. The fixtures therefore use one alpha for all Linear/1x1 modules and one for all 3x3 convs.",
    })
    del pipe
    # 2. text-encoder attention LoRA without any out_proj entry
    sd = {}
    sd.update(lin(kohya_name("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"), 16, 16, 2.0))
    sd.update(lin(kohya_name("text_encoder", "text_model.encoder.layers.0.mlp.fc1"), 64, 16, 2.0))
    pipe = load_pipe(model)
    pipe.load_lora_weights(dict(sd))
    quirks.append({
        "what": "kohya text-encoder LoRA with self_attn.q_proj and mlp.fc1 but no out_proj",
        "q_proj_loaded": isinstance(module(pipe, "text_encoder", "text_model.encoder.layers.0.self_attn.q_proj"), LoraLayer),
        "fc1_loaded": isinstance(module(pipe, "text_encoder", "text_model.encoder.layers.0.mlp.fc1"), LoraLayer),
        "why": "the text-encoder key spelling is guessed from the presence of 'to_out_lora'; without it the q/k/v "
               "'to_q_lora' keys are never renamed and are silently dropped. Real kohya files always have out_proj.",
    })
    del pipe
    # 3. LDM names without unet_config
    sd = lin("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", 16, 16, 2.0)
    pipe = load_pipe(model)
    try:
        pipe.load_lora_weights(dict(sd))
        obs = f"no error; LoRA layers injected: {lora_touched(pipe)}"
    except Exception as e:  # noqa: BLE001
        obs = f"{type(e).__name__}: {str(e)[:200]}"
    quirks.append({"what": "LDM-layout kohya U-Net key loaded into a StableDiffusionPipeline WITHOUT unet_config=",
                   "observed": obs})
    del pipe
    # 4. LDM block ids >= 10 (full-size SD1.5 has input/output_blocks 0..11)
    cfg = types.SimpleNamespace(layers_per_block=2)
    sd = {}
    sd.update(lin("lora_unet_output_blocks_1_0_in_layers_2", 16, 16, 2.0))
    sd.update(lin("lora_unet_output_blocks_11_1_proj_in", 16, 16, 2.0))
    try:
        mapped = _maybe_map_sgm_blocks_to_diffusers(dict(sd), cfg)
        obs = "no error; keys: " + ", ".join(sorted(k for k in mapped if k.endswith("lora_down.weight")))
    except Exception as e:  # noqa: BLE001
        obs = f"{type(e).__name__}: {str(e)[:200]}"
    quirks.append({
        "what": "_maybe_map_sgm_blocks_to_diffusers (the LDM-name path) on SD1.5-sized block ids 1 and 11, "
                "layers_per_block=2 (expected: up_blocks.0.resnets.1.conv1 and up_blocks.3.attentions.2.proj_in)",
        "observed": obs,
        "why": "it collects block i's keys by substring 'output_blocks_<i>', so block 1 also grabs blocks 10 and 11",
    })
    return quirks


# ----------------------------------------------------------------------------------------------- main

FORMULAS = OrderedDict([
    ("linear", "W' = W + s * (alpha/r) * up @ down; up [out,r], down [r,in]; r = down.shape[0]"),
    ("conv1x1", "the linear formula on the [out,in] views: up [out,r,1,1], down [r,in,1,1]"),
    ("convkxk", "W'[o,i,y,x] = W[o,i,y,x] + s * (alpha/r) * sum_k up[o,k,0,0] * down[k,i,y,x] "
                "= (up.reshape(out,r) @ down.reshape(r,in*kh*kw)).reshape(out,in,kh,kw); up [out,r,1,1], down [r,in,kh,kw]"),
    ("several", "W' = W + s * sum_i w_i * (alpha_i/r_i) * up_i @ down_i (w_i: set_adapters adapter_weights)"),
    ("s", "the lora_scale of pipe.fuse_lora(lora_scale=s); an A1111/kohya multiplier"),
    ("kohya_alpha", "each module's own '.alpha' scalar; a module without '.alpha' has alpha = r (scale 1)"),
    ("peft_alpha", "lora_alpha (alpha_pattern, rank_pattern) of the 'unet.' / 'text_encoder.' LoraConfig fields in the "
                   "safetensors __metadata__['lora_adapter_metadata'] JSON; a file without that metadata: alpha = r"),
    ("names", "lora_down = lora_A = lora.down = lora_linear_layer.down (the [r,in...] factor); "
              "lora_up = lora_B = lora.up = lora_linear_layer.up"),
    ("bias", "never changed"),
    ("precision", "float32; float16 LoRA tensors upcast exactly before the product"),
])

NAME_RULES = OrderedDict([
    ("kohya_unet", "'lora_unet_' + diffusers U-Net module path with '.' -> '_' (kohya sd-scripts, SD1.x/2.x)"),
    ("kohya_unet_ldm", "'lora_unet_' + LDM module path with '.' -> '_': down_blocks.B.resnets.J -> input_blocks.(1+3B+J).0, "
                       "down_blocks.B.attentions.J -> input_blocks.(1+3B+J).1, down_blocks.B.downsamplers.0.conv -> "
                       "input_blocks.(3B+3).0.op, mid_block.resnets.0/attentions.0/resnets.1 -> middle_block.0/1/2, "
                       "up_blocks.B.resnets.J/attentions.J -> output_blocks.(3B+J).0/.1 (3 = layers_per_block+1); "
                       "resnet conv1/conv2/time_emb_proj/conv_shortcut -> in_layers.2/out_layers.3/emb_layers.1/skip_connection"),
    ("kohya_te", "'lora_te_' + text-encoder tensor path as in the model FILE (text_model.encoder.layers.N.self_attn.q_proj ...) "
                 "with '.' -> '_'; in memory (transformers 5 CLIPTextModel) the module is encoder.layers.N.self_attn.q_proj"),
    ("peft_unet", "'unet.' + module path + '.lora_A.weight' / '.lora_B.weight'"),
    ("peft_te", "'text_encoder.' + module path: 'encoder.layers.N...' (transformers 5) or 'text_model.encoder.layers.N...' "
                "(transformers 4); diffusers strips 'text_model.' when the model has no text_model attribute"),
    ("diffusers_old", "'unet.<path>.to_q.lora.down.weight' (to_q/to_k/to_v/to_out.0), "
                      "'text_encoder.<path>.q_proj.lora_linear_layer.down.weight' (q/k/v/out_proj), other modules lora_A/lora_B"),
    ("underscores", "a kohya name cannot be split on '_' (to_q, proj_in, transformer_blocks, time_emb_proj, conv_shortcut, "
                    "ff_net_0_proj, self_attn, q_proj, text_model); resolve it by generating the kohya name of every "
                    "module of the model and looking the file's names up (asserted injective for these models); "
                    "diffusers instead replaces all '_' by '.' and re-joins a fixed word list"),
    ("reference_names", "'<component>.<tensor name in that component's safetensors file>'"),
])


def dumps(doc) -> str:
    """json.dumps(indent=1) with lists of numbers kept on one line."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[\s*(-?[0-9.e+-]+(?:,\s*-?[0-9.e+-]+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m[1].split(",")) + "]", text)


def main() -> None:
    doc_all = {}
    quirks = probe_quirks("tiny-sd1")
    for model in MODELS:
        res = run_model(model)
        doc = OrderedDict()
        doc["description"] = (f"LoRA files for {model} and diffusers' fused weights for them, generated by "
                              "tools/reference/make_lora_fixtures.py (its docstring describes every file).")
        doc["versions"] = versions()
        doc["model"] = model
        doc["pipeline_load"] = CALL_LOAD
        doc["formulas"] = FORMULAS
        doc["name_rules"] = NAME_RULES
        doc["files"] = res["files"]
        doc["references"] = res["references"]
        doc["checks"] = res["checks"]
        doc["tolerance"] = TOL
        doc["diffusers_quirks"] = quirks
        (FIXTURES / model / "lora" / "cases.json").write_text(dumps(doc) + "\n")
        (FIXTURES / model / "lora" / "cases.json").chmod(0o644)
        doc_all[model] = res
        total = sum(p.stat().st_size for p in (FIXTURES / model / "lora").iterdir())
        print(f"{model}: {len(res['references'])} references, {total} bytes in lora/")
        for k, v in res["max_abs_err"].items():
            print(f"  max abs err {k:16s} {v:.3e}")
    for q in quirks:
        print("quirk:", q["what"][:90])
        print("   ", {k: v for k, v in q.items() if k not in ("what", "why")})


if __name__ == "__main__":
    main()
