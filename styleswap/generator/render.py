"""Rendering: source slices -> rows with their copies, in this process or in a local pool.

    main thread:  read/preprocess source slices -> chunks ............ write rows in order
    render:                           render copies of a chunk ... PNG-encode it
                                      (--workers 1: a render thread, then an encode thread;
                                       --workers N: N spawned processes that do both)

Results come back in submission order, so the rows (and the shards a single writer makes of them)
do not depend on ``--workers``; every copy's seed comes from (build seed, sample_id, copy index)
only. At most ``2 * workers + 2`` chunks are in flight, so memory does not grow with the number of
slices. A `Renderer` (one per thread, process or Ray actor) loads the engine once, and with
``--qc-model`` the content check's model (`qc`), which scores each chunk's copies where they are
rendered and has those below the threshold rendered again.

Worker processes die with the build: each arms a parent-death signal (Linux) and watches its
parent, so a build killed with SIGKILL leaves no orphan rendering (nor multiprocessing's resource
tracker, which exits when the last worker holding its pipe is gone).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Iterator

from tqdm.auto import tqdm

from styleswap import contract
from styleswap.generator import shards
from styleswap.generator.engines.base import CopyRequest, engine_class
from styleswap.generator.qc import CheckSettings
from styleswap.generator.sources.base import SourceSlice


@dataclass(frozen=True)
class RenderJob:
    """What a render worker needs (picklable): the engine and its settings, copies, seed."""

    engine: str
    settings: dict[str, Any] = field(default_factory=dict)
    copies: int = 0
    seed: int = 0
    #: slices per render call: an engine batch's worth of copies
    chunk: int = 1
    #: PNG-encode rows where they are rendered (Parquet rows made in a process of their own)
    encode: bool = False
    #: torch threads per worker, for engines that use torch
    threads: int | None = None
    #: the content check (``--qc-model``), or None
    qc: CheckSettings | None = None


class Renderer:
    """The engine of one worker, loaded once, and the rows it makes of chunks of slices."""

    def __init__(self, job: RenderJob) -> None:
        cls = engine_class(job.engine)
        self.job, self.engine = job, cls(**job.settings)
        # the content check's scores are bitwise reproducible on one thread only (see generator.qc)
        threads = 1 if job.qc else job.threads
        if threads and (cls.uses_torch or job.qc):
            import torch

            torch.set_num_threads(threads)
        self.engine.load()
        self.qc = None
        if job.qc is not None:
            from styleswap.generator.qc import ContentCheck

            self.qc = ContentCheck(job.qc, job.seed)

    def _render(self, requests: list[CopyRequest]) -> list:
        """The engine's copies of ``requests``, in engine-sized batches."""
        engine, results = self.engine, []
        for i in range(0, len(requests), max(1, engine.batch_size)):
            results.extend(engine.render(requests[i : i + engine.batch_size]))
        if len(results) != len(requests):
            raise RuntimeError(f"engine {engine.name} returned {len(results)} copies for {len(requests)} requests")
        return results

    def render(self, slices: list[SourceSlice]) -> list[shards.Row]:
        """All copies of a chunk of slices, rendered in engine-sized batches, encoded if asked."""
        job = self.job
        slices = [s.decoded() for s in slices]
        requests = []
        for s in slices:
            image = contract.to_unit_float(s.image)  # once per slice, shared by its K requests
            requests += [
                CopyRequest(sample_id=s.sample_id, copy_index=c, seed=contract.derive_seed(job.seed, s.sample_id, c),
                            image=image, mask=s.mask, modality=s.modality)
                for c in range(job.copies)
            ]
        results, k, scores = self._render(requests), job.copies, None
        if self.qc is not None:  # score every copy; re-render those below the threshold
            results, requests, scores = self.qc.check(requests, results, [s.image.dtype for s in slices for _ in range(k)],
                                                      [s.case_id for s in slices for _ in range(k)], self._render)
        rows = []
        for j, s in enumerate(slices):
            mine, reqs = results[j * k : (j + 1) * k], requests[j * k : (j + 1) * k]
            row = shards.Row(
                sample_id=s.sample_id, case_id=s.case_id, slice_index=int(s.slice_index), modality=s.modality,
                image=s.image, mask=s.mask,
                augmented=[contract.from_unit_float(c.image, s.image.dtype) for c in mine],
                prompts=[c.prompt for c in mine], seeds=[r.seed for r in reqs],
                engine=job.engine, spacing=tuple(float(x) for x in s.spacing), split=s.split, source_png=s.png,
                qc_dice=scores[j * k : (j + 1) * k] if scores is not None else None,
            )
            if job.encode:
                row.encode(keep_copies=False)  # only the bytes travel back to the writer
            rows.append(row)
        return rows


