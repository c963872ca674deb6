"""`augment ingest --split`: whole cases held out as the validation split, reproducibly from the
seed; `train seg --split train --val DIR --val-split validation` trains on the rest; and the
README's real-data block runs as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from cli_util import augment, ok, train
from styleswap.errors import StyleSwapError
from styleswap.generator.sources.ingest import split_cases
from styleswap.trainer.evaluate import INFERENCE_OPTIONS

IDS = [f"case_{i:02d}" for i in range(10)]


def test_split_is_a_function_of_the_seed_and_the_case_ids():
    a = split_cases(IDS, "val=0.2", seed=0)
    assert len(a) == 2 and a == sorted(a) and set(a) <= set(IDS)
    assert split_cases(list(reversed(IDS)), "validation=0.2", seed=0) == a  # not the listing order
    assert any(split_cases(IDS, "val=0.2", seed=s) != a for s in range(1, 6))
    assert len(split_cases(IDS, "val=3", seed=0)) == 3 and len(split_cases(IDS, "val=0.01", seed=0)) == 1
    assert split_cases(IDS, "val=case_07, case_02", seed=0) == ["case_02", "case_07"]


@pytest.mark.parametrize("spec, words", [
    ("0.2", "expected val=FRACTION"), ("test=0.2", "expected val=FRACTION"), ("val=0", "a fraction must be in (0, 1)"),
    ("val=1.5", "a count a whole number"), ("val=10", "leaves no training case"), ("val=case_99", "case_99 are not training cases"),
])
def test_bad_split_specs(spec, words):
    with pytest.raises(StyleSwapError, match=re.escape(words)):
        split_cases(IDS, spec, seed=0)


def test_ingest_writes_both_splits_and_train_seg_validates_on_one(tmp_path):
    ok(augment(["ingest", "phantom:5", "--size", "32", "--split", "val=0.4", "--seed", "3", "--out", tmp_path / "ct", "--no-preview"]))
    manifest = json.loads((tmp_path / "ct" / "manifest.json").read_text())
    held = manifest["source"]["validation_split"]
    assert held["rule"] == "val=0.4" and held["seed"] == 3 and len(held["cases"]) == 2
    assert manifest["source"]["splits"] == {"train": 3, "validation": 2}
    by_split = {}
    for entry in manifest["shards"]:
        assert Path(entry["path"]).name.startswith(entry["split"] + "-")
        by_split.setdefault(entry["split"], 0)
    assert set(by_split) == {"train", "validation"}
    from styleswap.trainer.data import SliceStream, open_dataset

    cases = {s: {r["case_id"] for r in SliceStream([open_dataset(tmp_path / "ct", split=s)], shuffle=False)} for s in by_split}
    assert cases["validation"] == set(held["cases"]) and not cases["train"] & cases["validation"]  # whole cases
    common = ["--out", tmp_path / "run", "--steps", "2", "--batch-size", "2", "--workers", "0", "--channels", "4", "--depth", "2",
              "--val-every", "2", "--no-progress", "--val", tmp_path / "ct", "--val-split", "validation", "--loss", "erm"]
    code, _, err = train(["seg", "--data", tmp_path / "ct", *common])
    assert code == 2 and "holds the 'validation' split you validate on; train on the rest with --split train" in err
    ok(train(["seg", "--data", tmp_path / "ct", "--split", "train", *common]))
    val = json.loads((tmp_path / "run" / "best" / "val_metrics.json").read_text())
    assert set(val["per_case"]) == set(held["cases"])


def readme_block() -> list[str]:
    """The commands of the README's real-data block (under "The demo source is a phantom")."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## The demo source is a phantom"):]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.slow
@pytest.mark.realdata
def test_readme_real_data_block_runs_as_written(shared_data, tmp_path):
    """Every line of the block, in order, in a folder laid out like the repo (``../shared/data`` next
    to it) holding 5 CT and 2 MRI cases; only --steps shrinks and --size 64 is added."""
    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "project"
    shutil.copytree(repo / "manifests", work / "manifests")
    for name, n in (("abdomen-ct", 5), ("abdomen-mr-dev", 2)):
        src, dst = shared_data / name, tmp_path / "shared" / "data" / name
        for sub in ("imagesTr", "labelsTr"):
            (dst / sub).mkdir(parents=True)
            for f in sorted((src / sub).iterdir())[:n]:
                (dst / sub / f.name).symlink_to(f)
        shutil.copy(src / "dataset.json", dst / "dataset.json")
    import os

    lines = readme_block()
    assert any("--split val=" in line for line in lines) and any("--val-split validation" in line for line in lines)
    old = os.getcwd()
    os.chdir(work)
    try:
        for line in lines:
            argv = shlex.split(line)
            program, args = argv[0], argv[1:]
            args = ["3" if a == "2000" and args[i - 1] == "--steps" else a for i, a in enumerate(args)]
            if program == "augment" and args[0] in ("ingest", "build"):
                args += ["--size", "64"]
            if program == "train" and args[0] == "seg":
                args += ["--workers", "0", "--batch-size", "4", "--no-progress"]
            if program == "train" and args[0] == "predict":
                args += ["--no-progress"]
            result = augment(args) if program == "augment" else train(args)
            assert result[0] == 0, (line, result)
    finally:
        os.chdir(old)
    chosen = json.loads((work / "runs" / "gin" / "choose-ct" / "choice.json").read_text())["chosen"]
    assert chosen in {o.name for o in INFERENCE_OPTIONS}
    assert (work / "runs" / "gin" / "eval-mr" / "metrics.json").is_file()
    assert len(list((work / "runs" / "gin" / "pred-mr").glob("*.nii.gz"))) == 2
