"""Training runs are protected like datasets (issue #14): refused, one line, exit 2, nothing lost.

Each case runs ``train`` as a user would and checks the exit code, the one-line message (naming
the folder or file) and the state of the folders afterwards: an existing run intact, nothing
half-written.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bad_input_helpers import tree
from cli_util import run_cli
from trainer_fixtures import write_dataset

TINY = ["--channels", "4", "--depth", "3", "--res-units", "1", "--workers", "0", "--no-progress", "--nce-patches", "16",
        "--batch-size", "4", "--checkpoint-every", "2", "--log-every", "1"]  # fmt: skip


def train(args) -> tuple[int, str, str]:
    from styleswap.trainer.cli import main

    return run_cli(main, [str(a) for a in args])


def refused(args, root, *fragments) -> str:
    before = tree(root)
    code, out, err = train(args)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert str(f) in err, err
    after = tree(root)
    assert after == before, f"written: {sorted(set(after) ^ set(before))}"
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run and its data."""
    root = tmp_path_factory.mktemp("runs")
    data = write_dataset(root / "data", n_cases=2, slices=4, size=16)
    other = write_dataset(root / "other", n_cases=2, slices=4, size=16, seed=5)
    code, _, err = train(["seg", "--data", data, "--out", root / "run", "--steps", "4", *TINY])
    assert code == 0, err
    return root, data, other


def snapshot(root):
    return {k: v for k, v in tree(root).items()}


def test_existing_run_needs_resume_or_overwrite(finished, tmp_path):
    root, data, _ = finished
    refused(["seg", "--data", data, "--out", root / "run", "--steps", "4", *TINY], root,
            f"{root / 'run'}: holds a training run already", "--resume latest", "--overwrite")


def test_folder_of_other_files_is_refused_by_seg_and_eval(finished, tmp_path):
    root, data, _ = finished
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    refused(["seg", "--data", data, "--out", mine, "--steps", "2", *TINY], tmp_path, f"{mine}: not empty", "notes.txt")
    refused(["eval", "--model", root / "run", "--data", data, "--out", mine], tmp_path, f"{mine}: not empty", "notes.txt")


@pytest.mark.parametrize("change, words", [
    (["--seed", "1"], "--seed 0 -> 1"),
    (["--lr", "0.01"], "--lr 0.001 -> 0.01"),
    (["--batch-size", "2"], "--batch-size 4 -> 2"),
    (["--loss", "dice"], "--loss 'dice+infonce' -> 'dice'"),
    ("other-data", "--data holds other data"),
])  # fmt: skip
def test_resume_with_other_settings_is_refused_naming_them(finished, change, words):
    root, data, other = finished
    args = ["seg", "--data", other if change == "other-data" else data, "--out", root / "run", "--steps", "6", *TINY,
            "--resume", "latest"]  # fmt: skip
    if change != "other-data":
        args += change
    refused(args, root, f"{root / 'run'}: --resume with other settings", words)


def test_resume_cannot_lower_steps_below_the_checkpoint(finished):
    root, data, _ = finished
    refused(["seg", "--data", data, "--out", root / "run", "--steps", "2", *TINY, "--resume", "latest"], root,
            "the run is at step 4", "--steps 2")


def test_resume_raises_steps_and_keeps_the_original_record(tmp_path):
    data = write_dataset(tmp_path / "data", n_cases=2, slices=4, size=16)
    run = tmp_path / "run"
    assert train(["seg", "--data", data, "--out", run, "--steps", "2", *TINY])[0] == 0
    first = json.loads((run / "train_config.json").read_text())
    code, out, err = train(["seg", "--data", data, "--out", run, "--steps", "4", *TINY, "--resume", "latest"])
    assert code == 0, err
    assert "trained 4 steps" in out
    rec = json.loads((run / "train_config.json").read_text())
    assert rec["recipe"] == first["recipe"] and rec["data_ids"] == first["data_ids"]
    assert rec["steps"] == 4 and rec["resumes"] == [{"from_step": 2, "steps": 4}]
    rows = (run / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]


def test_overwrite_replaces_the_run_without_mixing_checkpoints(tmp_path):
    data = write_dataset(tmp_path / "data", n_cases=2, slices=4, size=16)
    run = tmp_path / "run"
    assert train(["seg", "--data", data, "--out", run, "--steps", "6", *TINY])[0] == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    code, _, err = train(["seg", "--data", data, "--out", run, "--steps", "2", *TINY, "--overwrite", "--seed", "3"])
    assert code == 0, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002"]  # none of the old run's
    assert json.loads((run / "train_config.json").read_text())["seed"] == 3
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 3


def test_loss_that_needs_copies_on_data_without_copies(tmp_path):
    data = write_dataset(tmp_path / "data", n_cases=1, slices=2, size=16, copies=0)
    refused(["seg", "--data", data, "--out", tmp_path / "run", "--steps", "2", *TINY, "--loss", "dice"], tmp_path,
            f"{data}: has no style-intervened copies", "--loss erm")


def test_corrupt_png_cell_names_shard_and_row_and_leaves_no_run(tmp_path):
    data = write_dataset(tmp_path / "data", n_cases=1, slices=4, size=16, num_shards=1)
    shard = next((data / "data").iterdir())
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[2]["augmented"][1] = {"bytes": rows[2]["augmented"][1]["bytes"][:40], "path": None}  # truncated PNG
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard, row_group_size=4)
    refused(["seg", "--data", data, "--out", tmp_path / "run", "--steps", "3", *TINY, "--loss", "dice", "--batch-size", "4"],
            tmp_path, str(shard), "row case00/0002", "cannot decode the copy")


@pytest.mark.parametrize("where", ["final", "checkpoint"])
def test_truncated_weights_are_one_line(finished, tmp_path, where):
    root, data, _ = finished
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    target = run / "final" / "model.safetensors" if where == "final" else run / "checkpoints" / "step-0000004" / "model.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    if where == "final":
        shutil.rmtree(run / "best")
        refused(["eval", "--model", run, "--data", data, "--out", tmp_path / "ev"], tmp_path, f"{target}: cannot read the weights")
    else:
        refused(["seg", "--data", data, "--out", run, "--steps", "6", *TINY, "--resume", "latest"], tmp_path,
                f"{target}: cannot read the weights")


def test_eval_warns_when_sizes_differ(finished, tmp_path):
    root, _, _ = finished
    big = write_dataset(tmp_path / "big", n_cases=1, slices=2, size=32)
    code, _, err = train(["eval", "--model", root / "run", "--data", big, "--out", tmp_path / "ev"])
    assert code == 0, err
    assert "warning: " in err and "trained on 16x16 slices" in err and "32x32" in err
