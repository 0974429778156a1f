"""Stages on preference pairs (`lm.data.preferences`: a conversation, then a chosen and a rejected
final reply): DPO (stage `dpo`) and a reward model (stage `rm`).

`dpo`: DPO or IPO (`pref.loss`, `pref.beta`) against the frozen parent as the reference policy
(`lm.rl.loss.preference_loss`). A batch is `data.batch_size` rows, chosen and rejected side by
side (only the final reply's tokens are scored); the reference's log-probs of each reply come
from one jitted forward pass of the parent's parameters per batch, outside the gradient.

`rm`: the parent's transformer with a scalar head (`model.head="score"`, new; the rest from the
parent), the reward read at the final reply's last token (<|assistant_end|>), Bradley-Terry loss
(`lm.rl.loss.reward_model_loss`). Its run loads with `lm.runs` like any other and exports to
transformers as *ForSequenceClassification.

Evaluations, both: on `pref.val_pairs` held-out pairs every `train.eval_every` steps and at the
end, the loss, the share of pairs ranked right (`val/accuracy`; for dpo by the implied reward
β·(log π − log π_ref)) and the margin, beside `val/length_baseline` (the longer reply wins); dpo
also evaluates held-out tasks through the engine as SFT does (`eval.tasks`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lm import kernels, losses, model
from lm import tasks as task_lib
from lm.config import Config, ConfigError, parse_weights
from lm.data import preferences
from lm.rl.loss import preference_loss, reward_model_loss
from lm.rl.rewards import HeldOutRewards
from lm.stages import base
from lm.stages.sft import task_evals, write_samples
from lm.steps import sequence_logprobs


class _Pairs(base.Stage):
    """What both preference stages share: the pairs, their batches and the held-out metrics."""
    needs_parent = True
    rows = staticmethod(preferences.to_rows)
    longest = 1            # a pair's tokens may be seq_len + longest (inputs vs full ids)

    def __init__(self, cfg: Config, tokenizer=None, parent=None):
        if tokenizer is None or tokenizer.chat is None:
            raise ValueError(f"{cfg.stage} needs a chat tokenizer (init_from an sft run)")
        d = cfg.data
        micro = d.batch_size // cfg.train.grad_accum
        if d.batch_size % 2 or micro % 2:
            raise ConfigError(f"{cfg.stage}: data.batch_size ({d.batch_size}) and each "
                              f"micro-batch (data.batch_size / train.grad_accum = {micro}) must "
                              f"be even: rows come in (chosen, rejected) pairs")
        self.cfg, self.tokenizer = cfg, tokenizer
        try:
            pairs, stats = preferences.load(cfg.pref.data, cfg.pref.pairs, cfg.pref.noise)
        except preferences.PreferenceError as e:
            raise ConfigError(str(e)) from None
        max_len = d.seq_len - 1 + self.longest
        train = preferences.encode(preferences.split(pairs, "train"), tokenizer, max_len, stats)
        held = preferences.encode(preferences.split(pairs, "test"), tokenizer, max_len)
        print(stats.summary(f"{cfg.stage}: {cfg.pref.data}") + f"; {len(train)} train pairs, "
              f"{len(held)} held-out pairs")
        if not train:
            raise ConfigError(f"{cfg.stage}: no training pair of {cfg.pref.data!r} fits "
                              f"data.seq_len ({d.seq_len})")
        self.batches = preferences.PairBatches(train, d.batch_size // 2, d.seq_len, d.seed,
                                               rows=self.rows)
        self.val = held[:cfg.pref.val_pairs]
        self.length_baseline = float(np.mean([
            sum(e.chosen_mask) > sum(e.rejected_mask) for e in self.val])) if self.val else 0.0
        self._val_extra: list = []         # per held-out batch, what `prepare` adds (cached)
        self._eval = jax.jit(type(self).loss_fn(cfg))

    def prepare(self, batch: dict) -> dict:
        """Whatever a batch needs besides its rows (dpo: the reference's log-probs)."""
        return {}

    def next_batch(self, loop, state) -> dict:
        batch = next(self.batches)
        batch.update(self.prepare(batch))
        return batch

    def data_state(self) -> dict:
        return self.batches.get_state()

    def set_data_state(self, d: dict) -> None:
        self.batches.set_state(d)

    def held_out(self, params) -> dict:
        """The loss and its metrics on the held-out pairs (pair-weighted means)."""
        B = self.cfg.data.batch_size // 2
        sums, n = {}, 0
        for k, i in enumerate(range(0, len(self.val), B)):
            batch = self.rows(self.val[i:i + B], self.cfg.data.seq_len)
            if k == len(self._val_extra):
                self._val_extra.append(self.prepare(batch))
            batch.update(self._val_extra[k])
            _, m = self._eval(params, batch, None)
            pairs = batch["inputs"].shape[0] // 2
            for key, v in m.items():
                sums[key] = sums.get(key, 0.0) + float(v) * pairs
            n += pairs
        if not n:
            return {}
        out = {f"val/{k.split('/')[-1]}": v / n for k, v in sums.items()}
        out["val/length_baseline"] = self.length_baseline
        return out

    def evaluate(self, loop, state, step: int, final: bool) -> dict:
        if self.val and (loop.due(step, self.cfg.train.eval_every) or final):
            return self.held_out(loop.compiled.host_params(state))
        return {}


class DPO(_Pairs):
    chat = True

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
        super().__init__(cfg, tokenizer, parent)
        # its own buffers: the train state starts from the same arrays and the step donates them
        self.ref_params = jax.tree.map(jnp.copy, parent.params)
        self.tasks = list(parse_weights(cfg.eval.tasks, task_lib.NAMES, key="eval.tasks"))
        self.score = HeldOutRewards(cfg, tokenizer) if cfg.eval.rewards else None
        self.samples: list[dict] = []

    def prepare(self, batch: dict) -> dict:
        logp = sequence_logprobs(self.ref_params, self.cfg.model, jnp.asarray(batch["inputs"]),
                                 jnp.asarray(batch["targets"]))
        return {"ref_logp": (np.asarray(logp) * batch["weights"]).sum(axis=1)
                .astype(np.float32)}

    def evaluate(self, loop, state, step: int, final: bool) -> dict:
        return {**super().evaluate(loop, state, step, final),
                **task_evals(self, loop, state, step, final)}

    def finish(self, loop, state) -> dict:
        if self.samples:
            write_samples(loop.run_dir, self.samples)
        return {}


class RewardModel(_Pairs):
    chat = False          # it scores conversations; it does not reply
    rows = staticmethod(preferences.score_rows)
    longest = 0

    @staticmethod
    def loss_fn(cfg: Config):
        mcfg = cfg.model

        def fn(params, batch, rng):
            rewards_BT = model.apply(params, mcfg, batch["inputs"])
            r = jnp.take_along_axis(rewards_BT, batch["last"][:, None], axis=1)[:, 0]
            return reward_model_loss(r)
        return fn

    @staticmethod
    def abstract_batch(cfg: Config) -> dict:
        B, T = cfg.data.batch_size, cfg.data.seq_len
        return {"inputs": jax.ShapeDtypeStruct((B, T), jnp.int32),
                "last": jax.ShapeDtypeStruct((B,), jnp.int32)}

    def __init__(self, cfg: Config, tokenizer=None, parent=None):
        if cfg.model.head != "score":
            raise ConfigError("rm: a reward model needs model.head=score (a scalar head on the "
                              "parent's transformer)")
        super().__init__(cfg, tokenizer, parent)

    def initial_state(self, state, parent):
        """The parent's transformer; the scalar head from this run's initialisation."""
        fresh = state.params
        return state.replace(params={k: parent.params[k] if k != "score" else v
                                     for k, v in fresh.items()})
