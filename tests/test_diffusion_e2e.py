"""The tiny preset end to end: VAE, DreamBooth, ControlNet (checkpoint + resume), rendering."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_fixtures import synthetic_slice, write_dataset
from styleswap.generator.engines.base import CopyRequest, get_engine
from styleswap.contract import derive_seed

pytestmark = pytest.mark.slow

STEPS = 3  # inference steps in tests


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from styleswap.generator.diffusion.controlnet import train_controlnet
    from styleswap.generator.diffusion.finetune import finetune, learn_vae
    from styleswap.generator.diffusion.presets import build_tiny
    from styleswap.generator.diffusion.training import TrainArgs

    root = tmp_path_factory.mktemp("diffusion")
    data = write_dataset(root / "data", n=4, size=48)
    build_tiny(root / "tiny")
    base = learn_vae(root / "tiny", data, root / "base",
                     TrainArgs(root / "base", max_train_steps=3, train_batch_size=4, learning_rate=1e-3, progress=False))
    ft = finetune(base, data, root / "ft",
                  TrainArgs(root / "ft", max_train_steps=3, train_batch_size=2, learning_rate=1e-3, progress=False))
    # A ControlNet starts with zero convolutions (the mask has no effect at step 0); a large
    # learning rate makes 4 steps enough for the mask to change the render measurably.
    cn_args = dict(max_train_steps=2, train_batch_size=2, learning_rate=5e-2, checkpointing_steps=2,
                   checkpoints_total_limit=1, progress=False)
    first = train_controlnet(base, ft["unet"], data, root / "cn", TrainArgs(root / "cn", **cn_args))
    cn_args["max_train_steps"] = 4
    resumed = train_controlnet(base, ft["unet"], data, root / "cn",
                               TrainArgs(root / "cn", resume_from_checkpoint="latest", validation_steps=4, **cn_args),
                               validation_inference_steps=2, validation_slices=2)
    return dict(root=root, data=data, base=Path(base), ft=ft, unet=Path(ft["unet"]), cn=root / "cn",
                first=first, resumed=resumed)


def engine(models, **kw):
    settings = dict(base_model=str(models["base"]), unet=str(models["unet"]), controlnet=str(models["cn"]),
                    steps=STEPS, batch_size=4)
    settings.update(kw)
    e = get_engine("controlnet", **settings)
    e.load()
    return e


def requests(n_slices=2, copies=2, size=48):
    rng = np.random.default_rng(1)
    out = []
    for s in range(n_slices):
        img, msk = synthetic_slice(rng, size)
        sid = f"case00/{s:04d}"
        for k in range(copies):
            out.append(CopyRequest(sid, k, derive_seed(0, sid, k), img.astype(np.float32) / 255, msk))
    return out


def test_checkpoint_resume_continues_step_count(models):
    first, resumed, cn = models["first"], models["resumed"], models["cn"]
    assert first["global_step"] == 2 and first["start_step"] == 0
    assert resumed["start_step"] == 2 and resumed["global_step"] == 2 + 2
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert [p.name for p in sorted(cn.glob("checkpoint-*"))] == ["checkpoint-4"]  # total limit 1
    assert (cn / "validation" / "step-000004.png").is_file()
    assert models["ft"]["instance_prompt"] == "a sks {modality} slice"


def test_render_shapes_prompts_seeds(models):
    e = engine(models)
    reqs = requests(2, 2, size=48)
    copies = e.render(reqs)
    assert len(copies) == 4
    ps = e.prompt_set
    for r, c in zip(reqs, copies):
        assert c.image.shape == (48, 48) and c.image.dtype == np.float32
        assert 0.0 <= c.image.min() and c.image.max() <= 1.0
        assert c.prompt == ps.sample(r.seed)
    d = e.describe()
    assert d["render_unet"] == "base" and set(d["model_sha256"]) == {"base_model", "unet", "controlnet"}
    assert all(len(h) == 64 for h in d["model_sha256"].values())


def test_seeds_independent_of_batch_size(models):
    reqs = requests(2, 2, size=40)
    big = engine(models, batch_size=4).render(reqs)
    one = engine(models, batch_size=1).render(reqs)
    for a, b in zip(big, one):
        np.testing.assert_allclose(a.image, b.image, atol=1e-4)
    assert np.abs(big[0].image - big[1].image).max() > 1e-3  # other seed, other image


def test_style_swap_renders_with_base_unet(models):
    from styleswap.generator.diffusion.loading import load_components, load_unet

    base = load_components(models["base"]).unet
    tuned = load_unet(models["unet"])
    name = "conv_in.weight"
    b, t = dict(base.named_parameters())[name], dict(tuned.named_parameters())[name]
    assert not torch.equal(b, t)
    swap = dict(engine(models, style_swap=True).pipeline.unet.named_parameters())[name]
    ablation = dict(engine(models, style_swap=False).pipeline.unet.named_parameters())[name]
    assert torch.equal(swap.cpu(), b) and torch.equal(ablation.cpu(), t)


def test_mask_matters(models):
    e = engine(models)
    img = np.zeros((64, 64), np.float32)
    m1 = np.zeros((64, 64), np.uint8)
    m2 = m1.copy()
    m2[10:50, 10:50] = 1
    a, b = e.render([CopyRequest("x/0000", 0, 5, img, m1), CopyRequest("x/0000", 0, 5, img, m2)])
    assert a.prompt == b.prompt
    assert np.abs(a.image - b.image).max() > 1e-3  # same seed and prompt: any difference is the mask's (measured ~1e-2)


def test_saved_folders_reload_offline(models, monkeypatch):
    from diffusers import ControlNetModel, StableDiffusionPipeline, UNet2DConditionModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    UNet2DConditionModel.from_pretrained(str(models["unet"]), local_files_only=True, use_safetensors=True)
    ControlNetModel.from_pretrained(str(models["cn"]), local_files_only=True, use_safetensors=True)
    pipe = StableDiffusionPipeline.from_pretrained(str(models["base"]), local_files_only=True, use_safetensors=True,
                                                   safety_checker=None, requires_safety_checker=False)
    assert pipe.vae.config.scaling_factor != 0.18215  # the learned VAE's own scale
    assert not list(models["root"].rglob("*.bin")) and not list(models["root"].rglob("*.pkl"))


def test_ensure_models_trains_once_then_reuses(tmp_path, monkeypatch):
    from styleswap.generator.diffusion import chain

    data = write_dataset(tmp_path / "data", n=2, size=32)
    settings = dict(vae_steps=1, finetune_steps=1, controlnet_steps=1, train_batch_size=2, steps=STEPS, batch_size=2)
    out = chain.ensure_models(settings, data, tmp_path / "cache")
    assert {"base_model", "unet", "controlnet"} <= set(out) and "finetune_steps" not in out
    assert Path(out["controlnet"], "controlnet.json").is_file()

    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr("styleswap.generator.diffusion.finetune.finetune", boom)
    monkeypatch.setattr("styleswap.generator.diffusion.controlnet.train_controlnet", boom)
    assert chain.ensure_models(settings, data, tmp_path / "cache") == out
    e = get_engine("controlnet", **out)
    copies = e.render(requests(1, 1, size=32))
    assert copies[0].image.shape == (32, 32)


def test_cli_registers_commands():
    import typer
    from typer.testing import CliRunner

    from styleswap.generator.diffusion.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    for cmd, flag in (("finetune", "--resume-from-checkpoint"), ("controlnet", "--conditioning")):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, res.output
        assert flag in res.output and "--mixed-precision" in res.output and "--checkpoints-total-limit" in res.output
