"""Preference pairs: a conversation, then a chosen and a rejected final reply (reward models, DPO).

Sources (`load(spec)`):
- `hh_rlhf` (or `hh_rlhf:<subset>+<subset>`): Anthropic's HH-RLHF test files (~8.5k pairs in four
  subsets; `sources.FILES["hh_rlhf/<subset>"]`). Each record is two transcripts
  ("\\n\\nHuman: ... \\n\\nAssistant: ...") that share every turn but the last reply. Parsed into
  our conversation schema; a record that does not parse, has an empty side, or whose two sides
  differ before the last reply or are identical is counted and skipped (`PairStats`).

- `labeller:<task>+<task>`: the synthetic labeller's pairs over those tasks' training prompts
  (`lm.rl.labeller`: variants of the reference reply ranked by a known true reward, with label
  noise `pref.noise` in the training split and none in the held-out one; `pref.pairs` of them).
- `jsonl:<path>`: your own pairs, one JSON object a line: `{"messages": [...], "chosen": "...",
  "rejected": "..."}` (messages in the chat schema, ending with a user turn; a relative path is
  from the working directory), checked and counted like HH-RLHF's.

A pair is held out (`split="test"`) by a hash of its conversation (one in ten), so the split is
the same on every machine and does not move when other records are added. Tokenized by
`encode` (the chat format of `lm.conversation`; only the final reply's tokens are scored): a
pair longer than the row is counted and skipped, never cut.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import re
from typing import Any, Iterator, Optional

import numpy as np

from lm import conversation as chat
from lm import tasks
from lm.data import sources
from lm.rl import labeller
from lm.tasks.base import held_out

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
HELD_OUT_EVERY = 10


@dataclasses.dataclass
class Pair:
    messages: list          # the conversation before the final reply (ends with a user turn)
    chosen: Any             # a reply: text, or chat parts (text, calculator calls and outputs)
    rejected: Any
    source: str = ""

    def conversation(self, reply: str) -> dict:
        return {"messages": self.messages + [{"role": "assistant", "content": reply}]}

    @property
    def key(self) -> str:
        return json.dumps(self.messages, sort_keys=True)


@dataclasses.dataclass
class PairStats:
    read: int = 0
    kept: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def skip(self, why: str) -> None:
        self.skipped[why] += 1

    def summary(self, what: str = "preference pairs") -> str:
        why = ", ".join(f"{n} {k}" for k, n in self.skipped.most_common()) or "none"
        return f"{what}: {self.read} read, {self.kept} kept, skipped: {why}"


class PreferenceError(ValueError):
    pass


_TURN = re.compile(r"\n\n(Human|Assistant): ?")


def parse_hh(text: str) -> list[dict]:
    """An HH-RLHF transcript as messages (user/assistant, alternating, user first, assistant
    last); PreferenceError when it is not one."""
    if not isinstance(text, str):
        raise PreferenceError("not text")
    pieces = _TURN.split(text)
    if pieces[0].strip():
        raise PreferenceError("text before the first turn")
    msgs = []
    for role, body in zip(pieces[1::2], pieces[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": body.strip()})
    if len(msgs) < 2:
        raise PreferenceError("fewer than two turns")
    for i, m in enumerate(msgs):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise PreferenceError("turns do not alternate")
        if i < len(msgs) - 1 and not m["content"]:
            raise PreferenceError("an empty turn")
    if msgs[-1]["role"] != "assistant":
        raise PreferenceError("does not end with a reply")
    return msgs


def hh_pair(record: dict, source: str = "") -> Pair:
    """One HH-RLHF record as a Pair; PreferenceError naming what is wrong."""
    if not isinstance(record, dict) or "chosen" not in record or "rejected" not in record:
        raise PreferenceError("missing side")
    c, r = parse_hh(record["chosen"]), parse_hh(record["rejected"])
    if c[:-1] != r[:-1]:
        raise PreferenceError("sides differ before the last reply")
    chosen, rejected = c[-1]["content"], r[-1]["content"]
    if not chosen or not rejected:
        raise PreferenceError("empty side")
    if chosen == rejected:
        raise PreferenceError("identical sides")
    return Pair(messages=c[:-1], chosen=chosen, rejected=rejected, source=source)


def hh_rlhf(subsets=HH_SUBSETS) -> tuple[list[Pair], PairStats]:
    stats, out = PairStats(), []
    for sub in subsets:
        if sub not in HH_SUBSETS:
            raise PreferenceError(f"hh_rlhf: unknown subset {sub!r}; known: {list(HH_SUBSETS)}")
        with gzip.open(sources.fetch(f"hh_rlhf/{sub}"), "rt", encoding="utf-8") as f:
            _read_lines(f, hh_pair, sub, stats, out)
    stats.kept = len(out)
    return out, stats


def json_pair(record: dict, source: str = "") -> Pair:
    """One record of a `jsonl:` file as a Pair; PreferenceError naming what is wrong."""
    if not isinstance(record, dict):
        raise PreferenceError("not an object")
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise PreferenceError("missing side")
    if not chosen.strip() or not rejected.strip():
        raise PreferenceError("empty side")
    if chosen == rejected:
        raise PreferenceError("identical sides")
    msgs = record.get("messages")
    try:
        chat.validate({"messages": msgs})
    except chat.ConversationError as e:
        raise PreferenceError(f"bad messages ({e})") from None
    if not msgs or msgs[-1]["role"] != "user":
        raise PreferenceError("messages do not end with a user turn")
    return Pair(messages=list(msgs), chosen=chosen, rejected=rejected, source=source)


def _read_lines(lines, parse, source: str, stats: PairStats, out: list) -> None:
    for line in lines:
        if not line.strip():
            continue
        stats.read += 1
        try:
            out.append(parse(json.loads(line), source))
        except json.JSONDecodeError:
            stats.skip("not JSON")
        except PreferenceError as e:
            stats.skip(str(e))


def jsonl(path: str) -> tuple[list[Pair], PairStats]:
    stats, out = PairStats(), []
    try:
        with open(path, encoding="utf-8") as f:
            _read_lines(f, json_pair, path, stats, out)
    except OSError as e:
        raise PreferenceError(f"pref.data=jsonl:{path}: {e.strerror or e}") from None
    stats.kept = len(out)
    return out, stats


def labelled(task_names: list[str], n: int, noise: float) -> tuple[list[Pair], PairStats]:
    unknown = [t for t in task_names if t not in tasks.NAMES]
    if unknown or not task_names:
        raise PreferenceError(f"pref.data=labeller:...: unknown tasks {unknown}; known: "
                              f"{sorted(tasks.NAMES)}")
    stats, out = PairStats(), []
    # the same prompts and replies without the noise: held-out pairs keep the true order, so a
    # reward model is measured against the labeller's intent, not its mistakes
    clean = labeller.pairs(task_names, n, noise=0.0)
    for r, c in zip(labeller.pairs(task_names, n, noise=noise), clean):
        stats.read += 1
        pick = c if held_out(json.dumps(c["messages"], sort_keys=True), HELD_OUT_EVERY) else r
        # the source names the task and the variants (chosen>rejected): per-kind accuracy
        out.append(Pair(pick["messages"], pick["chosen"], pick["rejected"],
                        source=f"{pick['task']}:{'>'.join(pick['kinds'])}"))
    stats.kept = len(out)
    return out, stats


def load(spec: str, pairs: int = 4000, noise: float = 0.1) -> tuple[list[Pair], PairStats]:
    """Pairs of a source spec: `hh_rlhf`, `hh_rlhf:<subset>+<subset>`, `labeller:<task>+...`
    (`pairs` of them, label noise `noise`) or `jsonl:<path>`."""
    name, _, arg = spec.partition(":")
    if name == "hh_rlhf":
        return hh_rlhf(tuple(arg.split("+")) if arg else HH_SUBSETS)
    if name == "labeller":
        return labelled([t for t in arg.split("+") if t], pairs, noise)
    if name == "jsonl" and arg:
        return jsonl(arg)
    raise PreferenceError(f"pref.data={spec!r}: known sources: hh_rlhf[:subset+...] "
                          f"(subsets {list(HH_SUBSETS)}), labeller:<task>+..., jsonl:<path>")


def split(pairs: list[Pair], which: str) -> list[Pair]:
    """The train or test pairs (one in ten held out by a hash of the conversation)."""
    if which not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {which!r}")
    test = which == "test"
    return [p for p in pairs if held_out(p.key, HELD_OUT_EVERY) == test]


def encode_side(pair: Pair, reply: str, tok) -> tuple[list[int], list[int]]:
    """(ids, mask) of the conversation ending in `reply`; mask 1 on the final reply's tokens
    only (its text and <|assistant_end|>), the earlier turns 0."""
    ids, mask = chat.render(pair.conversation(reply), tok)
    start = len(chat.render_for_completion({"messages": pair.messages}, tok))
    if ids[:start] != chat.render_for_completion({"messages": pair.messages}, tok):
        raise PreferenceError("the reply does not continue the prompt's tokens")
    return ids, [0] * start + list(mask[start:])


@dataclasses.dataclass
class Encoded:
    chosen: list
    chosen_mask: list
    rejected: list
    rejected_mask: list


def encode(pairs: list[Pair], tok, max_len: int,
           stats: Optional[PairStats] = None) -> list[Encoded]:
    """Token ids of each pair's two sides (rows of `max_len` + 1 tokens at most: inputs and
    shifted targets); a longer pair is counted in `stats` and skipped."""
    out = []
    for p in pairs:
        try:
            c, cm = encode_side(p, p.chosen, tok)
            r, rm = encode_side(p, p.rejected, tok)
        except (chat.ConversationError, PreferenceError) as e:
            if stats is not None:
                stats.skip(f"unrenderable ({e})")
            continue
        if max(len(c), len(r)) > max_len + 1:
            if stats is not None:
                stats.skip(f"longer than {max_len} tokens")
            continue
        out.append(Encoded(c, cm, r, rm))
    return out


def to_rows(items: list[Encoded], T: int) -> dict[str, np.ndarray]:
    """A batch of pairs as rows, alternating: row 2i the chosen side of pair i, row 2i+1 its
    rejected side (so any even split of the rows keeps pairs whole: micro-batches, devices).
    [2B, T] inputs / targets / weights; a weight is 1 where the target is a reply token."""
    B = len(items)
    inputs = np.zeros((2 * B, T), np.int32)
    targets = np.zeros((2 * B, T), np.int32)
    weights = np.zeros((2 * B, T), np.float32)
    sides = [side for e in items for side in ((e.chosen, e.chosen_mask),
                                              (e.rejected, e.rejected_mask))]
    for j, (ids, mask) in enumerate(sides):
        n = len(ids) - 1
        inputs[j, :n], targets[j, :n] = ids[:-1], ids[1:]
        weights[j, :n] = mask[1:]
    return {"inputs": inputs, "targets": targets, "weights": weights}


def score_rows(items: list[Encoded], T: int) -> dict[str, np.ndarray]:
    """A batch of pairs for a reward model, alternating chosen / rejected as `to_rows`: the whole
    conversation as input ([2B, T], right-padded with 0) and the index of its last token (the
    final reply's <|assistant_end|>, where the reward is read)."""
    B = len(items)
    inputs = np.zeros((2 * B, T), np.int32)
    last = np.zeros((2 * B,), np.int32)
    sides = [ids for e in items for ids in (e.chosen, e.rejected)]
    for j, ids in enumerate(sides):
        inputs[j, :len(ids)] = ids
        last[j] = len(ids) - 1
    return {"inputs": inputs, "last": last}


class PairBatches:
    """Batches of B pairs (`rows`: `to_rows` or `score_rows`), shuffled each epoch (seeded),
    forever; `get_state`/`set_state` give the position for checkpoints."""

    def __init__(self, items: list[Encoded], batch_pairs: int, seq_len: int, seed: int = 0,
                 rows=to_rows):
        if not items:
            raise PreferenceError("no preference pairs to train on")
        self.items, self.B, self.T, self.seed, self.rows = items, batch_pairs, seq_len, seed, rows
        self.epoch, self.index = 0, 0
        self._order = self._perm()

    def _perm(self) -> np.ndarray:
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.items))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        picked = []
        while len(picked) < self.B:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._perm()
            picked.append(self.items[int(self._order[self.index])])
            self.index += 1
        return self.rows(picked, self.T)

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, d: dict) -> None:
        self.epoch, self.index = int(d["epoch"]), int(d["index"])
        self._order = self._perm()
