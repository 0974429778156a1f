"""RL with verifiable rewards (GRPO and its variants) on the sampling engine.

Each rollout batch: P prompts from the task's `rl.split` × G samples each (`rl.temperature`,
`top_k`, `top_p`), tools on; the engine flags its forced tool-output tokens, which (with prompts
and padding) get no gradient. Rewards come from the task's grader (`lm.rl.rewards`), or from a
reward model (`rl.rewards=model:1`, `rl.reward_model=<an rm run>`: its score of each prompt +
rollout, one forward pass per batch); each reward is logged as `rl/reward/<name>` (weight 0:
logged, not optimised, e.g. `labeller:0` beside a reward model); advantages
are group-relative (`lm.rl.loss.advantages`). The step trains only the rows that carry a
gradient (`rl.trim`: a group whose rewards are all equal has advantage 0 and, without a KL
penalty, none), cut after their last sampled token, and divides by the whole batch's aggregate
(`lm.rl.loss.denominator`), so its gradient is the whole batch's at a fraction of the compute.
The log-probs of the sampled tokens under the frozen parent (`ref_logp`) take one jitted forward
pass over those rows, without gradients; under the policy that sampled them (`old_logp`) another,
only when a batch serves more than one optimizer step (`rl.updates` > 1: the PPO ratio and its
clipping engage); with one, the step's own forward pass is that policy. The one loop runs the
steps like any other.
`rl.dynamic_sampling=N` (DAPO's dynamic sampling) samples up to N more batches of prompts while
fewer than P groups have unequal rewards, and trains on those: on a task the policy rarely solves
(GSM8K), most groups are all wrong and teach nothing.

Logged every step: reward, response length, the share of replies that show their working
(`rl/worked`: a calculator call or a written step before the answer), KL to the reference (k3),
entropy and clip fraction (over the trained rows: with rl.trim, those of groups whose rewards
differ), zero-variance groups, reward errors, rollout and log-prob seconds, the trained batch's
rows and length (`rl/train_rows`, `rl/train_len`; with dynamic sampling, the batches it added
and the share of trained groups that differ).
Evaluations: held-out pass@1 (greedy, `eval/<task>`) at step 0 (the parent's policy, before the
first update), every `eval.every` steps and at the end, and pass@k (`eval/<task>_pass@k`) at step
0 and at the end; `rl_curves.png` in the run directory plots them from step 0.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm import kernels, losses, model, parallel
from lm import conversation as chat
from lm import tasks as task_lib
from lm.config import Config, ConfigError, parse_weights
from lm.eval.chat import evaluate_tasks, pass_at_k
from lm.report import plot_rl_curves
from lm.rl.loss import advantages, denominator, policy_loss, zero_variance
from lm.rl.rewards import Composite, HeldOutRewards, reward_model
from lm.sampling import Engine
from lm.stages import base
from lm.stages.sft import write_samples
from lm.steps import sequence_logprobs
from lm.tasks.base import shows_work


MAX_REDRAWS = 8              # draws again a rollout batch may make, per prompt, before it errs
REDRAWN_FROM = 10 ** 9       # a generated task's redraws take indices far past any batch's
EXTRA_FROM = 10 ** 6         # dynamic sampling's batches: streams past any run's rollout batches
MAX_EXTRA = 64               # ... at most this many per batch (rl.dynamic_sampling's bound)
ROW_SHARE = 8                # a trimmed step's rows come in multiples of an eighth of the batch
LEN_QUANTUM = 64             # ... and its length in multiples of 64 tokens: few shapes to compile


def _last_user(conv: dict) -> str:
    users = [m["content"] for m in conv["messages"] if m["role"] == "user"]
    return chat.reply_text(chat.parts_of(users[-1])) if users else ""


def train_rows(batch: dict, keep_B: np.ndarray, multiple: int,
               len_quantum: int = LEN_QUANTUM) -> dict:
    """The rows of a rollout batch flagged in `keep_B`, padded with empty rows (no weight) to a
    multiple of `multiple` (at least one multiple, at most the batch), and cut after the last
    weighted position of any kept row, rounded up to `len_quantum`. A causal model's loss on
    the kept positions does not see what is cut, so with the whole batch's divisor the gradient
    is the whole batch's whenever the dropped rows carry none."""
    B, T = batch["inputs"].shape
    idx = np.flatnonzero(keep_B)
    rows = min(B, max(multiple, -(-len(idx) // multiple) * multiple))
    used = np.flatnonzero(batch["weights"][idx].any(axis=0))
    end = int(used[-1]) + 1 if len(used) else 1
    length = min(T, -(-end // len_quantum) * len_quantum)
    out = {}
    for k, v in batch.items():
        x = np.zeros((rows,) + v.shape[1:], v.dtype)
        x[:len(idx)] = v[idx]
        out[k] = x[:, :length] if x.ndim == 2 else x
    return out


class Stage(base.Stage):
    chat = True
    needs_parent = True        # its policy is the reference

    @staticmethod
    def loss_fn(cfg: Config):
        mcfg, rl = cfg.model, cfg.rl
        impl = kernels.resolve_for(mcfg)

        def fn(params, batch, rng):
            logits = model.apply(params, mcfg, batch["inputs"])
            logp, lse = losses.token_logprobs(logits, batch["targets"], impl)
            p = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
            entropy = jax.lax.stop_gradient(lse) - jnp.sum(p * jax.lax.stop_gradient(logits), -1)
            return policy_loss(logp, batch.get("old_logp"), batch["ref_logp"],
                               batch["advantages"], batch["weights"], entropy, rl,
                               denom=batch["denom"][0])
        return fn

    @staticmethod
    def abstract_batch(cfg: Config) -> dict:
        """The largest batch a step can get (`train_batch` trims most steps' below it)."""
        B, T = cfg.data.batch_size, cfg.data.seq_len
        f = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
        i = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
        out = {"inputs": i(B, T), "targets": i(B, T), "weights": f(B, T), "ref_logp": f(B, T),
               "advantages": f(B), "denom": f(B)}
        if cfg.rl.updates > 1:
            out["old_logp"] = f(B, T)
        return out

    def __init__(self, cfg: Config, tokenizer=None, parent=None):
        if tokenizer is None or tokenizer.chat is None:
            raise ValueError("grpo needs a chat tokenizer (init_from an sft run)")
        rl, d = cfg.rl, cfg.data
        if d.batch_size != rl.prompts * rl.samples:
            raise ValueError(f"grpo: data.batch_size ({d.batch_size}) must be rl.prompts × "
                             f"rl.samples ({rl.prompts} × {rl.samples} = "
                             f"{rl.prompts * rl.samples}): the rows of one rollout batch")
        self.cfg, self.tokenizer = cfg, tokenizer
        parse_weights(rl.task, task_lib.NAMES, key="rl.task")     # one task, or a mixture
        self.task = task_lib.get(rl.task)
        if self.task.kind != "generative":
            raise ValueError(f"rl.task={rl.task!r} is {self.task.kind}; RL needs a generative "
                             f"task with a grader")
        if rl.split == "test" or rl.split not in self.task.splits:
            raise ValueError(f"rl.split={rl.split!r}: {rl.task} has splits "
                             f"{[x for x in self.task.splits if x != 'test']} to practise on "
                             f"(test is held out for evaluation)")
        self.reward = Composite(rl.rewards)
        uses_rm = "model" in self.reward.weights or "model" in cfg.eval.rewards.split(",")
        self.scorer = reward_model(cfg, tokenizer) if uses_rm else None
        if rl.reward_model and not uses_rm:
            raise ConfigError(f"rl.reward_model={rl.reward_model!r} is set but neither "
                              f"rl.rewards ({rl.rewards!r}) nor eval.rewards uses `model`")
        self.score = HeldOutRewards(cfg, tokenizer, self.scorer) if cfg.eval.rewards else None
        # its own buffers: the train state starts from the same arrays and the step donates them
        self.ref_params = jax.tree.map(jnp.copy, parent.params)
        self.rollout_index = 0          # rollout batches made so far (the data position)
        self.updates_left = 0
        self.batch = None
        self.stats: dict = {}
        self.history: list[dict] = []
        self.engine = None
        self.samples: list[dict] = []
        self.eval_tasks = list(parse_weights(cfg.eval.tasks, task_lib.NAMES,
                                             key="eval.tasks")) or [rl.task]
        # a prompt too long for its reply is drawn again (`_draw`); most of them must fit
        self.room = d.seq_len - rl.max_new_tokens - 1           # prompt tokens a row leaves
        sample = sorted(len(chat.render_for_completion(self.task.example(rl.split, i), tokenizer))
                        for i in range(32))
        median = sample[len(sample) // 2]
        if median > self.room:
            raise ValueError(f"grpo: the median prompt of {rl.task} has {median} tokens; "
                             f"with rl.max_new_tokens ({rl.max_new_tokens}) it does not fit "
                             f"data.seq_len ({d.seq_len}): raise data.seq_len to at least "
                             f"{sample[-1] + rl.max_new_tokens + 1}")

    # -- the data position --------------------------------------------------------------------
    def data_state(self) -> dict:
        return {"rollouts": self.rollout_index}

    def set_data_state(self, d: dict) -> None:
        # a resumed run starts the next rollout batch (a batch in progress is made again only
        # when rl.updates == 1, where it is exactly the batch the step would have made)
        self.rollout_index = int(d["rollouts"])
        self.updates_left = 0

    def log_metrics(self) -> dict:
        return dict(self.stats)

    # -- rollouts -------------------------------------------------------------------------------
    def _engine(self, params):
        if self.engine is None:
            self.engine = Engine(params, self.cfg.model, tokenizer=self.tokenizer,
                                 tools=self.tokenizer.chat)
        self.engine.params = params
        return self.engine

    def prompts(self, k: int) -> list[dict]:
        """The P training conversations of rollout batch k (deterministic)."""
        return self._draw(k)[0]

    def _fits(self, conv: dict) -> bool:
        return len(chat.render_for_completion(conv, self.tokenizer)) <= self.room

    def _draw(self, k: int) -> tuple[list[dict], int]:
        """(conversations, how many were drawn again): a prompt that leaves no room in a row for
        rl.max_new_tokens of reply is replaced by a further draw from the same stream (GSM8K's
        longest problems), so the first draws, and every run whose prompts fit, are unchanged."""
        P, split = self.cfg.rl.prompts, self.cfg.rl.split
        size = self.task.size(split)
        rng = np.random.default_rng((self.cfg.data.seed, k))
        first = (range(k * P, (k + 1) * P) if size is None
                 else [int(i) for i in rng.integers(0, size, P)])
        convs, redrawn = [], 0
        for j, i in enumerate(first):
            conv = self.task.example(split, i)
            while not self._fits(conv):
                redrawn += 1
                if redrawn > MAX_REDRAWS * P:
                    raise ValueError(f"grpo: {redrawn} prompts of rollout batch {k} were too "
                                     f"long for data.seq_len ({self.cfg.data.seq_len}) with "
                                     f"rl.max_new_tokens ({self.cfg.rl.max_new_tokens})")
                i = (int(rng.integers(0, size)) if size is not None
                     else REDRAWN_FROM + (k * P + j) * MAX_REDRAWS * P + redrawn)
                conv = self.task.example(split, i)
            convs.append(conv)
        return convs, redrawn

    def _groups(self, params, convs: list[dict], b: int) -> list[dict]:
        """One group per conversation: its prompt's tokens and rl.samples replies, each with its
        tokens, forced-token flags and every reward's value (the sampling seed from stream b,
        kept in the engine's 31 bits: dynamic sampling's streams start at 10**6)."""
        cfg, rl, tok = self.cfg, self.cfg.rl, self.tokenizer
        prompts = [chat.render_for_completion(c, tok) for c in convs]
        g = self._engine(params).generate(
            prompts, n=rl.samples, max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature, top_k=rl.top_k, top_p=rl.top_p,
            seed=(cfg.train.seed + 7919 * b) % 2 ** 31, stop_tokens=list(tok.chat.stops))
        end = tok.chat.assistant_end
        rows = len(prompts) * rl.samples
        scores = (self.scorer([prompts[r // rl.samples] + g.row(r) for r in range(rows)])
                  if "model" in self.reward.weights else None)
        groups = [{"conv": c, "prompt": p, "replies": []} for c, p in zip(convs, prompts)]
        for r in range(rows):
            group = groups[r // rl.samples]
            ids = g.row(r)
            reply = {"text": chat.reply_text(chat.parse_reply(ids, tok)), "tokens": ids,
                     "forced": g.forced[r, :len(ids)],
                     "format_ok": bool(g.stopped[r] and ids and ids[-1] == end)}
            if scores is not None:
                reply["model_score"] = float(scores[r])
            reply["rewards"] = self.reward.each(self.task, group["conv"], reply)
            reply["reward"] = self.reward.total(reply["rewards"])
            group["replies"].append(reply)
        return groups

    def rollouts(self, params, k: int) -> tuple[dict, dict, list[dict]]:
        """(batch, stats, shown): shown = the best-rewarded rollout of the first P prompts and
        their first, with every reward's value (rollouts.jsonl: what the policy learns to say).

        With rl.dynamic_sampling = N, up to N more batches of P prompts (streams of their own,
        past any run's batches) are sampled while fewer than P groups have unequal rewards, and
        those groups replace the ones that teach nothing (DAPO, Yu et al. 2025). The policy's
        statistics (reward, zero-variance groups, format) stay those of the first P prompts, so
        runs with and without it read alike; `rl/extra_batches` and `rl/trained_informative` say
        what it drew and what the step trained on."""
        cfg, rl = self.cfg, self.cfg.rl
        errors_before = self.reward.errors
        convs, redrawn = self._draw(k)
        first = self._groups(params, convs, k)
        varies = lambda grp: not zero_variance([[x["reward"] for x in grp["replies"]]])[0]
        groups, extra = first, 0
        if rl.dynamic_sampling and sum(map(varies, first)) < rl.prompts:
            keep = [x for x in first if varies(x)]
            spare = [x for x in first if not varies(x)]
            while len(keep) < rl.prompts and extra < rl.dynamic_sampling:
                extra += 1
                b = EXTRA_FROM + k * MAX_EXTRA + extra - 1
                more, n = self._draw(b)
                redrawn += n
                for x in self._groups(params, more, b):
                    (keep if varies(x) else spare).append(x)
            groups = (keep + spare)[:rl.prompts]
        T, B = cfg.data.seq_len, rl.prompts * rl.samples
        inputs = np.zeros((B, T), np.int32)
        targets = np.zeros((B, T), np.int32)
        weights = np.zeros((B, T), np.float32)
        rewards = np.array([[x["reward"] for x in grp["replies"]] for grp in groups], np.float32)
        for r in range(B):
            grp = groups[r // rl.samples]
            reply = grp["replies"][r % rl.samples]
            ids = reply["tokens"]
            seq = grp["prompt"] + ids
            n = len(seq) - 1
            inputs[r, :n], targets[r, :n] = seq[:-1], seq[1:]
            start = len(grp["prompt"]) - 1              # the first target is the first reply token
            weights[r, start:start + len(ids)] = ~reply["forced"]
        adv, zero = advantages(rewards, rl.std_norm, rl.adv_eps)
        batch = {"inputs": inputs, "targets": targets, "weights": weights,
                 "advantages": adv.reshape(-1)}
        replies = [x for grp in first for x in grp["replies"]]
        names = replies[0]["rewards"]
        stats = {**{f"rl/reward/{name}": float(np.mean([x["rewards"][name] for x in replies]))
                    for name in names},
                 "rl/reward": float(np.mean([x["reward"] for x in replies])),
                 "rl/response_tokens": float(np.mean([len(x["tokens"]) for x in replies])),
                 "rl/zero_var_groups": float(np.mean([not varies(x) for x in first])),
                 "rl/prompts_redrawn": redrawn, "rl/extra_batches": extra,
                 "rl/trained_informative": float(1.0 - zero.mean()),
                 "rl/reward_errors": self.reward.errors - errors_before,
                 "rl/format": float(np.mean([x["format_ok"] for x in replies])),
                 "rl/worked": float(np.mean([shows_work(x["text"]) for x in replies]))}
        best = int(np.argmax([x["reward"] for x in replies]))
        shown = [{"which": which, "prompt": _last_user(convs[r // rl.samples]),
                  "reply": replies[r]["text"], "rewards": replies[r]["rewards"]}
                 for which, r in (("best", best), ("first", 0))]
        return batch, stats, shown

    def train_batch(self, params, batch: dict, compiled) -> dict:
        """A rollout batch as the step trains on it: with rl.trim only the rows with a gradient
        (a non-zero advantage; every row under a KL penalty), cut to their length (`train_rows`);
        `denom`, the whole batch's aggregate over the pieces the step averages (devices ×
        micro-batches), so the gradient is the whole batch's; the reference's log-probs, and
        the sampling policy's when rl.updates > 1."""
        rl, m = self.cfg.rl, self.cfg.model
        accum = self.cfg.train.grad_accum
        denom = (float(denominator(batch["weights"], rl.aggregation, rl.max_new_tokens))
                 / (compiled.place.loss_pieces * accum))
        if rl.trim:
            keep = batch["weights"].any(axis=1) & ((batch["advantages"] != 0) | (rl.kl != "none"))
            align = parallel.data_parallel_size(compiled.mesh) * accum
            share = max(len(keep) // ROW_SHARE, 1)
            batch = train_rows(batch, keep, align * -(-share // align))
        batch["denom"] = np.full(len(batch["inputs"]), denom, np.float32)
        ins, tg = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
        batch["ref_logp"] = np.asarray(sequence_logprobs(self.ref_params, m, ins, tg))
        if rl.updates > 1:
            batch["old_logp"] = np.asarray(sequence_logprobs(params, m, ins, tg))
        return batch

    def next_batch(self, loop, state) -> dict:
        if self.updates_left == 0:
            t0 = time.perf_counter()
            params = loop.compiled.host_params(state)
            batch, stats, shown = self.rollouts(params, self.rollout_index)
            loop.writer.write_records("rollouts", self.rollout_index + 1, shown)
            t1 = time.perf_counter()
            batch = self.train_batch(params, batch, loop.compiled)
            stats["rl/rollout_s"] = t1 - t0
            stats["rl/logprob_s"] = time.perf_counter() - t1
            stats["rl/train_rows"], stats["rl/train_len"] = batch["inputs"].shape
            self.batch, self.stats = batch, stats
            self.rollout_index += 1
            self.updates_left = self.cfg.rl.updates
            self.history.append({"rollouts": self.rollout_index, **stats})
        self.updates_left -= 1
        return self.batch

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self, loop, state, step: int, final: bool) -> dict:
        """Held-out pass@1 (and pass@k) every `eval.every` steps, at the end, and at step 0 (the
        parent's policy, before the first update: the curves' starting point; the loop asks for
        step 0 once, on a fresh start, never on resume)."""
        cfg = self.cfg
        if not (step == 0 or loop.due(step, cfg.eval.every) or final):
            return {}
        limit = (cfg.eval.final_limit or cfg.eval.limit) if final else cfg.eval.limit
        params = loop.compiled.host_params(state)
        out, shown = evaluate_tasks(params, cfg.model, self.tokenizer, self.eval_tasks,
                                    limit=limit, batch_size=cfg.eval.batch_size,
                                    max_new_tokens=cfg.eval.max_new_tokens,
                                    samples=cfg.eval.samples,
                                    progress=loop.progress, engine=self._engine(params),
                                    lengths=True, score=self.score)
        if cfg.rl.pass_k > 1 and (step == 0 or final):    # k samples a problem: the ends only
            for name in self.eval_tasks:
                out[f"eval/{name}_pass@{cfg.rl.pass_k}"] = pass_at_k(
                    self._engine(params), self.tokenizer, task_lib.get(name),
                    limit=min(limit, 64), k=cfg.rl.pass_k, temperature=cfg.rl.temperature,
                    batch_size=cfg.eval.batch_size)
        loop.writer.write_records("eval_samples", step, shown)
        if final:
            self.samples = shown
        self.history.append({"step": step, **out})
        return out

    def finish(self, loop, state) -> dict:
        path = os.path.join(loop.run_dir, "rl_curves.png")
        plot_rl_curves(os.path.join(loop.run_dir, "metrics.jsonl"), path, self.eval_tasks)
        if self.samples:
            write_samples(loop.run_dir, self.samples)
        return {"rl_curves": path}
