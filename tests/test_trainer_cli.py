"""The `train` program: bad input (one-line errors, exit 2), resume, and a tiny end-to-end run."""

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from styleswap.trainer.cli import app
from styleswap.trainer.train import TrainConfig, train_segmentation
from trainer_fixtures import write_dataset

torch.set_num_threads(1)
runner = CliRunner()
TINY = ["--channels", "4", "--depth", "3", "--res-units", "1", "--workers", "0", "--no-progress", "--nce-patches", "32"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for f in fragments:
        assert f in err, err


@pytest.mark.parametrize(
    "make, fragments",
    [
        (lambda p: p.mkdir() or p, ["not a dataset folder", "manifest.json"]),
        (lambda p: write_dataset(p, drop_column="mask", size=16), ["missing column", "mask", ".parquet"]),
        (lambda p: write_dataset(p, n_cases=0), ["empty"]),
        (lambda p: write_dataset(p, bad_label=7, size=16, n_cases=1, slices=2), ["label id 7", "train-0000"]),
    ],
    ids=["no-manifest", "missing-column", "empty", "label-out-of-range"],
)
@pytest.mark.parametrize("workers", ["0", "1"])
def test_bad_input_is_one_line_exit_2(tmp_path, make, fragments, workers):
    data = make(tmp_path / "data")
    args = ["seg", "--data", data, "--out", tmp_path / "run", "--steps", "3", "--batch-size", "2", *TINY]
    args[args.index("--workers") + 1] = workers
    _assert_one_line_error(_run(*args), *fragments)


@pytest.mark.parametrize(
    "option, fragments",
    [(["--intensity-aug", "standard,heavy"], ["--intensity-aug", "'heavy'"]), (["--loss", "focal"], ["--loss", "'focal'"]),
     (["--lr-schedule", "step"], ["--lr-schedule", "'step'"])],
    ids=["intensity-aug", "loss", "lr-schedule"],
)
def test_unknown_choice_is_one_line_exit_2_before_any_write(tmp_path, option, fragments):
    data = write_dataset(tmp_path / "d", n_cases=1, slices=2, size=16)
    _assert_one_line_error(_run("seg", "--data", data, "--out", tmp_path / "run", "--steps", "1", *TINY, *option), *fragments)
    assert not (tmp_path / "run").exists()


def test_choose_scores_every_inference_option_as_eval_does_and_picks_the_best(tmp_path):
    data = write_dataset(tmp_path / "d", n_cases=2, slices=4, size=16)
    run = tmp_path / "run"
    assert _run("seg", "--data", data, "--out", run, "--steps", "4", "--batch-size", "2", *TINY).exit_code == 0
    r = _run("eval", "--model", run, "--data", data, "--out", tmp_path / "choice", "--choose")
    assert r.exit_code == 0, r.output
    choice = json.loads((tmp_path / "choice" / "choice.json").read_text())
    options = {n: o["flags"] for n, o in choice["options"].items()}
    assert len(options) == 8 and options["plain"] == [] and options["tta+fill-holes+largest-component"] == [
        "--tta", "--fill-holes", "--largest-component"]
    for name, flags in options.items():  # each option's folder is what `train eval` with its flags writes
        assert _run("eval", "--model", run, "--data", data, "--out", tmp_path / name, *flags).exit_code == 0
        alone = json.loads((tmp_path / name / "metrics.json").read_text())
        assert json.loads((tmp_path / "choice" / name / "metrics.json").read_text()) == alone
        assert choice["options"][name]["mean_dice"] == alone["mean_dice"]
        assert (tmp_path / "choice" / name / "predictions.png").is_file()
    scores = {n: o["mean_dice"] or 0.0 for n, o in choice["options"].items()}
    best = [n for n in options if scores[n] == max(scores.values())]
    assert choice["chosen"] in best and len(options[choice["chosen"]]) == min(len(options[n]) for n in best)
    assert choice["flags"] == options[choice["chosen"]] and f"| {choice['chosen']} (chosen) |" in r.output
    # again into its own folder: allowed; into a folder of other files, or with an option it sets itself: refused
    assert _run("eval", "--model", run, "--data", data, "--out", tmp_path / "choice", "--choose").exit_code == 0
    _assert_one_line_error(_run("eval", "--model", run, "--data", data, "--out", tmp_path / "tta", "--choose"), "not empty")
    _assert_one_line_error(_run("eval", "--model", run, "--data", data, "--out", tmp_path / "c2", "--choose", "--tta"), "--choose")
    assert not (tmp_path / "c2").exists()


def test_eval_rejects_more_labels_than_model_classes(tmp_path):
    data = write_dataset(tmp_path / "d", n_cases=1, slices=2, size=16)
    assert _run("seg", "--data", data, "--out", tmp_path / "run", "--steps", "1", "--batch-size", "2", *TINY).exit_code == 0
    # a training checkpoint (network + PatchNCE heads) evaluates like the final model of the same step
    assert _run("eval", "--model", tmp_path / "run" / "final", "--data", data, "--out", tmp_path / "ev-final").exit_code == 0
    r = _run("eval", "--model", tmp_path / "run" / "checkpoints" / "step-0000001", "--data", data, "--out", tmp_path / "ev-ckpt")
    assert r.exit_code == 0, r.output
    final, ckpt = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("ev-final", "ev-ckpt"))
    assert final["per_case"] == ckpt["per_case"]
    # weights of another network: one line naming the file
    other = tmp_path / "other"
    assert _run("seg", "--data", data, "--out", other, "--steps", "1", "--batch-size", "2", *TINY, "--channels", "8").exit_code == 0
    (tmp_path / "run" / "final" / "model.safetensors").write_bytes((other / "final" / "model.safetensors").read_bytes())
    _assert_one_line_error(_run("eval", "--model", tmp_path / "run" / "final", "--data", data, "--out", tmp_path / "ev2"), "model.safetensors", "do not fit")
    five = write_dataset(tmp_path / "five", n_cases=1, slices=2, size=16, labels={"background": 0, "a": 1, "b": 2, "c": 3, "d": 4})
    _assert_one_line_error(_run("eval", "--model", tmp_path / "run", "--data", five, "--out", tmp_path / "ev"), "classes")
    _assert_one_line_error(_run("eval", "--model", tmp_path / "nothing", "--data", data, "--out", tmp_path / "ev"), "no trained model")


