"""Reference for our tiled VAE decode (src/pipeline/vae_tiling.rs): diffusers'
AutoencoderKL.tiled_decode on the tiny-sd1 fixture VAE.

Writes tests/fixtures/tiny-sd1/vae_tiled.safetensors:
  latents          [1, 4, 20, 28] standard normal (seed 4242), already divided by scaling_factor
  decoded_t{N}     tiled_decode(latents) with tile_latent_min_size = N, tile_sample_min_size = 8 N
                   (the tiny VAE downsamples by 8), tile_overlap_factor = 0.25 (diffusers' default)
  decoded_full     decode(latents) without tiling, to show how far tiling moves the image
  image            [1, 3, 160, 224] uniform in [-1, 1] (seed 4243)
  moments_t{N}     _tiled_encode(image) (the posterior's raw moments: mean, then log-variance)
                   with tile_latent_min_size = N, tile_sample_min_size = 8 N, overlap 0.25
  moments_full     _encode(image) without tiling

The decode tensors in the checked-in file predate the encode ones (this script reproduces them
within 7e-6: CPU kernels differ by thread count); the encode tensors were added beside them.

Run from the repo root with the pinned environment (tools/reference/requirements.txt):
  python tools/reference/make_tiled_vae_fixture.py
"""
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/tiny-sd1"

torch.set_grad_enabled(False)
vae = AutoencoderKL.from_pretrained(FIXTURE / "vae", torch_dtype=torch.float32).eval()
g = torch.Generator().manual_seed(4242)
latents = torch.randn((1, 4, 20, 28), generator=g, dtype=torch.float32)
out = {"latents": latents.contiguous(), "decoded_full": vae.decode(latents).sample.contiguous()}
factor = 2 ** (len(vae.config.block_out_channels) - 1)
for n in (8, 12):
    vae.tile_latent_min_size = n
    vae.tile_sample_min_size = n * factor
    vae.tile_overlap_factor = 0.25
    out[f"decoded_t{n}"] = vae.tiled_decode(latents).sample.contiguous()
    print(n, tuple(out[f"decoded_t{n}"].shape),
          "max |tiled - full|", float((out[f"decoded_t{n}"] - out["decoded_full"]).abs().max()))
image = torch.rand((1, 3, 160, 224), generator=torch.Generator().manual_seed(4243)) * 2 - 1
out["image"] = image.contiguous()
out["moments_full"] = vae._encode(image).contiguous()
for n in (8, 12):
    vae.tile_latent_min_size = n
    vae.tile_sample_min_size = n * factor
    vae.tile_overlap_factor = 0.25
    out[f"moments_t{n}"] = vae._tiled_encode(image).contiguous()
    print("encode", n, tuple(out[f"moments_t{n}"].shape),
          "max |tiled - full|", float((out[f"moments_t{n}"] - out["moments_full"]).abs().max()))
save_file(out, str(FIXTURE / "vae_tiled.safetensors"), metadata={"source": "tools/reference/make_tiled_vae_fixture.py"})
