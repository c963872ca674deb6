"""Style prompt sets: a template plus a vocabulary, sampled per copy from the copy's seed.

A prompt set is a YAML file::

    template: "{modality}, {appearance}"
    vocabulary:
      modality: [an MRI slice of the abdomen, a T2-weighted MRI, ...]
      appearance: [high contrast, grainy, ...]

or a plain list of prompts (``prompts: [...]``). ``load_prompt_set`` takes a path or the name of a
set shipped inside the package (``prompt_sets/<name>.yaml`` next to this module, read with
``importlib.resources`` so that an installed wheel finds it: ``default``). A copy's prompt is drawn by
``numpy.random.default_rng(seed)`` over the template's fields in alphabetical order, so it depends
only on the seed.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from styleswap.errors import StyleSwapError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: The prompt sets shipped with the package (package data of this package).
PROMPT_SETS = resources.files(__package__) / "prompt_sets"


@dataclass(frozen=True)
class PromptSet:
    template: str
    vocabulary: dict[str, tuple[str, ...]]
    source: str = "<inline>"

    def __post_init__(self) -> None:
        fields = self.fields
        if not self.template.strip():
            raise StyleSwapError(f"prompt set {self.source}: empty template")
        missing = [f for f in fields if f not in self.vocabulary]
        if missing:
            raise StyleSwapError(f"prompt set {self.source}: template field {{{missing[0]}}} has no vocabulary")
        empty = [f for f in fields if not self.vocabulary[f]]
        if empty:
            raise StyleSwapError(f"prompt set {self.source}: vocabulary {empty[0]!r} is empty")

    @property
    def fields(self) -> list[str]:
        return sorted({name for _, name, _, _ in string.Formatter().parse(self.template) if name})

    def sample(self, seed: int) -> str:
        rng = np.random.default_rng(int(seed))
        values = {f: self.vocabulary[f][int(rng.integers(len(self.vocabulary[f])))] for f in self.fields}
        return self.template.format(**values)

    def size(self) -> int:
        n = 1
        for f in self.fields:
            n *= len(self.vocabulary[f])
        return n

    def digest(self) -> str:
        blob = json.dumps({"template": self.template, "vocabulary": self.vocabulary}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def prompt_set_from_dict(data: object, source: str = "<inline>") -> PromptSet:
    if isinstance(data, list):
        data = {"prompts": data}
    if not isinstance(data, dict) or not data:
        raise StyleSwapError(f"prompt set {source} is empty")
    if "prompts" in data:
        prompts = [str(p) for p in (data.get("prompts") or []) if str(p).strip()]
        if not prompts:
            raise StyleSwapError(f"prompt set {source} is empty")
        return PromptSet("{prompt}", {"prompt": tuple(prompts)}, source)
    template = data.get("template")
    vocab = data.get("vocabulary") or {}
    if not template:
        raise StyleSwapError(f"prompt set {source} is empty: no template or prompts")
    if not isinstance(vocab, dict):
        raise StyleSwapError(f"prompt set {source}: vocabulary must be a mapping of field -> list")
    return PromptSet(str(template), {str(k): tuple(str(x) for x in (v or [])) for k, v in vocab.items()}, source)


def packaged_prompt_sets() -> list[str]:
    return sorted(t.name.rsplit(".", 1)[0] for t in PROMPT_SETS.iterdir() if t.name.endswith((".yaml", ".yml")))


def resolve_prompt_set_path(ref: str | Path) -> "Path | Traversable":
    """A prompt set file: ``ref`` itself if it is a file, else the packaged set of that name."""
    p = Path(ref).expanduser()
    if p.is_file():
        return p
    for cand in (f"{ref}.yaml", f"{ref}.yml", str(ref)):
        if "/" not in cand and (PROMPT_SETS / cand).is_file():
            return PROMPT_SETS / cand
    raise StyleSwapError(f"prompt set {ref!r} not found (a YAML path, or one of the packaged sets: "
                         f"{', '.join(packaged_prompt_sets())})")


def load_prompt_set(ref: str | Path | dict | list | PromptSet = "default") -> PromptSet:
    if isinstance(ref, PromptSet):
        return ref
    if isinstance(ref, (dict, list)):
        return prompt_set_from_dict(ref)
    path = resolve_prompt_set_path(ref)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise StyleSwapError(f"prompt set {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return prompt_set_from_dict(data, str(path))
