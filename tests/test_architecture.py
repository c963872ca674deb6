"""The floor plan of ARCHITECTURE.md, enforced: which part may import which, and what a command loads.

Static rules read every ``import`` of the package (lazy imports inside functions included) with
``ast``; the dynamic checks run real commands in fresh interpreters and look at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "styleswap"
SHARED = ("styleswap.contract", "styleswap.errors", "styleswap.safe_state", "styleswap.checkpoints", "styleswap.hub_publish",
          "styleswap.volumes", "styleswap.accelerator", "styleswap.networks",
          "styleswap.metrics", "styleswap.gin")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``styleswap`` modules ``path`` imports, anywhere in it (``from a import b`` counts as
    ``a.b`` when that is a module, else ``a``)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" if MODULES.get(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("styleswap"))
    return found - {me}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def test_shared_layers_import_neither_half():
    for m, deps in GRAPH.items():
        if m.startswith(SHARED):
            assert not {d for d in deps if not d.startswith(SHARED) and d != "styleswap"}, (m, deps)


def test_the_trainer_imports_only_the_shared_layers():
    for m, deps in GRAPH.items():
        if m.startswith("styleswap.trainer"):
            bad = {d for d in deps if d.startswith("styleswap.generator")}
            assert not bad, (m, bad)


def test_the_generator_imports_nothing_from_the_trainer():
    """The content check (`generator.qc`) loads segmentation models through the shared
    `styleswap.networks`, never through the trainer."""
    for m, deps in GRAPH.items():
        if m.startswith("styleswap.generator"):
            bad = {d for d in deps if d.startswith("styleswap.trainer")}
            assert not bad, (m, bad)


def test_only_the_diffusion_package_and_the_cli_plugin_hook_import_the_diffusion_stack():
    for m, deps in GRAPH.items():
        if not m.startswith("styleswap.generator.diffusion") and m != "styleswap.generator.cli":
            bad = {d for d in deps if d.startswith("styleswap.generator.diffusion")}
            assert not bad, (m, bad)  # engines are found by name in the registry (engines.base.ENGINES)


def test_no_import_cycles():
    """No module reaches itself through imports (a package importing its own submodules to re-export
    them is not a cycle: modules import the submodule they need, not the package)."""
    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for d in GRAPH.get(todo.pop(), ()):
                if d in GRAPH and d not in seen and not start.startswith(d + "."):
                    seen.add(d)
                    todo.append(d)
        return seen

    cycles = sorted(m for m in GRAPH if m in reach(m))
    assert not cycles, cycles


def loaded_after(code: str, cwd: Path = ROOT) -> set[str]:
    """``sys.modules`` after running ``code`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_importing_the_trainer_loads_neither_the_generator_nor_diffusers():
    mods = loaded_after("import styleswap.trainer, styleswap.trainer.train, styleswap.trainer.evaluate, "
                        "styleswap.trainer.cli, styleswap.trainer.monai_io")
    assert not {m for m in mods if m.startswith("styleswap.generator")}
    assert "diffusers" not in mods


def test_the_shared_layers_load_no_torch():
    """(`volumes` resizes slices with torch, as ingest always has, and `networks` is the torch
    network definition: they are left out here.)"""
    mods = loaded_after("import styleswap.contract, styleswap.errors, styleswap.safe_state, styleswap.checkpoints, "
                        "styleswap.hub_publish, styleswap.metrics, styleswap.gin")
    assert "torch" not in mods and not {m for m in mods if m.startswith(("styleswap.generator", "styleswap.trainer"))}


def build_modules(tmp_path: Path, *args: str) -> set[str]:
    code = ("import sys\nfrom styleswap.generator.cli import main\n"
            f"sys.argv = ['augment', 'build', *{list(args)!r}, '--size', '32', '--keep-empty', '0', '--no-preview']\n"
            "main()")
    return loaded_after(code, cwd=tmp_path)


@pytest.mark.parametrize("engine", ["gin", "bezier"])
def test_gin_and_bezier_builds_do_not_import_diffusers(tmp_path, engine):
    mods = build_modules(tmp_path, "--source", "phantom:1", "--out", "ds", "--engine", engine, "-k", "1")
    assert (tmp_path / "ds" / "manifest.json").is_file()
    assert "diffusers" not in mods and "transformers" not in mods
    assert "styleswap.generator.diffusion.engine" not in mods


def test_a_bezier_build_from_an_ingested_dataset_does_not_import_torch(tmp_path):
    """Torch is loaded only by what computes with it: here neither the engine nor preprocessing
    (an ingested dataset is already preprocessed)."""
    from cli_util import augment

    assert augment(["ingest", "phantom:1", "--out", str(tmp_path / "src"), "--size", "32", "--no-preview"])[0] == 0
    mods = build_modules(tmp_path, "--source", "src", "--out", "ds", "--engine", "bezier", "-k", "1", "--workers", "2")
    assert (tmp_path / "ds" / "manifest.json").is_file()
    assert "torch" not in mods


def test_a_gin_build_with_worker_processes_loads_torch_only_in_them(tmp_path):
    """The build's own process plans, reads and writes; with --workers 2 the engine (and torch,
    a second of start-up) lives in the render processes alone."""
    from cli_util import augment

    assert augment(["ingest", "phantom:1", "--out", str(tmp_path / "src"), "--size", "32", "--no-preview"])[0] == 0
    mods = build_modules(tmp_path, "--source", "src", "--out", "ds", "--engine", "gin", "-k", "1", "--workers", "2")
    assert (tmp_path / "ds" / "manifest.json").is_file()
    assert "torch" not in mods
