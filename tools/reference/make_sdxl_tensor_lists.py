#!/usr/bin/env python3
"""Tensor lists of the published SDXL-Turbo and SDXL 1.0 base diffusers files, from their configs.

No public copy of these files' headers was found, so each component is built by diffusers / transformers
from the published config on the meta device (no memory, no weights) and its state_dict gives names and
shapes in the published layout (text encoders with the transformers-4 `text_model.` prefix; the position_ids
buffer is not listed: transformers >= 4.31 saves it non-persistent). Each list is then checked against the
published file SIZE (Git-LFS pointers in the project's shared notes, copied into `published_sizes` below): the
safetensors header that list implies (serde JSON as safetensors >= 0.3 writes it: "__metadata__" {"format":
"pt"} first, tensors ordered by dtype then name, padded with spaces to a multiple of 8) plus 8 plus the data
must equal the published byte count exactly, so a missing, extra or misshapen tensor would be caught.

Writes tests/fixtures/published/<repo>/{tensors.json, <component>/config.json} in the format of the other
repos there (tests/published.rs reads them).

    /tmp/refenv/bin/python tools/reference/make_sdxl_tensor_lists.py
"""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests/fixtures/published"
PUB = REPO / "tools/reference/published"

# Published sizes (bytes) of the diffusers-layout fp16 files (Git-LFS pointer sizes).
REPOS = {
    "stabilityai__sdxl-turbo": {
        "model": "stabilityai/sdxl-turbo",
        "configs": PUB / "sdxl-turbo",
        "sizes": {"text_encoder": 246144152, "text_encoder_2": 1389382176, "unet": 5135149760, "vae": 167335342},
    },
    "stabilityai__stable-diffusion-xl-base-1.0": {
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "configs": PUB / "sdxl-base-1.0",
        "sizes": {"text_encoder": 246144152, "text_encoder_2": 1389382176, "unet": 5135149760, "vae": 167335342},
    },
}
CLASSES = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
FILES = {"text_encoder": "model", "text_encoder_2": "model", "unet": "diffusion_pytorch_model",
         "vae": "diffusion_pytorch_model"}


def state_dict(component: str, cfg: dict) -> OrderedDict:
    with torch.device("meta"):
        if component in CLASSES:
            m = CLASSES[component](CLIPTextConfig.from_dict(cfg))
        elif component == "unet":
            m = UNet2DConditionModel.from_config(cfg)
        else:
            m = AutoencoderKL.from_config(cfg)
    sd = OrderedDict()
    for k, v in m.state_dict().items():
        if component in CLASSES and not k.startswith(("text_model.", "text_projection.")):
            k = "text_model." + k
        if k.endswith("position_ids"):
            continue
        sd[k] = tuple(v.shape)
    return sd


def header_bytes(shapes: OrderedDict, dtype: str, size: int) -> int:
    """Length of the safetensors header (incl. padding) for these tensors, all of one dtype."""
    offset, entries = 0, []
    for name in sorted(shapes):
        n = size
        for d in shapes[name]:
            n *= d
        entries.append((name, {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}))
        offset += n
    head = OrderedDict([("__metadata__", {"format": "pt"})] + entries)
    text = json.dumps(head, separators=(",", ":"))
    return (len(text) + 7) // 8 * 8, offset


def main() -> None:
    for folder, r in REPOS.items():
        out = OUT / folder
        if out.exists():
            shutil.rmtree(out)
        comps = OrderedDict()
        for component, published in r["sizes"].items():
            src = r["configs"] / component / "config.json"
            (out / component).mkdir(parents=True)
            shutil.copyfile(src, out / component / "config.json")
            cfg = json.loads(src.read_text())
            shapes = state_dict(component, cfg)
            head, data = header_bytes(shapes, "F16", 2)
            total = 8 + head + data
            assert total == published, f"{folder} {component}: {total} bytes implied, {published} published"
            params = sum(int(torch.tensor(s).prod()) if s else 1 for s in shapes.values())
            comps[component] = OrderedDict([
                ("param_count", params),
                ("tensor_count_in_file", len(shapes)),
                ("fp32_file", None),
                ("fp16_file", OrderedDict([("path", f"{component}/{FILES[component]}.fp16.safetensors"),
                                           ("data_bytes", data), ("file_bytes", published),
                                           ("file_bytes_status", "published size; header computed, equal"),
                                           ("header_bytes", head)])),
                ("tensors", [OrderedDict([("name", k), ("shape", list(s)), ("dtype_fp32_file", "F32"),
                                          ("dtype_fp16_file", "F16")]) for k, s in shapes.items()]),
            ])
            print(f"{folder} {component}: {len(shapes)} tensors, {params / 1e6:.1f} M params, "
                  f"{total} bytes = published")
        doc = OrderedDict([
            ("model", r["model"]),
            ("notes", ["Generated by tools/reference/make_sdxl_tensor_lists.py from the published configs "
                       "(diffusers/transformers on the meta device); every fp16 file's implied size (8 + header + "
                       "data) equals the published Git-LFS size to the byte.",
                       "Only the fp16 files are listed (their sizes are the ones pinned); position_ids is not stored "
                       "(transformers 4.36 saves it non-persistent)."]),
            ("components", comps),
        ])
        (out / "tensors.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
