"""The GPU benchmark scripts, proven on the CPU before a lent GPU spends its minutes on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench_util import load_bench

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu" / "cross_modality.py"


@pytest.mark.slow
def test_cross_modality_gpu_script_dry_run(shared_data, tmp_path):
    """prepare -> run -> finish in dry mode: every run trained, its inference chosen on the source's
    validation, CT -> MRI measured in run, the MRI -> CT model carried back and measured by finish."""
    carry, out = tmp_path / "carry", tmp_path / "out"

    def step(*args):
        proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    assert "MiB to carry" in step("prepare", "--dry", "--carry", carry)
    step("run", "--dry", "--carry", carry, "--out", out, "--work", tmp_path / "work")
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8  # what the device tool brings back
    assert files == ["mr2ct-models-0.zip", "results.json", "results.md"]
    runs = json.loads((out / "results.json").read_text())["runs"]
    mr2ct_run = next(r for r in runs if r["direction"] == "mr2ct")
    assert mr2ct_run["model_file"] == "mr2ct-models-0.zip"
    assert {(r["direction"], r["loss"]) for r in runs} == {("ct2mr", "erm"), ("ct2mr", "dice+infonce"), ("mr2ct", "dice+infonce")}
    for r in runs:
        assert r["returncode"] == 0 and r["steps_done"] == 20 and not r.get("stopped")
        assert r["source_val_dice"][r["inference"]] == max(r["source_val_dice"].values())
        if r["direction"] == "ct2mr":
            assert len(r["target"]["per_case"]) == 8  # every MRI case measured on the machine
    table = step("finish", "--results", out, "--work", tmp_path / "finish")
    final = json.loads((out / "results-final.json").read_text())["runs"]
    mr2ct = next(r for r in final if r["direction"] == "mr2ct")
    assert len(mr2ct["target"]["per_case"]) == 30  # all CT volumes, measured here
    assert "mr2ct | GIN + Bezier + Dice + InfoNCE (ours)" in table


def test_every_gpu_run_is_a_command_train_seg_accepts(tmp_path, monkeypatch):
    """The dry run trains three of the runs; the peers' runs are checked here, so that none is
    refused by ``train seg`` only once GPU time is being spent (each row's loss with its jitter and
    the shared recipe, both directions)."""
    from typer.testing import CliRunner

    import styleswap.trainer.train as train_mod
    from styleswap.trainer.cli import app

    gpu_script = load_bench("gpu/cross_modality.py", "gpu_cross_modality")
    accepted = []

    def validate_only(config):
        config.validate()
        accepted.append((config.loss, config.mixed_precision))
        return {"steps": 0, "out": config.out, "best_val_mean_dice": None}

    monkeypatch.setattr(train_mod, "train_segmentation", validate_only)
    refused = []
    for d, name, loss, keys, aug, seeds in gpu_script.CONFIGS:
        for seed in seeds:
            args = gpu_script.seg_args([tmp_path / d / k for k in keys], tmp_path / d / "src-val", tmp_path / "runs" / name,
                                       loss, aug, seed, 32, 8000, 2, True)  # fmt: skip
            result = CliRunner().invoke(app, args)
            if result.exit_code:
                refused.append(f"{d} {name}: {result.output.strip()[-300:]}")
    assert not refused, refused
    runs = sum(len(c[-1]) for c in gpu_script.CONFIGS)
    assert len(accepted) == runs and all(a[1] == "bf16" for a in accepted)
    assert {a[0] for a in accepted} == {c[2] for c in gpu_script.CONFIGS}


def test_models_pack_into_files_the_device_tool_brings_back():
    """$OUT brings back at most 8 files of at most 16 MiB: the MRI -> CT models of the real
    configuration, at the width the GPU run trains, must fit beside results.json and results.md."""
    from styleswap.networks import SegNet, default_config

    gpu_script = load_bench("gpu/cross_modality.py", "gpu_cross_modality")
    pack, limit = gpu_script.pack, gpu_script.OUT_FILE_BYTES
    # by hand: first fit, in order
    assert pack({"a": 6, "b": 6, "c": 6, "d": 3}, 13) == [["a", "b"], ["c", "d"]]
    assert pack({"a": 6, "big": 20, "c": 6}, 13) == [["a", "c"], ["big"]]
    assert pack({}, 13) == []
    net = SegNet(default_config(5, channels=32, depth=4))  # the run's default width (--channels)
    model_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    slugs = [f"{seed}-{name}" for d, name, _, _, _, seeds in gpu_script.CONFIGS if d == "mr2ct" for seed in seeds]
    assert len(slugs) + 2 > gpu_script.OUT_FILES  # one file a model would not all come back
    packs = pack({s: model_bytes + 64 * 1024 for s in slugs}, limit)  # + the safetensors header, generously
    assert sorted(x for p in packs for x in p) == sorted(slugs)
    assert len(packs) + 2 <= gpu_script.OUT_FILES and limit < 16 * 2**20


def test_every_dataset_a_run_reads_is_carried_or_built():
    """A run reads the ingested source (carried from here) or copies `run` builds on the machine;
    a key that is neither would be a missing folder found only on the GPU."""
    gpu_script = load_bench("gpu/cross_modality.py", "gpu_cross_modality")
    read = {k for c in gpu_script.CONFIGS for k in c[3]}
    assert read - set(gpu_script.BUILDS) == {"src-train"}
    # SLAug on copies reads GIN computed as the released code (CPU row 11), built with that option
    slaug_copies = {c[3] for c in gpu_script.CONFIGS if c[2] == "slaug+copies"}
    assert slaug_copies == {("src-gin-released", "src-bezier")}
    assert gpu_script.BUILDS["src-gin-released"][-2:] == ["--engine-opt", "computation=released"]
