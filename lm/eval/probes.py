"""Probes of a base model's use of its context (no generation, no chat format):

- `copy_probe`: the mean loss (nats/token) on the second occurrence of a repeated random-token
  sequence, [BOS] + s + s; a model that copies from its context drives it towards 0, one that
  cannot stays near log(vocab). `copy_first` is the first occurrence's loss (the baseline).
- `copy_lengths`: `copy_probe` at runs of 8, 16, 32, 48, 64 and 128 tokens (`probe/copy_L`,
  `probe/copy_first_L`): heads trained on short copies copy at the distances they learned only.
- `text_copy`: the same on held-out natural text written twice (passages of 40 and 100 tokens;
  `probe/text_copy_L`, `probe/text_first_L`, the first 10 tokens of each copy left out).
- `icl`: in-context learning score (Olsson et al. 2022): the mean loss at tokens 400-500 of
  held-out documents minus the mean loss at tokens 40-60 (negative: the model uses the longer
  context to predict better). Windows are cut to the model's context.

    probes.run(params, cfg, tok, ("copy_probe", "icl")) -> {"probe/copy": ..., "probe/copy_first": ...,
                                                       "probe/icl": ...}
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm import model
from lm.config import ModelConfig
from lm.eval import bpb

COPY_LENGTHS = (8, 16, 32, 48, 64, 128)
TEXT_LENGTHS = (40, 100)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _losses(params, cfg: ModelConfig, tokens_BT):
    """-log p(tokens[t+1] | tokens[:t+1]) per position, [B, T-1]."""
    logits = model.apply(params, cfg, tokens_BT[:, :-1]).astype(jnp.float32)
    lp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(lp, tokens_BT[:, 1:, None], axis=-1)[..., 0]


def copy_probe(params, cfg: ModelConfig, tok, *, rows: int = 16, length: int = 0,
               seed: int = 0) -> dict:
    """Loss on the first and the second copy of random ordinary tokens ([BOS] s s)."""
    length = length or min(64, (cfg.block_size - 1) // 2)
    special = {int(i) for i in tok.special_tokens.values()}
    ordinary = np.array([i for i in range(tok.vocab_size) if i not in special], np.int32)
    rng = np.random.default_rng(seed)
    seq = rng.choice(ordinary, size=(rows, length))
    head = np.full((rows, 1), tok.bos_id if tok.bos_id is not None else ordinary[0], np.int32)
    toks = np.concatenate([head, seq, seq], axis=1).astype(np.int32)
    nll = np.asarray(_losses(params, cfg, jnp.asarray(toks)))
    first = nll[:, 1:length]               # predicting s[1:] of the first copy
    second = nll[:, length:2 * length]     # predicting the whole second copy
    return {"probe/copy": float(second.mean()), "probe/copy_first": float(first.mean())}


def _held_out_texts() -> list[str]:
    """Text no training run sees: FineWeb-Edu's held-out documents and Shakespeare's validation."""
    return bpb.documents("fineweb_edu") + bpb.documents("tinyshakespeare_val")


def copy_lengths_probe(params, cfg: ModelConfig, tok) -> dict:
    """`copy_probe` at each of COPY_LENGTHS that fits the context."""
    out = {}
    for n in (n for n in COPY_LENGTHS if 2 * n + 1 <= cfg.block_size):
        r = copy_probe(params, cfg, tok, length=n)
        out[f"probe/copy_{n}"], out[f"probe/copy_first_{n}"] = r["probe/copy"], r["probe/copy_first"]
    return out


def text_copy_probe(params, cfg: ModelConfig, tok, *, rows: int = 16) -> dict:
    """Held-out passages (as `icl_probe`'s) of n tokens written twice: loss on tokens 10..n of the
    second copy against the same tokens of the first."""
    texts = _held_out_texts()
    head = [tok.bos_id if tok.bos_id is not None else 0]
    out = {}
    for n in (n for n in TEXT_LENGTHS if 2 * n + 1 <= cfg.block_size):
        seqs = [ids[:n] for ids in (list(tok.encode(t)) for t in texts) if len(ids) >= n][:rows]
        if not seqs:
            continue
        nll = np.asarray(_losses(params, cfg, jnp.asarray(np.array(
            [head + s + s for s in seqs], np.int32))))
        out[f"probe/text_copy_{n}"] = float(nll[:, n + 10:2 * n].mean())
        out[f"probe/text_first_{n}"] = float(nll[:, 10:n].mean())
    return out


def icl_probe(params, cfg: ModelConfig, tok, *, docs: int = 32, early=(40, 60),
              late=(400, 500)) -> dict:
    """Late-minus-early loss over held-out documents long enough for the late window (FineWeb-Edu
    held-out and TinyStories validation text: never trained on)."""
    T = cfg.block_size
    late = (min(late[0], T - 1 - (late[1] - late[0])), min(late[1], T - 1))
    texts = _held_out_texts()
    head = [] if tok.bos_id is None else [tok.bos_id]
    rows = []
    for t in texts:
        ids = head + list(tok.encode(t))
        if len(ids) > late[1] + 1:
            rows.append(ids[:T])
        if len(rows) == docs:
            break
    if not rows:
        return {}
    width = min(T, max(map(len, rows)))
    toks = np.array([r + [0] * (width - len(r)) for r in rows], np.int32)
    nll = np.asarray(_losses(params, cfg, jnp.asarray(toks)))
    e = nll[:, early[0]:early[1]].mean()
    lt = nll[:, late[0]:late[1]].mean()
    return {"probe/icl": float(lt - e), "probe/loss_early": float(e),
            "probe/loss_late": float(lt)}


def run(params, cfg: ModelConfig, tok, names=None) -> dict:
    out: dict = {}
    for name in PROBES if names is None else names:
        if name not in PROBES:
            raise ValueError(f"unknown probe {name!r}; known: {list(PROBES)}")
        out.update(_PROBE_FNS[name](params, cfg, tok))
    return out


_PROBE_FNS = {"copy_probe": copy_probe, "copy_lengths": copy_lengths_probe,
              "text_copy": text_copy_probe, "icl": icl_probe}
PROBES = tuple(_PROBE_FNS)
