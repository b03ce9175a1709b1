"""A tiny TAESD (diffusers' AutoencoderTiny) with random weights and its reference outputs, for
src/models/taesd.rs.

Writes tests/fixtures/tiny-taesd/:
  config.json, diffusion_pytorch_model.safetensors   AutoencoderTiny.save_pretrained of a model with the
                                                      published madebyollin/taesd layout (4 levels, the same
                                                      block counts, relu, nearest 2x) but 16 channels, so the
                                                      layer indices, and so the tensor names, are the published
                                                      ones; random init (seed 7), then every weight scaled so
                                                      activations stay O(1) through the ReLU stack
  reference.safetensors
    image          [1, 3, 64, 64] uniform in [-1, 1] (seed 11): the encoder's input (diffusers convention)
    latents        encode(image).latents [1, 4, 8, 8]
    latents_in     [1, 4, 8, 8] standard normal (seed 12): the decoder's input (SD latents, already scaled:
                   TAESD's scaling_factor is 1.0)
    decoded        decode(latents_in).sample [1, 3, 64, 64], in [-1, 1] convention

Run from the repo root with the pinned environment (tools/reference/requirements.txt):
  python tools/reference/make_taesd_fixture.py
"""
import json
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/tiny-taesd"

torch.set_grad_enabled(False)
torch.manual_seed(7)
vae = AutoencoderTiny(
    in_channels=3, out_channels=3,
    encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
    act_fn="relu", upsample_fn="nearest", latent_channels=4, upsampling_scaling_factor=2,
    num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1),
    latent_magnitude=3, latent_shift=0.5, force_upcast=False, scaling_factor=1.0, shift_factor=0.0,
).eval()
for p in vae.parameters():
    p.mul_(1.5)
OUT.mkdir(parents=True, exist_ok=True)
vae.save_pretrained(OUT, safe_serialization=True)
config = json.loads((OUT / "config.json").read_text())

image = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(11)) * 2 - 1
latents_in = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(12))
out = {
    "image": image.contiguous(),
    "latents": vae.encode(image).latents.contiguous(),
    "latents_in": latents_in.contiguous(),
    "decoded": vae.decode(latents_in).sample.contiguous(),
}
for k, v in out.items():
    print(k, tuple(v.shape), f"std {float(v.std()):.4f} min {float(v.min()):.4f} max {float(v.max()):.4f}")
save_file(out, str(OUT / "reference.safetensors"), metadata={"source": "tools/reference/make_taesd_fixture.py"})
print("config", config["_class_name"], config.get("_diffusers_version"))
