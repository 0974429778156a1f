"""SFT batches: a weighted task mixture rendered into (ids, mask) and packed best-fit into rows.

The mixture is a deterministic stream: item i picks a task with probability proportional to its
weight and an example of that task, both from `np.random.default_rng((seed, i))` (generated tasks
take example i itself, so no problem repeats). The packer keeps a buffer of rendered
conversations and fills each row with the largest one that still fits, then the next largest,
and pads the rest (nanochat's best-fit): rows start with BOS (every conversation does), a
conversation is never cut, and one longer than a row is dropped and counted (never clogging the
buffer). Its whole state is (next stream index, indices in the buffer): JSON, saved in every
checkpoint, so a resumed run packs exactly the rows it would have.

A row of R = seq_len + 1 tokens gives inputs = row[:-1], targets = row[1:], weights = the mask
of the targets (0 on padding, prompts, tool outputs and BOS), per-conversation positions and
segment ids (a conversation attends only to itself).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from lm import conversation as chat
from lm import tasks as task_lib
from lm.data.tfds_builders import TaskExamples


class Mixture:
    """item(i) -> (task name, split, example index), deterministic; the conversations come from
    `examples` (lm.data.tfds_builders.TaskExamples: the tasks themselves, or their TFDS builds)."""

    def __init__(self, weights: dict[str, float], split: str, seed: int,
                 examples: Optional[TaskExamples] = None):
        self.examples = examples or TaskExamples("files")
        ws = {n: w for n, w in weights.items() if w > 0}
        for n in list(ws):
            t = task_lib.get(n)
            if t.kind not in ("generative", "categorical", "open"):
                raise ValueError(f"task {n!r} cannot be trained on")
            size = t.size(split)
            if size == 0:            # e.g. ARC's (absent) train split
                del ws[n]
        if not ws:
            raise ValueError(f"the mixture {weights} has no task with a {split!r} split")
        self.names = sorted(ws)
        p = np.array([ws[n] for n in self.names], np.float64)
        self.p = p / p.sum()
        self.sizes = {n: task_lib.get(n).size(split) for n in self.names}
        self.split, self.seed = split, seed

    def item(self, i: int) -> tuple[str, int]:
        rng = np.random.default_rng((self.seed, i))
        name = self.names[int(rng.choice(len(self.names), p=self.p))]
        size = self.sizes[name]
        return name, (i if size is None else int(rng.integers(size)))

    def conversation(self, i: int) -> dict:
        name, k = self.item(i)
        return self.examples.example(name, self.split, k)


@dataclass
class PackStats:
    conversations: int = 0       # packed
    dropped_long: int = 0        # longer than a row
    dropped_invalid: int = 0     # failed to render
    tokens: int = 0              # non-padding tokens in rows
    trained: int = 0             # tokens with weight 1
    rows: int = 0
    by_task: dict = field(default_factory=dict)

    def as_metrics(self) -> dict:
        slots = max(self.rows, 1)
        return {"sft/conversations": self.conversations, "sft/dropped_long": self.dropped_long,
                "sft/dropped_invalid": self.dropped_invalid, "sft/rows": self.rows,
                "sft/trained_tokens": self.trained,
                "sft/conversations_per_row": self.conversations / slots}


MAX_MISSES = 10_000


class BestFitPacker:
    """Rows of `row_len` tokens from `render(i) -> (ids, mask)` (item i of a stream)."""

    def __init__(self, render: Callable[[int], tuple[list[int], list[int]]], row_len: int,
                 buffer: int, pad_id: int, name_of: Optional[Callable[[int], str]] = None):
        self.render, self.row_len, self.capacity, self.pad_id = render, row_len, buffer, pad_id
        self.name_of = name_of
        self.next = 0
        self.buffer: list[int] = []            # stream indices waiting to be packed
        self._cache: dict[int, tuple[list[int], list[int]]] = {}
        self.stats = PackStats()

    def get_state(self) -> dict:
        return {"next": self.next, "buffer": list(self.buffer)}

    def set_state(self, state: dict) -> None:
        self.next, self.buffer = int(state["next"]), [int(i) for i in state["buffer"]]
        self._cache.clear()

    def _item(self, i: int):
        if i not in self._cache:
            self._cache[i] = self.render(i)
        return self._cache[i]

    def _fill(self) -> None:
        misses = 0                  # items dropped in a row: a stream where nothing fits ends
        while len(self.buffer) < self.capacity:
            if misses >= MAX_MISSES:
                raise ValueError(f"SFT packing: the last {misses:,} conversations were all longer "
                                 f"than a row ({self.row_len} tokens) or malformed; raise "
                                 f"data.seq_len or check the data")
            i = self.next
            self.next += 1
            try:
                ids, _ = self._item(i)
            except chat.ConversationError:
                self.stats.dropped_invalid += 1
                self._cache.pop(i, None)
                misses += 1
                continue
            if len(ids) > self.row_len:
                self.stats.dropped_long += 1
                self._cache.pop(i, None)
                misses += 1
                continue
            misses = 0
            self.buffer.append(i)

    def row(self) -> dict[str, np.ndarray]:
        """One packed row: tokens, mask, positions, segment ids (all [row_len]) and `used`, the
        number of non-padding tokens."""
        self._fill()
        R = self.row_len
        tokens = np.full(R, self.pad_id, np.int32)
        mask = np.zeros(R, np.int32)
        pos = np.zeros(R, np.int32)
        seg = np.full(R, -1, np.int32)
        used, k = 0, 0
        while True:
            room = R - used
            best, best_len = None, 0
            for j, i in enumerate(self.buffer):
                n = len(self._item(i)[0])
                if best_len < n <= room:
                    best, best_len = j, n
            if best is None:
                break
            i = self.buffer.pop(best)
            ids, m = self._cache.pop(i)
            tokens[used:used + best_len] = ids
            mask[used:used + best_len] = m
            pos[used:used + best_len] = np.arange(best_len)
            seg[used:used + best_len] = k
            self.stats.conversations += 1
            self.stats.tokens += best_len
            self.stats.trained += int(np.sum(m))
            if self.name_of is not None:
                name = self.name_of(i)
                self.stats.by_task[name] = self.stats.by_task.get(name, 0) + 1
            used += best_len
            k += 1
            self._fill()
        seg[used:] = k                # padding: its own segment
        self.stats.rows += 1
        return {"tokens": tokens, "mask": mask, "positions": pos, "segment_ids": seg,
                "used": used}


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Packed rows -> the training batch (inputs, targets, weights, positions, segment_ids)."""
    t = np.stack([r["tokens"] for r in rows])
    m = np.stack([r["mask"] for r in rows])
    return {"inputs": t[:, :-1], "targets": t[:, 1:], "weights": m[:, 1:].astype(np.float32),
            "positions": np.stack([r["positions"] for r in rows])[:, :-1],
            "segment_ids": np.stack([r["segment_ids"] for r in rows])[:, :-1]}


class SFTBatches:
    """The SFT stage's batch iterator over a mixture (checkpointable: `get_state`/`set_state`)."""

    def __init__(self, tokenizer, weights: dict[str, float], *, split: str, seq_len: int,
                 batch_size: int, buffer: int, seed: int,
                 examples: Optional[TaskExamples] = None):
        self.mixture = Mixture(weights, split, seed, examples)
        self.tok, self.batch_size = tokenizer, batch_size

        def render(i: int):
            return chat.render(self.mixture.conversation(i), tokenizer)

        self.packer = BestFitPacker(render, seq_len + 1, buffer, int(tokenizer.bos_id),
                                    name_of=lambda i: self.mixture.item(i)[0])

    def __next__(self) -> dict[str, np.ndarray]:
        return rows_to_batch([self.packer.row() for _ in range(self.batch_size)])

    def __iter__(self):
        return self

    def get_state(self) -> dict:
        return self.packer.get_state()

    def set_state(self, state: dict) -> None:
        self.packer.set_state(state)
