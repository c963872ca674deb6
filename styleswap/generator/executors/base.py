"""The executor interface (see the package docstring)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, TypeVar

if TYPE_CHECKING:
    from styleswap.generator.config import BuildConfig
    from styleswap.generator.plan import BuildPlan

T = TypeVar("T")


class Executor:
    """Renders planned shards; the single-process defaults of the coordination steps."""

    name: ClassVar[str] = "local"
    #: Renders by row position, so the source must be a dataset folder (a raw source is ingested first).
    needs_positions: ClassVar[bool] = False
    is_main: bool = True

    @contextmanager
    def session(self) -> Iterator["Executor"]:
        """Whatever the executor holds for a whole build (a process group)."""
        yield self

    def adapt(self, cfg: "BuildConfig") -> "BuildConfig":
        """The settings this executor builds with (ranks render with one worker each)."""
        return cfg

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the main process first (it may ingest or train), then on the others."""
        return fn()

    def main_only(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the main process only; every process gets its result, or its failure."""
        return fn()

    def all_ok(self, error: BaseException | None = None) -> None:
        """Wait for every process; raise everywhere if any failed."""
        if error is not None:
            raise error

    def render(self, plan: "BuildPlan", done: dict[tuple[str, int], Any], staging: Path, progress: bool) -> None:
        """Render every planned shard not in ``done`` into ``staging``, each with its receipt."""
        raise NotImplementedError
