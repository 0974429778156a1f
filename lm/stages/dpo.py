"""Direct preference optimisation (stage `dpo`): pairs of replies to the same conversation, one
preferred (`lm.data.preferences`), trained with DPO or IPO (`pref.loss`, `pref.beta`) against the
frozen parent as the reference policy (`lm.rl.loss.preference_loss`).

A batch is `data.batch_size` rows: `data.batch_size / 2` pairs, chosen and rejected side by side
(only the final reply's tokens are scored). The reference's log-probs of each reply come from one
jitted forward pass of the parent's parameters per batch, outside the gradient.

Evaluations: on `pref.val_pairs` held-out pairs (every `train.eval_every` steps and at the end):
the loss, the share of pairs ranked right by the implied reward β·(log π − log π_ref), and the
margin; held-out task accuracy through the engine as in SFT (`eval.tasks`, every `eval.every`
steps and at the end).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm import kernels, losses, model
from lm.config import Config, ConfigError, parse_weights
from lm.data import preferences
from lm.eval.chat import evaluate_tasks
from lm import tasks as task_lib
from lm.rl.loss import preference_loss
from lm.stages import base
from lm.stages.sft import write_samples
from lm.steps import sequence_logprobs


class Stage(base.Stage):
    chat = True
    needs_parent = True        # its policy is the reference

    @staticmethod
    def loss_fn(cfg: Config):
        mcfg, pref = cfg.model, cfg.pref
        impl = kernels.resolve_for(mcfg)

        def fn(params, batch, rng):
            logits = model.apply(params, mcfg, batch["inputs"])
            logp, _ = losses.token_logprobs(logits, batch["targets"], impl)
            w = batch["weights"]
            return preference_loss((logp * w).sum(axis=1), batch["ref_logp"], w.sum(axis=1),
                                   pref.beta, pref.loss)
        return fn

    @staticmethod
    def abstract_batch(cfg: Config) -> dict:
        B, T = cfg.data.batch_size, cfg.data.seq_len
        return {"inputs": jax.ShapeDtypeStruct((B, T), jnp.int32),
                "targets": jax.ShapeDtypeStruct((B, T), jnp.int32),
                "weights": jax.ShapeDtypeStruct((B, T), jnp.float32),
                "ref_logp": jax.ShapeDtypeStruct((B,), jnp.float32)}

    def __init__(self, cfg: Config, tokenizer=None, parent=None):
        if tokenizer is None or tokenizer.chat is None:
            raise ValueError("dpo needs a chat tokenizer (init_from an sft run)")
        d = cfg.data
        micro = d.batch_size // cfg.train.grad_accum
        if d.batch_size % 2 or micro % 2:
            raise ConfigError(f"dpo: data.batch_size ({d.batch_size}) and each micro-batch "
                              f"(data.batch_size / train.grad_accum = {micro}) must be even: "
                              f"rows come in (chosen, rejected) pairs")
        self.cfg, self.tokenizer = cfg, tokenizer
        try:
            pairs, stats = preferences.load(cfg.pref.data)
        except preferences.PreferenceError as e:
            raise ConfigError(str(e)) from None
        train = preferences.encode(preferences.split(pairs, "train"), tokenizer, d.seq_len,
                                   stats)
        held = preferences.encode(preferences.split(pairs, "test"), tokenizer, d.seq_len)
        print(stats.summary(f"dpo: {cfg.pref.data}") + f"; {len(train)} train pairs, "
              f"{len(held)} held-out pairs")
        if not train:
            raise ConfigError(f"dpo: no training pair of {cfg.pref.data!r} fits data.seq_len "
                              f"({d.seq_len})")
        self.batches = preferences.PairBatches(train, d.batch_size // 2, d.seq_len, d.seed)
        self.val = held[:cfg.pref.val_pairs]
        self.val_ref: list = []            # the reference's log-probs of the held-out batches
        # its own buffers: the train state starts from the same arrays and the step donates them
        self.ref_params = jax.tree.map(jnp.copy, parent.params)
        self.tasks = list(parse_weights(cfg.eval.tasks, task_lib.NAMES, key="eval.tasks"))
        self.samples: list[dict] = []
        self._eval = jax.jit(Stage.loss_fn(cfg))

    def _ref_logp(self, batch: dict) -> np.ndarray:
        logp = sequence_logprobs(self.ref_params, self.cfg.model, jnp.asarray(batch["inputs"]),
                                 jnp.asarray(batch["targets"]))
        return (np.asarray(logp) * batch["weights"]).sum(axis=1).astype(np.float32)

    def next_batch(self, loop, state) -> dict:
        batch = next(self.batches)
        batch["ref_logp"] = self._ref_logp(batch)
        return batch

    def data_state(self) -> dict:
        return self.batches.get_state()

    def set_data_state(self, d: dict) -> None:
        self.batches.set_state(d)

    def _val_batches(self):
        B = self.cfg.data.batch_size // 2
        for k, i in enumerate(range(0, len(self.val), B)):
            batch = preferences.to_rows(self.val[i:i + B], self.cfg.data.seq_len)
            if k == len(self.val_ref):
                self.val_ref.append(self._ref_logp(batch))
            batch["ref_logp"] = self.val_ref[k]
            yield batch

    def held_out(self, params) -> dict:
        """The preference metrics on the held-out pairs (pair-weighted means)."""
        sums, n = {}, 0
        for batch in self._val_batches():
            _, m = self._eval(params, batch, None)
            pairs = batch["inputs"].shape[0] // 2
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) * pairs
            n += pairs
        return {f"val/{k.split('/')[-1]}": v / n for k, v in sums.items()} if n else {}

    def evaluate(self, loop, state, step: int, final: bool) -> dict:
        cfg, out = self.cfg, {}
        params = None
        if self.val and (loop.due(step, cfg.train.eval_every) or final):
            params = loop.compiled.host_params(state)
            out.update(self.held_out(params))
        if self.tasks and (loop.due(step, cfg.eval.every) or final):
            params = params if params is not None else loop.compiled.host_params(state)
            limit = (cfg.eval.final_limit or cfg.eval.limit) if final else cfg.eval.limit
            m, shown = evaluate_tasks(params, cfg.model, self.tokenizer, self.tasks, limit=limit,
                                      batch_size=cfg.eval.batch_size,
                                      max_new_tokens=cfg.eval.max_new_tokens,
                                      samples=cfg.eval.samples, progress=loop.progress,
                                      lengths=True)
            out.update(m)
            if final:
                self.samples = shown
        return out

    def finish(self, loop, state) -> dict:
        if self.samples:
            write_samples(loop.run_dir, self.samples)
        return {}
