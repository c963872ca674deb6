"""GIN and Bezier engines: content kept, appearance changed, seeds honoured, batches irrelevant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from styleswap.errors import StyleSwapError
from styleswap.generator.engines.base import CopyRequest, get_engine
from styleswap.generator.engines.bezier import BezierEngine, apply_bezier, bezier_curve, draw_curve
from styleswap.generator.engines.gin import GINEngine, gin_forward
from styleswap.gin import gin_forward_released

ENGINES = ["gin", "bezier"]
#: every engine and computation: (name, settings)
COMPUTATIONS = [("gin", {}), ("gin", {"computation": "released"}), ("bezier", {})]


def slice_like(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A CT-slice-like float image in [0, 1]: dark background, body, organs, bright 'bone'."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    img = np.zeros((h, w), np.float32)
    img[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.35) ** 2 <= 1] = 0.45
    img[((xx - 0.35) / 0.15) ** 2 + ((yy - 0.45) / 0.12) ** 2 <= 1] = 0.6
    img[((xx - 0.68) / 0.08) ** 2 + ((yy - 0.6) / 0.08) ** 2 <= 1] = 0.3
    img[((xx - 0.5) / 0.06) ** 2 + ((yy - 0.75) / 0.06) ** 2 <= 1] = 0.95
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def request(seed: int, image: np.ndarray | None = None, idx: int = 0) -> CopyRequest:
    image = slice_like() if image is None else image
    mask = (image > 0.55).astype(np.uint8)
    return CopyRequest(sample_id=f"case/{idx:04d}", copy_index=idx, seed=seed, image=image, mask=mask)


# Share of copies whose mean |copy - input| exceeds 0.05, measured on 200 seeds: gin 0.59 (its
# alpha ~ U(0, 1) makes a quarter of the copies near-identity, as in the paper), gin without the
# mix 0.96, gin as released 0.78 (its mix is rescaled after mixing, so the net outweighs alpha),
# bezier 0.80 (near-identity monotone curves exist too). The bounds leave margin.
@pytest.mark.parametrize(
    ("name", "settings", "min_changed"),
    [("gin", {}, 0.45), ("gin", {"mix": False}, 0.85), ("gin", {"computation": "released"}, 0.65), ("bezier", {}, 0.65)],
)
def test_copy_shape_dtype_range_and_change(name: str, settings: dict, min_changed: float) -> None:
    engine = get_engine(name, **settings)
    engine.load()
    shapes = [(64, 64), (48, 40)]  # non-square catches transposed outputs
    images = [slice_like(*shapes[s % 2], seed=s) for s in range(40)]
    copies = engine.render([request(1000 + s, img, idx=s) for s, img in enumerate(images)])
    mads, corrs = [], []
    for img, copy in zip(images, copies):
        assert copy.image.shape == img.shape
        assert copy.image.dtype == np.float32
        assert copy.image.min() >= 0.0 and copy.image.max() <= 1.0
        assert copy.prompt.startswith(name + "(")
        mads.append(float(np.abs(copy.image - img).mean()))
        corrs.append(float(np.corrcoef(copy.image.ravel(), img.ravel())[0, 1]))
    assert np.mean(np.array(mads) > 0.05) >= min_changed, sorted(mads)
    assert np.median(mads) > 0.05
    if name == "gin":
        # Not just a brightness/contrast change: some copies decorrelate from the input.
        assert np.mean(np.abs(corrs) < 0.9) >= 0.15, sorted(corrs)


@pytest.mark.parametrize(("name", "settings"), COMPUTATIONS)
def test_render_does_not_mutate_requests(name: str, settings: dict) -> None:
    reqs = [request(7 + i, idx=i) for i in range(3)]
    before = [(r.image.copy(), r.mask.copy()) for r in reqs]
    copies = get_engine(name, **settings).render(reqs)
    for r, (img, mask), c in zip(reqs, before, copies):
        assert np.array_equal(r.image, img) and np.array_equal(r.mask, mask)
        assert not np.shares_memory(c.image, r.image)


@pytest.mark.parametrize(("name", "settings"), COMPUTATIONS)
def test_same_seed_same_copy_other_seed_other_copy(name: str, settings: dict) -> None:
    engine = get_engine(name, **settings)
    a, b, c = (engine.render([request(s)])[0].image for s in (11, 11, 12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(("name", "settings"), COMPUTATIONS)
def test_copy_independent_of_batch_composition_and_order(name: str, settings: dict) -> None:
    # Bitwise for all: GIN runs torch's native grouped conv (oneDNN off), see gin.py.
    engine = get_engine(name, **settings)
    reqs = [request(100 + i, slice_like(seed=i), idx=i) for i in range(5)]
    alone = [engine.render([r])[0].image for r in reqs]
    perm = [3, 0, 4, 1, 2]
    batched = engine.render([reqs[i] for i in perm])
    for j, i in enumerate(perm):
        assert np.array_equal(batched[j].image, alone[i]), f"request {i} changed inside a batch"
    # Mixed shapes in one call are grouped, not refused.
    odd = request(100, slice_like(40, 56, seed=9))
    mixed = engine.render([reqs[0], odd, reqs[1]])
    assert mixed[1].image.shape == (40, 56)
    assert np.array_equal(mixed[0].image, alone[0]) and np.array_equal(mixed[2].image, alone[1])


@pytest.mark.parametrize("name", ENGINES)
def test_batch_larger_than_batch_size(name: str) -> None:
    engine = get_engine(name, batch_size=2)
    reqs = [request(200 + i, idx=i) for i in range(5)]
    out = engine.render(reqs)
    assert len(out) == 5
    assert np.array_equal(out[4].image, engine.render([reqs[4]])[0].image)


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("gin", {"layers": 0}),
        ("gin", {"layers": True}),
        ("gin", {"channels": 1.5}),
        ("gin", {"kernel_sizes": (2,)}),
        ("gin", {"kernel_sizes": ()}),
        ("gin", {"mix": "yes"}),
        ("gin", {"computation": "as-released"}),
        ("gin", {"computation": "released", "mix": False}),
        ("gin", {"batch_size": 0}),
        ("gin", {"depth": 3}),
        ("bezier", {"p_invert": 1.5}),
        ("bezier", {"p_invert": "half"}),
        ("bezier", {"points": 1}),
        ("bezier", {"curves": 2}),
    ],
)
def test_bad_settings_are_one_line_errors(name: str, settings: dict) -> None:
    with pytest.raises(StyleSwapError) as info:
        get_engine(name, **settings)
    assert "\n" not in str(info.value)


def test_describe_reports_settings() -> None:
    assert GINEngine(layers=3, kernel_sizes=[1, 3, 5]).describe() == {
        "layers": 3,
        "channels": 2,
        "kernel_sizes": [1, 3, 5],
        "mix": True,
        "computation": "paper",
        "batch_size": 16,
    }
    assert BezierEngine(p_invert=0.25).describe() == {"p_invert": 0.25, "points": 1000, "batch_size": 16}
    assert GINEngine().render([request(1)])[0].prompt == "gin(layers=4, channels=2)"
    assert GINEngine(computation="released").render([request(1)])[0].prompt == "gin(layers=4, channels=2, released)"


# --- GIN ----------------------------------------------------------------------------------------


def test_gin_output_is_min_max_of_a_convex_mix() -> None:
    x = torch.from_numpy(np.stack([slice_like(seed=i) for i in range(4)]))
    seeds = [5, 6, 7, 8]
    out, parts = gin_forward(x, seeds, return_parts=True)
    alpha = parts["alpha"]
    assert torch.all((alpha >= 0) & (alpha <= 1))
    a = alpha.view(-1, 1, 1)
    assert torch.allclose(parts["mixed"], a * parts["g_s"] + (1 - a) * x)
    # g_s has the input's Frobenius norm (the paper's rescaling).
    assert torch.allclose(parts["g_s"].flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-4)
    m = parts["mixed"]
    lo, hi = m.amin(dim=(1, 2), keepdim=True), m.amax(dim=(1, 2), keepdim=True)
    assert torch.allclose(out, (m - lo) / (hi - lo), atol=1e-6)
    assert out.amin().item() == 0.0 and out.amax().item() == 1.0
    # mix=False uses the same net (same draws) and returns the pure net output.
    out_nomix, parts_nomix = gin_forward(x, seeds, mix=False, return_parts=True)
    assert torch.equal(parts_nomix["g_s"], parts["g_s"])
    assert not torch.equal(out_nomix, out)


def test_gin_constant_image_stays_in_range() -> None:
    reqs = [request(3, np.zeros((32, 32), np.float32)), request(4, np.full((32, 32), 0.5, np.float32))]
    for c in GINEngine().render(reqs):
        assert np.isfinite(c.image).all() and c.image.min() >= 0 and c.image.max() <= 1
    assert np.array_equal(GINEngine().render(reqs[:1])[0].image, np.zeros((32, 32), np.float32))


def test_gin_released_copy_is_the_released_output_of_the_z_scored_slice_min_maxed() -> None:
    # By hand: z-score each slice by its own mean and (unbiased) std, GIN as released, min-max.
    images = [slice_like(seed=i) for i in range(3)] + [slice_like(48, 40, seed=3)]
    seeds = [21, 22, 23, 24]
    copies = GINEngine(computation="released").render([request(s, img, idx=i) for i, (s, img) in enumerate(zip(seeds, images))])
    for img, seed, copy in zip(images, seeds, copies):
        z = (img - img.mean()) / img.std(ddof=1)
        raw = gin_forward_released(torch.from_numpy(z[None].astype(np.float32)), [seed])[0].numpy()
        # the released output keeps the z-scored input's energy and takes values outside any fixed range
        assert np.isclose(np.linalg.norm(raw), np.linalg.norm(z), rtol=1e-4)
        expected = (raw - raw.min()) / (raw.max() - raw.min())
        np.testing.assert_allclose(copy.image, expected, atol=1e-5)
        assert copy.image.min() == 0.0 and copy.image.max() == 1.0
    # not the paper's computation under another name
    paper = GINEngine().render([request(seeds[0], images[0])])[0].image
    assert np.abs(paper - copies[0].image).mean() > 0.01


def test_gin_released_flat_slice_is_returned_as_is() -> None:
    for value in (0.0, 0.5):
        flat = np.full((32, 32), value, np.float32)
        (copy,) = GINEngine(computation="released").render([request(3, flat)])
        assert np.array_equal(copy.image, flat)


# --- Bezier -------------------------------------------------------------------------------------

RAMP = np.linspace(0, 1, 257, dtype=np.float32).reshape(1, -1)


def seed_with_variant(inverted: bool) -> int:
    return next(s for s in range(1000) if draw_curve(s, 0.5)[0] is inverted)


@pytest.mark.parametrize("inverted", [False, True])
def test_bezier_variant_order_and_endpoints(inverted: bool) -> None:
    seed = seed_with_variant(inverted)
    (copy,) = BezierEngine().render([request(seed, RAMP)])
    y = copy.image.ravel()
    steps = np.diff(y)
    if inverted:
        assert np.all(steps <= 0) and y[0] == 1.0 and y[-1] == 0.0
        assert copy.prompt.startswith("bezier(inverted")
    else:
        assert np.all(steps >= 0) and y[0] == 0.0 and y[-1] == 1.0
        assert copy.prompt.startswith("bezier(monotone")


@pytest.mark.parametrize("controls", [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [[0.9, 0.1], [0.1, 0.9]]])
def test_bezier_extreme_control_points_stay_monotone(controls) -> None:
    xs, ys = bezier_curve(*controls, points=500)
    assert np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) >= 0)
    y = apply_bezier(RAMP, np.array(controls), inverted=False).ravel()
    assert np.all(np.diff(y) >= 0)


@pytest.mark.parametrize(("p_invert", "expected"), [(0.0, 0.0), (1.0, 1.0)])
def test_bezier_p_invert_extremes(p_invert: float, expected: float) -> None:
    engine = BezierEngine(p_invert=p_invert)
    copies = engine.render([request(s, RAMP) for s in range(20)])
    inverted = [c.prompt.startswith("bezier(inverted") for c in copies]
    assert np.mean(inverted) == expected


def test_bezier_inverts_about_half_the_time() -> None:
    share = np.mean([draw_curve(s)[0] for s in range(400)])
    assert 0.4 < share < 0.6
