#!/usr/bin/env python3
"""Build tests/fixtures/tiny-sd1-tf5*: tiny-sd1's text encoder as transformers 5 saves it.

Published SD checkpoints name the text encoder's tensors `text_model.*` (transformers 4's
CLIPTextModel had a `.text_model` submodule). transformers 5 flattened CLIPTextModel: its
`state_dict()` has no such level and no `position_ids` buffer. Its `save_pretrained` maps the
names back to the `text_model.*` form but leaves `position_ids` out and writes a config with
`dtype` where 4.x wrote `torch_dtype`; tools that save the state dict themselves
(`safetensors.torch.save_file(model.state_dict())`, as training and merge scripts do) write the
flat names. This script makes both from tiny-sd1's text encoder with transformers 5 itself, so
the loader is tested on what current tools write, not on a rename of ours:

    tests/fixtures/tiny-sd1-tf5/text_encoder/{config.json, model.safetensors}
        CLIPTextModelWithProjection (SDXL's text_encoder_2 class; it keeps its `text_model`
        submodule in 5.x) from tiny-sd1/text_encoder (variant fp16, dtype float16) with a
        text_projection drawn under torch.manual_seed(0), then .save_pretrained(...):
        `text_model.*` + `text_projection.weight`, no position_ids, a 5.x config.
    tests/fixtures/tiny-sd1-tf5-flat/text_encoder/{config.json, model.safetensors}
        CLIPTextModel from the same weights; config.json from its save_pretrained,
        model.safetensors = save_file(model.state_dict()): the flat names.

Both must reproduce tiny-sd1's reference.safetensors text-encoder outputs (checked here before
anything is written, and by tests/models.rs against our loader). Run make_fixtures.py first.
Pinned versions: requirements.txt.
"""

import json
import pathlib

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SRC = FIXTURES / "tiny-sd1" / "text_encoder"


def reference(name):
    with safe_open(FIXTURES / "tiny-sd1" / "reference.safetensors", "pt") as f:
        return f.get_tensor(name)


def check(model, label):
    """The saved model must give tiny-sd1's reference hidden states (float32 compute)."""
    ids = reference("text_encoder.input_ids").long()
    with torch.no_grad():
        out = model.float()(ids, output_hidden_states=True)
        want = reference("text_encoder.last_hidden_state")
        err = (out.last_hidden_state - want).abs().max().item()
        assert err < 1e-5, f"{label}: last_hidden_state differs by {err}"


def save(cls, folder, state_dict, seed=None):
    if seed is not None:
        torch.manual_seed(seed)
    model = cls.from_pretrained(SRC, variant="fp16", dtype=torch.float16)
    out = FIXTURES / folder / "text_encoder"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # fp16 safetensors and config, as transformers saves a model
    if state_dict:
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    reloaded = cls.from_pretrained(out)
    check(reloaded, folder)
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = sorted(f.keys())
    assert not any("position_ids" in k for k in keys), f"{folder}: transformers 5 keeps no position_ids"
    nested = any(k.startswith("text_model.") for k in keys)
    assert nested != state_dict, f"{folder}: unexpected naming {keys[:2]}"
    print(f"{folder}: {len(keys)} tensors, e.g. {keys[:2]}")
    return out


def main():
    print("transformers", transformers.__version__)
    out = save(CLIPTextModelWithProjection, "tiny-sd1-tf5", state_dict=False, seed=0)
    save(CLIPTextModel, "tiny-sd1-tf5-flat", state_dict=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["CLIPTextModelWithProjection"], cfg["architectures"]


if __name__ == "__main__":
    main()