def _cfg(data, out, steps, **kw):
    base = dict(data=[str(data)], out=str(out), steps=steps, batch_size=4, channels=4, depth=3, num_res_units=1, workers=0,
                nce_patches=32, checkpoint_every=3, log_every=1, progress=False, lr=3e-3, buffer_size=4)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("loss, aug, extra", [
    ("dice+infonce", "none", {}), ("erm", "none", {}), ("dice", "organ", {}),
    ("dice", "lla,standard", {"ema": 0.9, "shear_deg": 10.0, "shift": 0.1, "elastic": 2.0}),
    ("gin-ipa", "standard", {}), ("gin-ipa-fresh", "standard", {}), ("slaug", "standard", {}),
    ("slaug+copies", "standard", {}), ("gin-ipa-released", "none", {"input_norm": "zscore"}),
])  # fmt: skip
def test_resume_reaches_the_same_weights(tmp_path, loss, aug, extra):
    # 18 rows, batch 4: 5 batches per epoch, so the run crosses an epoch and resumes mid-epoch
    data = write_dataset(tmp_path / "d", n_cases=3, slices=6, size=16, copies=3, volume_stats="input_norm" in extra)
    train_segmentation(_cfg(data, tmp_path / "full", 7, loss=loss, intensity_aug=aug, **extra))
    train_segmentation(_cfg(data, tmp_path / "part", 3, loss=loss, intensity_aug=aug, **extra))
    state = json.loads((tmp_path / "part" / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (3, 0, 3)
    train_segmentation(_cfg(data, tmp_path / "part", 7, loss=loss, intensity_aug=aug, resume="latest", **extra))
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # CPU, fixed seeds, same data order: bitwise equal
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "part" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 8)]


def test_end_to_end_train_and_eval_learns(tmp_path):
    train = write_dataset(tmp_path / "train", n_cases=4, slices=6, size=32, seed=0)
    val = write_dataset(tmp_path / "val", n_cases=2, slices=6, size=32, seed=1, case_prefix="val")
    test = write_dataset(tmp_path / "test", n_cases=2, slices=6, size=32, seed=2, case_prefix="test", fmt="hdf5")
    run = tmp_path / "run"
    r = _run("seg", "--data", train, "--val", val, "--out", run, "--steps", "60", "--batch-size", "8", "--lr", "5e-3",
             "--channels", "8", "--depth", "3", "--res-units", "1", "--workers", "0", "--no-progress",
             "--nce-patches", "64", "--val-every", "30", "--checkpoint-every", "30", "--log-every", "10")  # fmt: skip
    assert r.exit_code == 0, r.output + str(r.exception)
    for name in ("metrics.csv", "curves.png", "train_config.json", "best/model.safetensors", "best/config.json", "final/config.json"):
        assert (run / name).is_file(), name
    r = _run("eval", "--model", run, "--data", test, "--out", tmp_path / "ev", "--tta", "--hd95")
    assert r.exit_code == 0, r.output + str(r.exception)
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"mean_dice", "mean_dice_std", "per_organ", "per_case", "num_cases"} <= set(m)
    assert set(m["per_organ"]) == {"disk", "square"} and set(m["per_organ"]["disk"]) >= {"mean", "std", "n"}
    assert set(m["per_case"]) == {"test00", "test01"}
    # Chance level: labelling every pixel "disk" (the disk covers ~10% of a slice) gives disk Dice
    # ~ 2 * 0.1 / 1.1 ~ 0.18 and square Dice ~ 0, i.e. a mean of ~ 0.1; all-background gives 0.
    assert m["per_organ"]["disk"]["mean"] > 0.5
    assert m["mean_dice"] > 0.3
    assert (tmp_path / "ev" / "metrics.md").read_text().startswith("| organ |")
    assert (tmp_path / "ev" / "predictions.png").stat().st_size > 0


