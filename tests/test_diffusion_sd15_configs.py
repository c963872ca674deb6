"""Fast checks of the sd15-random preset's configs and the training options it needs (no weights)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import pytest
import torch

from styleswap.errors import StyleSwapError
from styleswap.generator.diffusion.presets import PRESETS, SD15_MAX_LENGTH, sd15_configs
from styleswap.generator.diffusion.training import TrainArgs, make_accelerator, make_optimizer

#: Parameter counts of Stable Diffusion 1.5's models (and of a ControlNet made from its U-Net).
SD15_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "controlnet": 361_279_120}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_sd15_configs_build_sd15_sized_models_on_meta():
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from styleswap.generator.diffusion.controlnet import SD_CONDITIONING_CHANNELS, conditioning_channels

    cfg = sd15_configs()
    with torch.device("meta"):  # shapes only: no memory, no time
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
        channels = conditioning_channels(unet, 2 ** (len(vae.config.block_out_channels) - 1))
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    assert channels == SD_CONDITIONING_CHANNELS
    got = {"unet": count(unet), "vae": count(vae), "text_encoder": count(text), "controlnet": count(cn)}
    assert got == SD15_PARAMS
    assert unet.config.sample_size * 8 == PRESETS["sd15-random"].resolution == 512
    assert text.config.max_position_embeddings == SD15_MAX_LENGTH == 77
    # The byte tokenizer's ids (0..513) fit SD's vocabulary; bos/eos are its specials.
    assert text.config.vocab_size == 49408 and (text.config.bos_token_id, text.config.eos_token_id) == (512, 513)
    json.dumps(cfg)  # recordable as it is


def test_random_weights_folder_warns(tmp_path):
    from styleswap.generator.diffusion.loading import warn_if_random_weights

    (tmp_path / "styleswap_preset.json").write_text(json.dumps({"preset": "sd15-random", "random_weights": True}))
    with pytest.warns(UserWarning, match="every render is noise"):
        assert warn_if_random_weights(tmp_path)
    (tmp_path / "styleswap_preset.json").write_text(json.dumps({"preset": "tiny"}))
    assert not warn_if_random_weights(tmp_path)


def test_optimizer_choices(tmp_path):
    params = [torch.nn.Parameter(torch.ones(3))]
    with pytest.raises(StyleSwapError, match="--optimizer must be one of adamw, sgd"):
        TrainArgs(output_dir=tmp_path, optimizer="lion")
    sgd = make_optimizer(TrainArgs(output_dir=tmp_path, optimizer="sgd", learning_rate=0.5), params)
    params[0].grad = torch.ones(3)
    sgd.step()
    assert not sgd.state_dict()["state"]  # stateless
    adamw = make_optimizer(TrainArgs(output_dir=tmp_path), params)
    assert isinstance(adamw, torch.optim.AdamW)
    adamw.step()
    assert set(adamw.state_dict()["state"][0]) >= {"exp_avg", "exp_avg_sq"}


def test_one_process_trains_under_two_precisions():
    # accelerate alone refuses a second mixed precision in a process ("restart your runtime").
    assert make_accelerator("bf16", cpu=True).mixed_precision == "bf16"
    assert make_accelerator("no", cpu=True).mixed_precision == "no"
    assert make_accelerator("bf16", cpu=True).mixed_precision == "bf16"