# --- worker processes ---------------------------------------------------------------------------

_RENDERER: Renderer | None = None  # the renderer of this worker process (set by its initializer)


def _start_worker(job: RenderJob, parent: int) -> None:
    global _RENDERER
    die_with_parent(parent)
    _RENDERER = Renderer(job)


def _render_in_worker(slices: list[SourceSlice]) -> list[shards.Row]:
    return _RENDERER.render(slices)


_THREAD = threading.local()  # the renderer of a render thread (--workers 1)


def _start_thread(job: RenderJob) -> None:
    _THREAD.renderer = Renderer(job)


def _render_in_thread(slices: list[SourceSlice]) -> list[shards.Row]:
    return _THREAD.renderer.render(slices)


def die_with_parent(parent: int) -> None:
    """Make this worker process end when ``parent`` does, however it ends (SIGKILL included)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    # elsewhere than Linux, and if the signal is lost: a reparented worker has lost its build
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


# --- the local pipeline -------------------------------------------------------------------------


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def chunked(items: Iterable[SourceSlice], n: int) -> Iterator[list[SourceSlice]]:
    chunk: list[SourceSlice] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ordered_map(fn: Callable, items: Iterable, executor: Executor, window: int) -> Iterator:
    """``map`` that keeps at most ``window`` tasks in flight and yields results in input order."""
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _encode_rows(rows: list[shards.Row]) -> list[shards.Row]:
    for row in rows:
        row.encode()
    return rows


def render_locally(job: RenderJob, slices: Iterable[SourceSlice], workers: int, fmt: str,
                   progress: bool = True) -> Iterator[shards.Row]:
    """Rows with their copies, in source order, rendered by ``workers`` threads or processes."""
    # Parquet rows are PNG-encoded where they are rendered when that is a process of its own;
    # with one worker a separate encode thread does it (PIL releases the GIL while compressing).
    encode_here = fmt == "parquet" and workers > 1
    cores = usable_cores()
    if workers == 1:
        # One render thread: torch and numpy release the GIL, so reading and writing in the main
        # thread (and PNG encoding in its own thread) overlap with rendering. Torch gets all cores
        # but one: OpenMP threads that spin against the encoder on a busy core cost 3x (GIN x4 on
        # 1960 slices, 2 cores: 31 s with 2 torch threads, 11 s with 1).
        local = replace(job, encode=False, threads=max(1, cores - 1))
        pool: Executor = ThreadPoolExecutor(1, initializer=_start_thread, initargs=(local,))
        render: Callable = _render_in_thread
    else:
        # spawn, not fork: the parent may already run OpenMP threads (torch), which fork would break.
        local = replace(job, encode=encode_here, threads=max(1, cores // workers))
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(local, os.getpid()))
        render = _render_in_worker
    encoder = ThreadPoolExecutor(1) if fmt == "parquet" and not encode_here else None
    # disable=None: a bar on a terminal, none in logs and pipes; cleared on failure so that an
    # error stays the one line on stderr.
    bar = tqdm(desc=f"{job.engine} x{job.copies}", unit="slice", disable=None if progress else True,
               file=sys.stderr, leave=True)
    try:
        window = 2 * workers + 2
        stream = ordered_map(render, chunked(slices, job.chunk), pool, window)
        if encoder is not None:
            stream = ordered_map(_encode_rows, stream, encoder, window)
        for rows in stream:
            yield from rows
            bar.update(len(rows))
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if encoder is not None:
            encoder.shutdown(wait=True, cancel_futures=True)
