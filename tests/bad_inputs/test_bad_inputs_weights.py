"""Pickle weights: refused and never unpickled; the contract is in test_bad_inputs.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bad_input_helpers import augment, poison_bytes, refused, train

# --- 5. pickle weights -------------------------------------------------------------------------


def test_trainer_refuses_pickle_weights(tmp_path):
    from trainer_fixtures import write_dataset

    data = write_dataset(tmp_path / "data", n_cases=1, slices=2, size=16)
    marker = tmp_path / "unpickled"
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text('{"arch": "unet", "num_classes": 2, "channels": 4, "depth": 3}')
    (run / "best" / "model.pt").write_bytes(poison_bytes(marker))
    problem = "pickle weights are never loaded (loading them can run arbitrary code); a model folder holds config.json + model.safetensors"
    refused(train, ["eval", "--model", run, "--data", data, "--out", tmp_path / "eval"], tmp_path,
            f"{run / 'best' / 'model.pt'}: {problem}")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(poison_bytes(marker))
    refused(train, ["eval", "--model", ckpt, "--data", data, "--out", tmp_path / "eval"], tmp_path, f"{ckpt}: {problem}")
    assert not marker.exists()


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """The tiny preset twice: ``safe`` (safetensors) and ``pickle`` (the same weights as torch
    pickles), a ``poisoned`` copy of the latter whose weight files create a marker if unpickled,
    and a source dataset."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    from diffusion_fixtures import write_dataset
    from styleswap.generator.diffusion.presets import build_tiny

    root = tmp_path_factory.mktemp("sd")
    build_tiny(root / "safe")
    shutil.copytree(root / "safe", root / "pickle")
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        model = cls.from_pretrained(str(root / "pickle" / sub), use_safetensors=True)
        for f in (root / "pickle" / sub).glob("*.safetensors"):
            f.unlink()
        model.save_pretrained(str(root / "pickle" / sub), safe_serialization=False)
    te = root / "pickle" / "text_encoder" / "model.safetensors"
    torch.save(load_file(str(te)), te.with_name("pytorch_model.bin"))
    te.unlink()
    shutil.copytree(root / "pickle", root / "poisoned")
    for f in (root / "poisoned").rglob("*.bin"):
        f.write_bytes(poison_bytes(root / "unpickled"))
    write_dataset(root / "data", n=2, size=48)
    return root


def diffusion_commands(sd: Path, tmp: Path) -> dict[str, tuple[list, Path]]:
    poisoned, data = sd / "poisoned", sd / "data"
    unet_bin = poisoned / "unet" / "diffusion_pytorch_model.bin"
    return {
        "finetune": (["finetune", "--data", data, "--out", tmp / "ft", "--base-model", poisoned], unet_bin),
        "controlnet": (["controlnet", "--data", data, "--out", tmp / "cn", "--base-model", sd / "safe",
                        "--unet", poisoned / "unet"], unet_bin),
        "build-models-given": (["build", "--source", data, "--out", tmp / "ds", "--engine", "controlnet", "-k", "1",
                                "-e", f"base_model={poisoned}", "-e", f"unet={sd / 'safe' / 'unet'}",
                                "-e", f"controlnet={sd / 'safe' / 'unet'}", "--cache-dir", tmp / "cache"], unet_bin),
        "build-trains": (["build", "--source", data, "--out", tmp / "ds", "--engine", "controlnet", "-k", "1",
                          "-e", f"base_model={poisoned}", "--cache-dir", tmp / "cache"], unet_bin),
        "build-controlnet": (["build", "--source", data, "--out", tmp / "ds", "--engine", "controlnet", "-k", "1",
                              "-e", f"base_model={sd / 'safe'}", "-e", f"unet={sd / 'safe' / 'unet'}",
                              "-e", f"controlnet={poisoned / 'unet'}", "--cache-dir", tmp / "cache"], unet_bin),
    }


@pytest.mark.slow
@pytest.mark.parametrize("command", ["finetune", "controlnet", "build-models-given", "build-trains", "build-controlnet"])
def test_diffusion_commands_refuse_pickle_weights(sd, tmp_path, command):
    args, named = diffusion_commands(sd, tmp_path)[command]
    msg = refused(augment, args, tmp_path)
    assert msg == (f"{named}: pickle weights (loading them can run arbitrary code) and no safetensors next to them; "
                   "convert them to safetensors, or pass --allow-pickle if you trust this file")
    assert not (sd / "unpickled").exists()


@pytest.mark.slow
def test_allow_pickle_loads_pickle_weights(sd, tmp_path):
    from styleswap.generator.diffusion.loading import ALLOW_PICKLE_ENV

    out = tmp_path / "ft"
    code, _, err = augment(["finetune", "--data", sd / "data", "--out", out, "--base-model", sd / "pickle",
                            "--allow-pickle", "--max-train-steps", "1", "--train-batch-size", "2", "--device", "cpu"])
    assert code == 0, err
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # what we write is safetensors
    assert ALLOW_PICKLE_ENV not in os.environ  # allowed for that command only
    refused(augment, ["finetune", "--data", sd / "data", "--out", tmp_path / "again", "--base-model", sd / "pickle"],
            tmp_path, "--allow-pickle")
