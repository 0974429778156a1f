"""Run outputs: metrics.jsonl (one JSON object per line, each with `step`) and TensorBoard events.

The event file is written here, not by tensorboardX: importing tensorboardX imports torch
wherever torch is installed (1.6 s at every start of every `lm` command, docs/performance.md).
The format is small: TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) around
`Event` protobufs, encoded by hand for the two kinds written (scalars and text).
"""
from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from typing import Any


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord framing."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s as protobuf writes them: ten bytes, two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (strings, bytes, messages)."""
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, *, summary_value: bytes = b"", file_version: str = "") -> bytes:
    """tensorflow.Event: wall_time (1, double), step (2), file_version (3) or summary (5)."""
    out = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
    if file_version:
        out += _field(3, file_version.encode())
    if summary_value:
        out += _field(5, _field(1, summary_value))  # Summary.value (1), repeated
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value: tag (1), simple_value (2, float)."""
    return _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)


def text_value(tag: str, text: str) -> bytes:
    """Summary.Value for TensorBoard's text plugin: a DT_STRING tensor of shape [1] (8), the
    plugin's metadata (9), the tag suffixed as tensorboardX suffixes it."""
    shape = _field(2, b"\x08" + _varint(1))                         # TensorShapeProto.dim {size: 1}
    tensor = b"\x08\x07" + _field(2, shape) + _field(8, text.encode("utf-8"))  # dtype DT_STRING
    metadata = _field(1, _field(1, b"text"))                        # plugin_data {plugin_name}
    return _field(1, f"{tag}/text_summary".encode()) + _field(8, tensor) + _field(9, metadata)


class EventFile:
    """An append-only TensorBoard event file (`events.out.tfevents.<time>.<host>` in `logdir`)."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}."
                                         f"{socket.gethostname()}")
        self._f = open(self.path, "ab")
        self._write(_event(0, file_version="brain.Event:2"))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._f.write(header + struct.pack("<I", _masked_crc(header)) + record
                      + struct.pack("<I", _masked_crc(record)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._write(_event(step, summary_value=scalar_value(tag, value)))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self._write(_event(step, summary_value=text_value(tag, text)))
        self._f.flush()

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


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
            self._tb = EventFile(os.path.join(workdir, "tb"))

    def write(self, step: int, **metrics) -> dict:
        row = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()  # TensorBoard sees each logged row as it is written
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
