"""The package as users get it: a wheel installed outside the source tree runs the demo build and a
tiny Style Swap build (its prompt set and every other runtime file ship inside the package).

The wheel is installed with ``pip install --no-deps --target`` and run with ``PYTHONPATH`` set to
that folder only, from a folder outside the repository, so nothing is found in the source tree;
its dependencies come from this environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy, so that building writes nothing into the repository
    shutil.copytree(ROOT / "styleswap", src / "styleswap", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "dist").glob("styleswap-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return root / "site"


def run(site: Path, cwd: Path, *code_or_args: str, module: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STYLESWAP_TEST_")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "styleswap.generator.cli", *code_or_args] if module else [sys.executable, "-c", *code_or_args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_package_is_the_wheel(installed, tmp_path):
    proc = run(installed, tmp_path, "import styleswap; print(styleswap.__file__)", module=False)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed)
    packaged = installed / "styleswap" / "generator" / "diffusion" / "prompt_sets" / "default.yaml"
    assert packaged.is_file()


def test_the_demo_recipe_builds_from_the_wheel(installed, tmp_path):
    shutil.copy(ROOT / "manifests" / "demo.yaml", tmp_path / "demo.yaml")  # a recipe is the user's file
    proc = run(installed, tmp_path, "build", "demo.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run(installed, tmp_path, "verify", "out/demo").returncode == 0
    manifest = json.loads((tmp_path / "out" / "demo" / "manifest.json").read_text())
    assert manifest["engine"]["name"] == "gin" and manifest["copies"] == 4
    assert (tmp_path / "out" / "demo" / "preview.png").is_file()


def test_a_tiny_controlnet_build_from_the_wheel_uses_the_packaged_prompt_set(installed, tmp_path):
    proc = run(installed, tmp_path, "build", "--source", "phantom:1", "--out", "cn", "--engine", "controlnet",
               "-k", "1", "--size", "64", "--keep-empty", "0", "--no-preview", "--cache-dir", "cache",
               *[a for kv in ("vae_steps=1", "finetune_steps=1", "controlnet_steps=1", "train_batch_size=2",
                              "steps=1", "batch_size=8", "checkpointing_steps=100") for a in ("-e", kv)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((tmp_path / "cn" / "manifest.json").read_text())["engine"]["settings"]
    assert settings["prompt_set"] == "default" and len(settings["prompt_set_sha256"]) == 64
    assert run(installed, tmp_path, "verify", "cn").returncode == 0
