"""Run outputs: metrics.jsonl (one JSON object per line, each with `step`) and TensorBoard events."""
from __future__ import annotations

import json
import math
import os
from typing import Any

from tensorboardX import SummaryWriter


def _clean(v: Any):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    return v


class MetricsWriter:
    def __init__(self, workdir: str, tensorboard: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._f = open(self.path, "a", buffering=1, encoding="utf-8")
        self._tb = None
        if tensorboard:
            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, **metrics) -> dict:
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
        return row

    def write_text(self, step: int, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def write_records(self, name: str, step: int, records: list[dict]) -> None:
        """Append records (each tagged with `step`) to `<name>.jsonl` beside metrics.jsonl:
        what a run wants to show beyond scalars (sample rollouts, evaluation replies)."""
        path = os.path.join(os.path.dirname(self.path), f"{name}.jsonl")
        with open(path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"step": int(step), **r}) + "\n")

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


class NullWriter:
    """The metrics writer of processes other than 0 (they log nothing)."""

    def write(self, step: int, **metrics) -> dict:
        return {"step": int(step), **metrics}

    def write_text(self, *a, **k) -> None:
        pass

    def write_records(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
