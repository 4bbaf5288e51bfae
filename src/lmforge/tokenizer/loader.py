"""Batches for the trainer: deterministic, resumable, rank-sharded, mixable, prefetched.

    loader = TokenLoader(TokenDataset("runs/demo/tokens", "train"), batch_size=12,
                         block_size=64, seed=1337, mode="packed", rank=rank, world_size=ws)
    batch = loader.next_batch()        # x, y: [B, T] int64; positions, doc_ids: [B, T]
    state = loader.state_dict()        # save with the checkpoint
    loader.load_state_dict(state)      # the next batch is the one an uninterrupted run sees

Each step draws one *global* batch of batch_size * world_size windows and rank r keeps
rows [r*B, (r+1)*B), so no two ranks of a step read the same window.

- random: nanoGPT-style windows of block_size + 1 tokens at random offsets, drawn from a
  generator seeded by (seed, step) alone.
- packed: the non-overlapping windows [i*T, i*T + T + 1) in a seeded shuffled order per
  epoch; a step never straddles two epochs of a dataset (the few leftover windows wait for
  the next epoch's shuffle).

Both modes report document boundaries: `positions` restarts at 0 at every document start
and `doc_ids` numbers the documents of a row 0, 1, 2 ..., enough to build a per-document
attention mask. With several datasets, each row picks its dataset with the weights in force
at that step (`schedule`), so mixtures can change by training phase.
"""

from __future__ import annotations

import bisect
import itertools
import math
import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lmforge.errors import UserError
from lmforge.tokenizer.dataset import TokenDataset

Weights = Mapping[str, float] | Sequence[float]
Schedule = Sequence[tuple[int, Weights]]
STATE_VERSION = 1


@dataclass
class Batch:
    """One rank's batch. `sources[i]` is the index of the dataset row i came from."""

    x: torch.Tensor
    y: torch.Tensor
    positions: torch.Tensor
    doc_ids: torch.Tensor
    sources: torch.Tensor
    step: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            name: getattr(self, name).to(device, non_blocking=non_blocking)
            for name in ("x", "y", "positions", "doc_ids", "sources")
        }
        return Batch(**moved, step=self.step)


