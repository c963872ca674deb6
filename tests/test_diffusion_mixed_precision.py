"""fp16 and bf16 where the sd15 path uses them: the renderer, and validation while training (tiny, CPU).

Both broke before sd15-random ran: the engine keeps the VAE in float32 under fp16 and the
pipeline's own decoding handed it half-precision latents; validation built pipelines from a
float32 trained model and half-precision frozen ones, outside autocast.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest

from diffusion_fixtures import synthetic_slice, write_dataset
from styleswap.generator.engines.base import CopyRequest, get_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffusers import ControlNetModel

    from styleswap.generator.diffusion.loading import load_unet
    from styleswap.generator.diffusion.presets import build_tiny

    root = tmp_path_factory.mktemp("mp")
    base = build_tiny(root / "tiny", resolution=32)
    cn = ControlNetModel.from_unet(load_unet(base / "unet"), conditioning_embedding_out_channels=(8, 16, 32, 32))
    cn.save_pretrained(str(root / "cn"), safe_serialization=True)
    return dict(root=root, base=base, cn=root / "cn", data=write_dataset(root / "data", n=2, size=32))


def render(tiny, mixed_precision):
    img, msk = synthetic_slice(np.random.default_rng(0), 32)
    reqs = [CopyRequest("a/0000", k, 10 + k, img.astype(np.float32) / 255, msk) for k in range(2)]
    eng = get_engine("controlnet", base_model=str(tiny["base"]), controlnet=str(tiny["cn"]), steps=2, batch_size=2,
                     device="cpu", mixed_precision=mixed_precision)
    return np.stack([c.image for c in eng.render(reqs)])


@pytest.mark.parametrize("mixed_precision", ["fp16", "bf16"])
def test_engine_renders_in_half_precision(tiny, mixed_precision):
    full, half = render(tiny, "no"), render(tiny, mixed_precision)
    assert half.shape == (2, 32, 32) and half.dtype == np.float32 and np.isfinite(half).all()
    assert np.abs(half - full).max() < 0.05  # the same images, to half precision


@pytest.mark.parametrize("mixed_precision", ["fp16", "bf16"])
def test_validation_under_mixed_precision(tiny, mixed_precision):
    from styleswap.generator.diffusion.controlnet import train_controlnet
    from styleswap.generator.diffusion.finetune import finetune
    from styleswap.generator.diffusion.training import TrainArgs

    root, base, data = tiny["root"] / mixed_precision, tiny["base"], tiny["data"]
    kw = dict(max_train_steps=1, train_batch_size=2, validation_steps=1, mixed_precision=mixed_precision, device="cpu",
              progress=False)
    finetune(base, data, root / "ft", TrainArgs(root / "ft", **kw), validation_inference_steps=2)
    train_controlnet(base, base / "unet", data, root / "cn", TrainArgs(root / "cn", **kw), validation_inference_steps=2,
                     validation_slices=1)
    assert (root / "ft" / "validation" / "step-000001.png").is_file()
    assert (root / "cn" / "validation" / "step-000001.png").is_file()
