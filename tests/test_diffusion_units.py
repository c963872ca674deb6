"""Fast checks of the diffusion engine's pieces (no training)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch

from styleswap.contract import LABEL_COLORS
from styleswap.errors import StyleSwapError
from styleswap.generator.diffusion.conditioning import encode_mask, resize_image, resize_mask
from styleswap.generator.diffusion.loading import check_sd_folder
from styleswap.generator.diffusion.prompts import load_prompt_set
from styleswap.generator.diffusion.training import TrainArgs, batch_indices


def test_default_prompt_set_is_seeded_per_copy():
    ps = load_prompt_set("default")
    assert ps.size() > 10
    assert ps.sample(123) == ps.sample(123)
    assert len({ps.sample(s) for s in range(50)}) > 5
    a, b = ps.sample(7).split(", ")
    assert a in ps.vocabulary["modality"] and b in ps.vocabulary["appearance"]


@pytest.mark.parametrize(
    "content",
    ["", "template: ''\n", "template: '{style}'\nvocabulary: {style: []}\n", "prompts: []\n", "template: '{x}'\n"],
)
def test_empty_prompt_set_is_one_line_error(tmp_path, content):
    p = tmp_path / "p.yaml"
    p.write_text(content)
    with pytest.raises(StyleSwapError) as e:
        load_prompt_set(p)
    assert "\n" not in str(e.value)


def test_list_prompt_set(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("prompts: [an MRI, an X-ray]\n")
    assert {load_prompt_set(p).sample(s) for s in range(20)} == {"an MRI", "an X-ray"}


def test_mask_encoding_is_nearest_and_fixed():
    m = np.zeros((10, 14), np.uint8)
    m[2:6, 3:9] = 1
    m[7:, :] = 4
    r = resize_mask(m, 64)
    assert r.dtype == np.uint8 and set(np.unique(r)) == {0, 1, 4}
    c = encode_mask(m, 64)
    assert c.shape == (3, 64, 64) and c.dtype == torch.float32
    colours = {tuple(np.round(c[:, y, x].numpy() * 255).astype(int)) for y in range(64) for x in range(64)}
    assert colours == {(0, 0, 0), LABEL_COLORS[1], LABEL_COLORS[4]}  # no blended colours


def test_mask_plus_canny_paints_edges_white():
    m = np.zeros((32, 32), np.uint8)
    img = np.zeros((32, 32), np.float32)
    img[8:24, 8:24] = 1.0
    c = encode_mask(m, 32, "mask+canny", image=img)
    assert c.shape == (3, 32, 32)
    white = (c == 1).all(0)
    assert white.sum() > 10 and not white[0, 0]


def test_image_resize_is_smooth():
    img = np.zeros((8, 8), np.float32)
    img[:, 4:] = 1
    out = resize_image(img, 16)
    assert out.shape == (16, 16) and 0 < out[0, 7] < 1


def test_not_an_sd_folder(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(StyleSwapError) as e:
        check_sd_folder(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "model_index.json" in msg and "vae/config.json" in msg


def test_engine_bad_settings(tmp_path):
    from styleswap.generator.diffusion.engine import ControlNetEngine

    ok = dict(base_model=str(tmp_path), controlnet=str(tmp_path))
    with pytest.raises(StyleSwapError, match="divisible by 8"):
        ControlNetEngine(resolution=60, **ok)
    with pytest.raises(StyleSwapError, match="unknown settings: colour"):
        ControlNetEngine(colour="red", **ok)
    p = tmp_path / "empty.yaml"
    p.write_text("prompts: []\n")
    with pytest.raises(StyleSwapError, match="empty"):
        ControlNetEngine(prompt_set=str(p), **ok)
    with pytest.raises(StyleSwapError, match="not a diffusers Stable Diffusion folder"):
        ControlNetEngine(**ok).load()


def test_data_order_continues_across_epochs_and_resume():
    n, bs = 5, 2
    stream = [i for m in range(10) for i in batch_indices(n, bs, m, seed=3)]
    for e in range(4):  # every epoch is a permutation
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    assert batch_indices(n, bs, 7, 3) == stream[14:16]
    with pytest.raises(StyleSwapError, match="mixed-precision"):
        TrainArgs(output_dir="x", mixed_precision="fp8")


def test_tiny_tokenizer_is_byte_level(tmp_path):
    from transformers import CLIPTokenizer

    from styleswap.generator.diffusion.presets import write_byte_tokenizer

    write_byte_tokenizer(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 514
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    ids = tok("a T2-weighted MRI").input_ids
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert len(ids) == len("a t2-weighted mri".replace(" ", "")) + 2