def test_zscore_input_norm_trains_evaluates_and_needs_volume_stats(tmp_path):
    """--input-norm zscore: recorded in the model config, fed the per-volume z-score in training and
    evaluation; data without volume_stats is a one-line error before anything is written."""
    data = write_dataset(tmp_path / "d", n_cases=2, slices=4, size=16, volume_stats=True)
    plain = write_dataset(tmp_path / "plain", n_cases=1, slices=2, size=16)
    r = _run("seg", "--data", plain, "--out", tmp_path / "refused", "--steps", "2", "--input-norm", "zscore", *TINY)
    _assert_one_line_error(r, "plain", "volume_stats")
    assert not (tmp_path / "refused").exists()
    r = _run("seg", "--data", data, "--out", tmp_path / "run", "--steps", "3", "--batch-size", "4", "--input-norm", "zscore", *TINY)
    assert r.exit_code == 0, r.output + str(r.exception)
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["input_norm"] == "zscore"
    r = _run("eval", "--model", tmp_path / "run", "--data", plain, "--out", tmp_path / "ev-plain")
    _assert_one_line_error(r, "plain", "volume_stats")
    r = _run("eval", "--model", tmp_path / "run", "--data", data, "--out", tmp_path / "ev")
    assert r.exit_code == 0, r.output + str(r.exception)
    r = _run("seg", "--data", data, "--out", tmp_path / "bad", "--steps", "2", "--input-norm", "minmax", *TINY)
    _assert_one_line_error(r, "--input-norm", "minmax")


@pytest.mark.slow
def test_compiled_forward_keeps_checkpoint_keys_and_learns_the_same_way(tmp_path):
    """--compile changes how the forward runs, not the weights' names or the maths (to float noise).

    Weights are compared through the network's output: a conv bias in front of an instance norm
    has no effect and a zero gradient up to rounding, which Adam turns into lr-sized steps."""
    from styleswap.trainer.model import load_model

    data = write_dataset(tmp_path / "d", n_cases=2, slices=4, size=16)
    train_segmentation(_cfg(data, tmp_path / "eager", 3))
    train_segmentation(_cfg(data, tmp_path / "compiled", 3, compile=True))
    a = load_file(str(tmp_path / "eager" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = (load_model(tmp_path / r / "final")(x).softmax(1) for r in ("eager", "compiled"))
    torch.testing.assert_close(ya, yb, rtol=0, atol=2e-3)


def test_ema_saves_the_averaged_network(tmp_path):
    """--ema 0.5: final/ holds e4 = 0.5 * e3 + 0.5 * w4 (e3 from the step-3 checkpoint's ema.safetensors,
    w4 the step-4 weights), and training itself is the same as without --ema."""
    data = write_dataset(tmp_path / "d", n_cases=2, slices=4, size=16)
    train_segmentation(_cfg(data, tmp_path / "plain", 4))
    train_segmentation(_cfg(data, tmp_path / "ema", 4, ema=0.5))
    plain = load_file(str(tmp_path / "plain" / "final" / "model.safetensors"))
    final = load_file(str(tmp_path / "ema" / "final" / "model.safetensors"))
    ck = tmp_path / "ema" / "checkpoints"
    e3 = load_file(str(ck / "step-0000003" / "ema.safetensors"))
    w4 = load_file(str(ck / "step-0000004" / "model.safetensors"))
    assert final.keys() == plain.keys()
    for k in plain:
        assert torch.equal(w4["net." + k], plain[k])  # the average never feeds back into training
        torch.testing.assert_close(final[k], 0.5 * e3["module." + k] + 0.5 * w4["net." + k])
    assert any(not torch.equal(final[k], plain[k]) for k in plain)