class TokenLoader:
    """Endless batches over one or several `TokenDataset`s; see the module docstring."""

    def __init__(
        self,
        datasets: TokenDataset | Sequence[TokenDataset],
        batch_size: int,
        block_size: int,
        seed: int = 0,
        mode: Literal["random", "packed"] = "random",
        rank: int = 0,
        world_size: int = 1,
        weights: Weights | None = None,
        schedule: Schedule | None = None,
        prefetch: int = 2,
    ) -> None:
        self.datasets = [datasets] if isinstance(datasets, TokenDataset) else list(datasets)
        self.names = [ds.name for ds in self.datasets]
        _check_args(self.names, batch_size, block_size, mode, rank, world_size, prefetch)
        self.batch_size, self.block_size, self.seed, self.mode = batch_size, block_size, seed, mode
        self.rank, self.world_size, self.prefetch = rank, world_size, prefetch
        self.global_batch = batch_size * world_size
        self._phase_steps, self._phase_probs = _phases(self.names, weights, schedule)
        self._capacity = [self._windows_in(ds) for ds in self.datasets]
        self._perms: dict[tuple[int, int], np.ndarray] = {}
        self._step = 0
        self._cursors = [0] * len(self.datasets)
        self._consumed = self._snapshot()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue()

    # -- public API -------------------------------------------------------------------

    def next_batch(self) -> Batch:
        if self.prefetch == 0:
            batch = self._produce()
            self._consumed = self._snapshot()
            return batch
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self._consumed = item
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    @property
    def step(self) -> int:
        """How many batches this loader has handed out (after a resume: in the whole run)."""
        return int(self._consumed["step"])

    def weights_at(self, step: int) -> dict[str, float]:
        """The normalized mixture weights in force at `step`."""
        probs = self._phase_probs[bisect.bisect_right(self._phase_steps, step) - 1]
        return {name: float(p) for name, p in zip(self.names, probs, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        """Where the consumer is: batches prefetched but not yet handed out are not counted."""
        return {**self._consumed, "cursors": dict(self._consumed["cursors"])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.close()
        expected = self._snapshot()
        for key in ("version", "mode", "seed", "block_size", "global_batch", "datasets"):
            if state.get(key) != expected[key]:
                raise UserError(
                    f"loader state was saved with {key}={state.get(key)!r} but this loader has "
                    f"{expected[key]!r}; resume with the same data settings"
                )
        self._step = int(state["step"])
        self._cursors = [int(state["cursors"][name]) for name in self.names]
        self._consumed = self._snapshot()

    def close(self) -> None:
        """Stop the prefetch thread; the next `next_batch` restarts it where the consumer is."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._step = int(self._consumed["step"])
        self._cursors = [int(self._consumed["cursors"][name]) for name in self.names]

    def __enter__(self) -> TokenLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- planning: which windows a step reads --------------------------------------------

    def _windows_in(self, ds: TokenDataset) -> int:
        """Distinct windows a dataset offers; a step needs a global batch of distinct ones."""
        T = self.block_size
        count = len(ds) - T if self.mode == "random" else (len(ds) - 1) // T
        if count < self.global_batch:
            raise UserError(
                f"{ds!r} is too small for {self.global_batch} distinct windows of {T + 1} tokens "
                f"(it has {max(count, 0)}); lower block_size or batch_size, or add data"
            )
        return count

    def _plan(self) -> tuple[np.ndarray, np.ndarray]:
        """Dataset index and window start of each row of the global batch at self._step."""
        rng = np.random.default_rng([self.seed, 0, self._step])
        probs = self._phase_probs[bisect.bisect_right(self._phase_steps, self._step) - 1]
        sources = (
            rng.choice(len(probs), size=self.global_batch, p=probs)
            if len(probs) > 1
            else np.zeros(self.global_batch, dtype=np.int64)
        )
        starts = np.empty(self.global_batch, dtype=np.int64)
        for i in range(len(self.datasets)):
            rows = np.flatnonzero(sources == i)
            if len(rows) == 0:
                continue
            if self.mode == "random":
                starts[rows] = rng.choice(self._capacity[i], size=len(rows), replace=False)
            else:
                starts[rows] = self._next_packed(i, len(rows)) * self.block_size
        self._step += 1
        return sources, starts

    def _next_packed(self, i: int, count: int) -> np.ndarray:
        """The next `count` windows of dataset i, all from one epoch's shuffled order."""
        n = self._capacity[i]
        if self._cursors[i] % n + count > n:
            self._cursors[i] = (self._cursors[i] // n + 1) * n
        epoch, offset = divmod(self._cursors[i], n)
        self._cursors[i] += count
        return self._permutation(i, epoch)[offset : offset + count].astype(np.int64)

    def _permutation(self, i: int, epoch: int) -> np.ndarray:
        key = (i, epoch)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != i}
            order = np.arange(
                self._capacity[i], dtype=np.uint32 if self._capacity[i] < 2**32 else np.int64
            )
            np.random.default_rng([self.seed, 1, i, epoch]).shuffle(order)
            self._perms[key] = order
        return self._perms[key]

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "mode": self.mode,
            "seed": self.seed,
            "block_size": self.block_size,
            "global_batch": self.global_batch,
            "datasets": list(self.names),
            "step": self._step,
            "cursors": dict(zip(self.names, self._cursors, strict=True)),
        }

    # -- producing: read the planned windows ---------------------------------------------

    def _produce(self) -> Batch:
        step = self._step
        sources, starts = self._plan()
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        sources, starts = sources[mine], starts[mine]
        rows = [
            read_window(self.datasets[s], int(start), self.block_size)
            for s, start in zip(sources, starts, strict=True)
        ]
        return _to_batch(rows, sources, step)

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(
            target=self._prefetch_loop,
            args=(self._stop, self._queue),
            name="TokenLoader",
            daemon=True,
        )
        self._thread.start()

    def _prefetch_loop(self, stop: threading.Event, out: queue.Queue) -> None:
        while not stop.is_set():
            try:
                item: Any = (self._produce(), self._snapshot())
            except BaseException as e:  # handed to the consumer, raised there
                item = e
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return


def read_window(ds: TokenDataset, start: int, block_size: int) -> tuple[np.ndarray, ...]:
    """Tokens [start, start + T + 1) with the position and document number of each input."""
    tokens = np.asarray(ds.tokens[start : start + block_size + 1], dtype=np.int64)
    index = np.arange(start, start + block_size, dtype=np.int64)
    offsets = ds.doc_offsets
    first = int(np.searchsorted(offsets, start, side="right")) - 1
    last = int(np.searchsorted(offsets, start + block_size, side="left"))
    local = np.asarray(offsets[first:last], dtype=np.int64)
    doc = np.searchsorted(local, index, side="right") - 1
    return tokens[:-1], tokens[1:], index - local[doc], doc


def _to_batch(rows: list[tuple[np.ndarray, ...]], sources: np.ndarray, step: int) -> Batch:
    x, y, positions, doc_ids = (
        torch.from_numpy(np.stack(parts)) for parts in zip(*rows, strict=True)
    )
    return Batch(
        x, y, positions, doc_ids, torch.from_numpy(np.asarray(sources, dtype=np.int64)), step
    )


def eval_batches(
    dataset: TokenDataset,
    batch_size: int,
    block_size: int,
    num_batches: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """Fixed validation batches: the same windows on every call.

    num_batches=None walks the whole split in order (non-overlapping windows); otherwise
    num_batches batches per rank of distinct windows, drawn once with `seed`, in split
    order. Rank r reads windows r, r + world_size, ...; its last batch may be smaller.
    """
    _check_args([dataset.name], batch_size, block_size, "packed", rank, world_size, 0)
    total = (len(dataset) - 1) // block_size
    if total < 1:
        raise UserError(
            f"{dataset!r} is shorter than one window of {block_size + 1} tokens; lower block_size"
        )
    if num_batches is None:
        windows = np.arange(total, dtype=np.int64)
    else:
        count = min(num_batches * batch_size * world_size, total)
        windows = np.sort(np.random.default_rng([seed, 2]).choice(total, size=count, replace=False))
    windows = windows[rank::world_size]
    for b, begin in enumerate(range(0, len(windows), batch_size)):
        chunk = windows[begin : begin + batch_size]
        rows = [read_window(dataset, int(w) * block_size, block_size) for w in chunk]
        yield _to_batch(rows, np.zeros(len(chunk), dtype=np.int64), b)


def _check_args(
    names: list[str],
    batch_size: int,
    block_size: int,
    mode: str,
    rank: int,
    world_size: int,
    prefetch: int,
) -> None:
    if not names:
        raise UserError("TokenLoader needs at least one dataset")
    if len(set(names)) != len(names):
        raise UserError(f"dataset names must be unique, got {names}; pass name= to TokenDataset")
    if batch_size < 1 or block_size < 1:
        raise UserError(f"batch_size and block_size must be >= 1 (got {batch_size}, {block_size})")
    if mode not in ("random", "packed"):
        raise UserError(f"loader mode must be 'random' or 'packed', got {mode!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
    if prefetch < 0:
        raise UserError(f"prefetch must be >= 0, got {prefetch}")


def _phases(
    names: list[str], weights: Weights | None, schedule: Schedule | None
) -> tuple[list[int], list[np.ndarray]]:
    """Validated (start steps, normalized weight vectors) of the mixture phases."""
    if weights is not None and schedule is not None:
        raise UserError(
            "give mixture weights or a schedule, not both (a schedule's step 0 entry is the start)"
        )
    if schedule is None:
        schedule = [(0, weights if weights is not None else [1.0] * len(names))]
    steps = [int(step) for step, _ in schedule]
    if not steps or steps[0] != 0 or any(b <= a for a, b in itertools.pairwise(steps)):
        raise UserError(f"schedule steps must start at 0 and increase, got {steps}")
    return steps, [_weight_vector(names, w, step) for step, w in schedule]


def _weight_vector(names: list[str], weights: Weights, step: int) -> np.ndarray:
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        missing = [n for n in names if n not in weights]
        if unknown or missing:
            problem = (
                f"unknown dataset {unknown[0]!r}" if unknown else f"no weight for {missing[0]!r}"
            )
            raise UserError(
                f"mixture weights at step {step}: {problem}; give one weight per dataset "
                f"({', '.join(names)}), 0 to skip one"
            )
        values = [weights[n] for n in names]
    else:
        values = list(weights)
        if len(values) != len(names):
            raise UserError(
                f"mixture weights at step {step}: {len(values)} values for {len(names)} datasets"
            )
    vector = np.asarray(values, dtype=np.float64)
    if not all(math.isfinite(v) and v >= 0 for v in vector) or vector.sum() <= 0:
        raise UserError(
            f"mixture weights at step {step} must be >= 0 with a positive sum, got {values}"
        )
    return vector / vector.sum()
