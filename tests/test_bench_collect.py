"""`bench/cross_modality.py --collect`: a table rebuilt from runs that earlier invocations trained,
with the same choice of inference (source validation only) and a refusal of other budgets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from bench_util import load_bench


def bench():
    return load_bench("cross_modality.py", "cross_modality")


def metrics(folder: Path, mean: float, liver: float = 0.5, confusion: list | None = None) -> None:
    folder.mkdir(parents=True)
    organs = {"liver": {"mean": liver}, "kidney_right": {"mean": mean}, "kidney_left": {"mean": mean}, "spleen": {"mean": mean}}
    m = {"mean_dice": mean, "mean_dice_std": 0.1, "per_organ": organs, "per_case": {"case_1": {"mean": mean}}}
    if confusion is not None:  # as train eval writes it since it counts where the voxels went
        m["confusion"] = {"classes": ["background", *organs], "voxels": confusion}
        m["per_case"]["case_1"]["confusion"] = confusion
    folder.joinpath("metrics.json").write_text(json.dumps(m))


@pytest.fixture(params=["choice", "folders"])
def workdir(tmp_path, request):
    cm = bench()
    slug = "gin-dice-s1-v1"
    run = tmp_path / "runs" / slug
    run.mkdir(parents=True)
    run.joinpath("train_config.json").write_text(json.dumps({"steps": 100, "batch_size": 4, "seed": 1, "loss": "dice"}))
    # logged rates 10, 20 (an interval shared with other work: 1) -> median 10 -> 100 * 4 / 10 s
    run.joinpath("metrics.csv").write_text("step,slices_per_s,val_mean_dice\n10,1.0,\n20,10.0,\n30,20.0,0.5\n")
    # on source validation the flip alone and flip + largest component tie: the simpler one wins;
    # `train eval --choose` writes the four scores to one choice.json, earlier runs a folder each
    scores = dict(zip(cm.POSTPROCESS, (0.70, 0.80, 0.75, 0.80)))
    if request.param == "choice":
        choice = tmp_path / "choose-src-val" / slug / "choice.json"
        choice.parent.mkdir(parents=True)
        options = {"+".join(f.lstrip("-") for f in flags) or "plain": {"flags": list(flags), "mean_dice": v} for flags, v in scores.items()}
        choice.write_text(json.dumps({"chosen": "tta", "flags": ["--tta"], "options": options}))
    else:
        for flags, v in scores.items():
            metrics(tmp_path / "eval-src-val" / (slug + "".join(flags)), v)
    metrics(tmp_path / "eval" / slug, 0.40, confusion=[[0]])
    metrics(tmp_path / "eval" / (slug + "--tta"), 0.55, liver=0.2, confusion=[[1]])
    metrics(tmp_path / "eval" / (slug + "--tta--largest-component"), 0.90)  # better on the target: never looked at
    return cm, tmp_path, slug


def args(**kw):
    return argparse.Namespace(batch_size=4, **kw)


def test_collect_makes_the_source_validation_choice_again(workdir):
    cm, W, slug = workdir
    r = cm.collect_row("GIN + Dice", ("src-gin",), "dice", 1, slug, W, ["--lr", "1e-3"], 100, args())
    assert r["inference"] == "--tta"
    assert r["mean_dice"] == 0.55 and r["mean_dice_plain"] == 0.40 and r["per_organ"]["liver"] == 0.2
    assert r["source_val_dice"]["--tta --largest-component"] == 0.80
    assert r["confusion"]["voxels"] == [[1]] and r["per_case_confusion"] == {"case_1": [[1]]}  # the chosen inference's
    assert r["train_seconds"] == pytest.approx(100 * 4 / 10.0)
    summary = cm.summarize_rows([r, {**r, "seed": 2, "mean_dice": 0.65}])[0]
    assert summary["mean_dice"] == pytest.approx(0.60) and summary["spread"] == pytest.approx(0.05)


def test_collect_prefers_what_the_run_recorded_and_refuses_another_budget(workdir):
    cm, W, slug = workdir
    (W / "rows").mkdir()
    (W / "rows" / f"{slug}.json").write_text(json.dumps({"row": "GIN + Dice", "mean_dice": 0.5, "train_seconds": 12.0}))
    assert cm.collect_row("GIN + Dice", ("src-gin",), "dice", 1, slug, W, [], 100, args())["train_seconds"] == 12.0
    with pytest.raises(SystemExit, match="steps"):
        cm.collect_row("GIN + Dice", ("src-gin",), "dice", 1, slug, W, [], 200, args())
    with pytest.raises(SystemExit, match="no trained and evaluated run"):
        cm.collect_row("GIN + Dice", ("src-gin",), "dice", 0, slug.replace("s1", "s0"), W, [], 100, args())


@pytest.mark.parametrize("resumed", [False, True])
def test_a_resumed_run_reports_its_whole_training_time(workdir, monkeypatch, resumed):
    # a run an earlier invocation started: this invocation's wall time covers only its part
    cm, W, slug = workdir
    commands = []
    monkeypatch.setattr(cm, "run", lambda cmd, log: commands.append(cmd))
    if resumed:
        (W / "runs" / slug / "checkpoints" / "step-0000010").mkdir(parents=True)
    ds = {"src-gin": W / "src-gin", "src-val": W / "src-val", "target": W / "target"}
    r = cm.evaluate_row("GIN + Dice", ("src-gin",), "dice", 1, slug, ds, W, W / "log", ["train"], [], 100,
                        args(nce_weight=0.1, workers=1), 10)
    assert commands[0][:2] == ["train", "seg"] and commands[0][-2:] == ["--resume", "latest"]
    assert r["inference"] == "--tta" and json.loads((W / "rows" / f"{slug}.json").read_text()) == r
    if resumed:
        assert r["train_seconds"] == pytest.approx(100 * 4 / 10.0)  # the median logged rate's estimate
    else:
        assert r["train_seconds"] < 5  # this invocation's wall time (training stubbed out)
