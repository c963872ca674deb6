"""The ``sd15`` path at real size on a CPU, with ``sd15-random`` (SD 1.5's architectures, random weights).

One module fixture runs the whole chain once, at 256 x 256 and batch 1 so that it fits a CPU:
build sd15-random, one DreamBooth step (fp32, gradient checkpointing, stateless SGD: AdamW's two
moments of SD's U-Net would take the process to about 15 GiB), one ControlNet step (bf16 autocast,
gradient checkpointing, AdamW) with a checkpoint, a resume from it that takes one more step, and one
Style Swap render (2 UniPC steps, guidance 7.5) of two copies plus a repeat of the first request.
The tests then check shapes, dtypes, finiteness, seeds, which U-Net renders, and the process's peak
RSS. The renders are noise (random weights).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import gc
import json
import math
import resource
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_fixtures import synthetic_slice, write_dataset
from test_diffusion_sd15_configs import SD15_PARAMS
from styleswap.generator.engines.base import CopyRequest, get_engine
from styleswap.contract import derive_seed

pytestmark = pytest.mark.slow

RES = 256
PEAK_RSS_LIMIT_GIB = 12
DISK_NEED_GIB = 13


def files(path: Path) -> list[Path]:
    path = Path(path)
    return [path] if path.is_file() else sorted(path.glob("*.safetensors"))


def safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """Name -> (shape, dtype) of every tensor in a safetensors file or folder, read from the headers."""
    from safetensors import safe_open

    out = {}
    for f in files(path):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                sl = st.get_slice(k)
                out[k] = (list(sl.get_shape()), sl.get_dtype())
    return out


def tensor(path: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    for f in files(path):
        with safe_open(str(f), "pt") as st:
            if name in st.keys():
                return st.get_tensor(name)
    raise KeyError(name)


def all_finite(path: Path) -> bool:
    """Every float32 tensor finite, read with plain reads: mapping 3.4 GB would count in the RSS."""
    for f in files(path):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                assert info["dtype"] == "F32", name
                start, end = info["data_offsets"]
                fh.seek(8 + n + start)
                if not np.isfinite(np.frombuffer(fh.read(end - start), np.float32)).all():
                    return False
    return True


def release_memory() -> None:
    """Free what the last stage left and hand glibc's free heap back to the system: the stages run
    in one process, and without this the render would start on top of the training's leftovers."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    # The chain writes about 13 GiB (base 4.0, DreamBooth U-Net 3.3, ControlNet with its AdamW checkpoint
    # 5.4). pytest keeps the temporary folders of earlier sessions (those of killed sessions for days),
    # and a few copies of this one filled a CI disk: it goes as soon as the module is done.
    root = tmp_path_factory.mktemp("sd15")
    free_gib = shutil.disk_usage(root).free / 2**30
    if free_gib < DISK_NEED_GIB:  # one line, not a cascade of write errors halfway through
        pytest.fail(f"{root}: {free_gib:.1f} GiB free, the sd15-random chain writes about {DISK_NEED_GIB} GiB there; "
                    "free space (old pytest-of-* folders in the temporary folder, for one) and rerun", pytrace=False)
    try:
        yield run_chain(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_chain(root: Path) -> dict:
    from styleswap.generator.diffusion.controlnet import train_controlnet
    from styleswap.generator.diffusion.finetune import finetune
    from styleswap.generator.diffusion.presets import build_sd15_random
    from styleswap.generator.diffusion.training import TrainArgs

    seconds: dict[str, float] = {}
    t = time.perf_counter()
    data = write_dataset(root / "data", n=1, size=64)
    base = build_sd15_random(root / "base")
    seconds["build"] = time.perf_counter() - t

    t = time.perf_counter()
    ft_args = TrainArgs(root / "ft", max_train_steps=1, train_batch_size=1, learning_rate=1e-2, optimizer="sgd",
                        gradient_checkpointing=True, device="cpu", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft = finetune(base, data, root / "ft", ft_args, resolution=RES)
    seconds["dreambooth"] = time.perf_counter() - t
    release_memory()

    # The ControlNet trains with the default optimizer (AdamW) and writes its state in the checkpoint.
    cn_args = dict(train_batch_size=1, learning_rate=1e-4, mixed_precision="bf16", gradient_checkpointing=True,
                   checkpointing_steps=1, checkpoints_total_limit=1, device="cpu", progress=False)
    t = time.perf_counter()
    first = train_controlnet(base, ft["unet"], data, root / "cn", TrainArgs(root / "cn", max_train_steps=1, **cn_args),
                             resolution=RES)
    release_memory()
    zero_conv = "controlnet_down_blocks.0.weight"  # a zero convolution: 0 before the first step
    after_step1 = tensor(root / "cn" / "checkpoint-1" / "model.safetensors", zero_conv)
    resumed = train_controlnet(base, ft["unet"], data, root / "cn",
                               TrainArgs(root / "cn", max_train_steps=2, resume_from_checkpoint="latest", **cn_args),
                               resolution=RES)
    seconds["controlnet"] = time.perf_counter() - t
    release_memory()

    t = time.perf_counter()
    engine = get_engine("controlnet", base_model=str(base), unet=ft["unet"], controlnet=str(root / "cn"), steps=2,
                        batch_size=3, resolution=RES, device="cpu")
    rng = np.random.default_rng(0)
    img, msk = synthetic_slice(rng, RES)
    sid = "case00/0000"
    reqs = [CopyRequest(sid, k, derive_seed(0, sid, k), img.astype(np.float32) / 255, msk) for k in range(2)]
    reqs.append(reqs[0])  # the first request again, in another place of the same batch
    copies = engine.render(reqs)
    seconds["render"] = time.perf_counter() - t
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nsd15-random at {RES}x{RES}: seconds {seconds}, peak RSS {peak_gib:.1f} GiB")
    return dict(root=root, base=base, ft=ft, unet=Path(ft["unet"]), cn=root / "cn", first=first, resumed=resumed,
                zero_conv=zero_conv, after_step1=after_step1,
                engine=engine, reqs=reqs, copies=copies, peak_gib=peak_gib, seconds=seconds,
                warned=[str(w.message) for w in caught])


def test_sd15_random_has_sd15_architectures(run):
    from transformers import CLIPTokenizer

    base = run["base"]
    for sub in ("unet", "vae", "text_encoder"):
        shapes = safetensors_shapes(base / sub)
        assert sum(math.prod(s) for s, _ in shapes.values()) == SD15_PARAMS[sub], sub
        assert {d for _, d in shapes.values()} == {"F32"}
    unet_cfg = json.loads((base / "unet" / "config.json").read_text())
    assert unet_cfg["cross_attention_dim"] == 768 and unet_cfg["block_out_channels"] == [320, 640, 1280, 1280]
    assert json.loads((base / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    tok = CLIPTokenizer.from_pretrained(str(base / "tokenizer"), local_files_only=True)
    assert tok.model_max_length == 77 and len(tok("an MRI").input_ids) == len("anmri") + 2  # one token per byte
    assert json.loads((base / "styleswap_preset.json").read_text())["random_weights"] is True
    assert any("every render is noise" in w for w in run["warned"])  # loading it warns
    assert not list(run["root"].rglob("*.bin")) and not list(run["root"].rglob("*.pt"))


def test_dreambooth_step(run):
    ft, base, unet = run["ft"], run["base"], run["unet"]
    assert ft["global_step"] == 1 and math.isfinite(ft["final_loss"]) and ft["resolution"] == RES
    assert ft["train_args"]["optimizer"] == "sgd" and ft["train_args"]["gradient_checkpointing"]
    assert safetensors_shapes(unet) == safetensors_shapes(base / "unet")  # same shapes, saved as float32
    assert all_finite(unet)
    assert not torch.equal(tensor(unet, "conv_in.weight"), tensor(base / "unet", "conv_in.weight"))


def test_controlnet_step_checkpoint_and_resume(run):
    first, resumed, cn = run["first"], run["resumed"], run["cn"]
    assert first["global_step"] == 1 and first["start_step"] == 0 and math.isfinite(first["final_loss"])
    assert resumed["start_step"] == 1 and resumed["global_step"] == 2 and resumed["resumed_from"].endswith("checkpoint-1")
    assert [p.name for p in cn.glob("checkpoint-*")] == ["checkpoint-2"]  # total limit 1
    cfg = json.loads((cn / "config.json").read_text())
    assert cfg["conditioning_embedding_out_channels"] == [16, 32, 96, 256] and cfg["cross_attention_dim"] == 768
    shapes = safetensors_shapes(cn)
    assert sum(math.prod(s) for s, _ in shapes.values()) == SD15_PARAMS["controlnet"]
    assert all_finite(cn)
    # The checkpoint holds the float32 weights and AdamW's two moments for every one of them.
    ckpt = cn / "checkpoint-2"
    assert safetensors_shapes(ckpt / "model.safetensors") == shapes
    moments = safetensors_shapes(ckpt / "optimizer.safetensors")
    assert sum(k.endswith((".exp_avg", ".exp_avg_sq")) for k in moments) == 2 * len(shapes)
    assert {d for _, d in moments.values()} == {"F32"}
    # Step 1 moved the zero convolution; the resumed step 2 moved it again; the saved model is step 2's.
    zero, step1 = run["zero_conv"], run["after_step1"]
    assert step1.abs().max() > 0
    assert not torch.equal(tensor(cn, zero), step1)
    assert torch.equal(tensor(cn, zero), tensor(ckpt / "model.safetensors", zero))


def test_render_shapes_dtypes_seeds(run):
    copies, reqs, engine = run["copies"], run["reqs"], run["engine"]
    assert len(copies) == 3
    for r, c in zip(reqs, copies):
        assert c.image.shape == (RES, RES) and c.image.dtype == np.float32
        assert np.isfinite(c.image).all() and 0.0 <= c.image.min() and c.image.max() <= 1.0
        assert c.prompt == engine.prompt_set.sample(r.seed)
    assert copies[0].image.tobytes() == copies[2].image.tobytes()  # same seed, same bytes, anywhere in a batch
    assert np.abs(copies[0].image - copies[1].image).max() > 1e-3  # other seed, other image
    assert engine.pipeline.unet.dtype == torch.float32 and engine.resolution == RES


def test_controlnet_attached_to_base_unet(run):
    engine = run["engine"]
    name = "conv_in.weight"
    rendered = dict(engine.pipeline.unet.named_parameters())[name].detach().cpu()
    assert torch.equal(rendered, tensor(run["base"] / "unet", name))
    assert not torch.equal(rendered, tensor(run["unet"], name))
    cn_w = dict(engine.pipeline.controlnet.named_parameters())[name].detach().cpu()
    assert torch.equal(cn_w, tensor(run["cn"], name))
    assert engine.describe()["render_unet"] == "base"


def test_peak_rss(run):
    """Last in the module: the peak of the whole process, the checks above included."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak < PEAK_RSS_LIMIT_GIB, f"peak RSS {peak:.1f} GiB (the chain alone: {run['peak_gib']:.1f} GiB)"
