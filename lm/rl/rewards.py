"""Reward functions, registered by name and composed with weights (`rl.rewards="correct:1,format:0.1"`).

A reward function takes (task, conversation, reply) — reply is a dict with `text` (the reply in
`reply_text` form), `format_ok` (ended with `<|assistant_end|>` in budget), `tokens` — and returns
a float. One that raises gives 0 for that sample and is counted (`errors`); it never stops the
loop.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm import model, paths, runs
from lm import conversation as chat
from lm.config import Config, ConfigError, parse_weights
from lm.rl import labeller
from lm.tasks.base import final_number
from lm.sampling import bucket

RewardFn = Callable[[object, dict, dict], float]
REWARDS: dict[str, RewardFn] = {}


def register(name: str):
    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} registered twice")
        REWARDS[name] = fn
        return fn
    return deco


@register("correct")
def correct(task, conv: dict, reply: dict) -> float:
    """The task's own grade of the reply: its `reward` (1.0 when `evaluate` says correct)."""
    return float(task.reward(conv, reply["text"]))


@register("format")
def format_kept(task, conv: dict, reply: dict) -> float:
    """1.0 when the reply ends with <|assistant_end|> within its budget."""
    return 1.0 if reply["format_ok"] else 0.0


@register("answer_marker")
def answer_marker(task, conv: dict, reply: dict) -> float:
    """1.0 when the reply states a final answer (`#### N`), right or wrong."""
    return 1.0 if final_number(reply["text"]) is not None else 0.0


@register("model")
def model_score(task, conv: dict, reply: dict) -> float:
    """A reward model's score of the conversation with the reply (`rl.reward_model`: an `rm`
    run), computed for the whole rollout batch in one forward pass before the rewards
    (`RewardModelScorer`)."""
    return float(reply["model_score"])


class RewardModelScorer:
    """An `rm` run scoring rollouts: the reward at each sequence's last token, one jitted forward
    pass per batch. Its tokenizer must be the policy's (the token ids are shared)."""

    def __init__(self, run, policy_tokenizer, policy_name: str = "the policy"):
        if run.config.model.head != "score":
            raise ConfigError(f"rl.reward_model={run.run_dir}: a {run.config.stage!r} run, not a "
                              f"reward model (stage rm, model.head=score)")
        if run.tokenizer.to_dict() != policy_tokenizer.to_dict():
            raise ConfigError(f"rl.reward_model={run.run_dir}: its tokenizer differs from "
                              f"{policy_name}'s; a reward model scores the policy's token ids, "
                              f"so both must come from the same tokenizer")
        self.run = run
        cfg = run.config.model
        self._fn = jax.jit(lambda p, x: model.apply(p, cfg, x))

    def __call__(self, sequences: list[list[int]]) -> np.ndarray:
        """The reward of each token sequence (read at its last token), float32 [N]."""
        n = max(map(len, sequences))
        T = max(n, min(bucket(n), self.run.config.model.block_size))   # few compiled shapes
        x = np.zeros((len(sequences), T), np.int32)
        for i, s in enumerate(sequences):
            x[i, :len(s)] = s
        r = np.asarray(self._fn(self.run.params, jnp.asarray(x)))
        return r[np.arange(len(sequences)), [len(s) - 1 for s in sequences]].astype(np.float32)


def reward_model(cfg: Config, policy_tokenizer) -> RewardModelScorer:
    """The scorer of `rl.reward_model` (an `rm` run: a path or an experiment's latest run)."""
    if not cfg.rl.reward_model:
        raise ConfigError("the `model` reward needs rl.reward_model: an rm run")
    try:
        rm = runs.load(cfg.rl.reward_model, workdir=paths.workdir())
    except runs.RunError as e:
        raise ConfigError(f"rl.reward_model: {e}") from None
    return RewardModelScorer(rm, policy_tokenizer, f"init_from={cfg.init_from}")


def parse(spec: str, key: str = "rl.rewards") -> dict[str, float]:
    """'name:weight,...' -> {name: weight}, validated against the registry (ConfigError)."""
    out = parse_weights(spec, REWARDS, key=key, kind="reward")
    if not out:
        raise ConfigError(f"{key}: no reward given")
    return out


@register("labeller")
def labeller_reward(task, conv: dict, reply: dict) -> float:
    """The synthetic labeller's true reward (`lm.rl.labeller`): with weight 0 it is logged
    (`rl/reward/labeller`) beside a reward model's score without steering the policy."""
    return labeller.true_reward(task, conv, reply["text"])


class Composite:
    """Σ weight · reward over the registered functions (weight 0: computed and logged only);
    counts the calls that raised."""

    def __init__(self, spec: str | dict[str, float], key: str = "rl.rewards"):
        self.weights = parse(spec, key) if isinstance(spec, str) else dict(spec)
        self.errors = 0

    def each(self, task, conv: dict, reply: dict) -> dict[str, float]:
        """Every reward's own value (0 for one that raised, counted)."""
        out = {}
        for name in self.weights:
            try:
                out[name] = float(REWARDS[name](task, conv, reply))
            except Exception:  # noqa: BLE001 - a broken reward is a zero, counted, not a crash
                self.errors += 1
                out[name] = 0.0
        return out

    def total(self, values: dict[str, float]) -> float:
        return sum(self.weights[k] * v for k, v in values.items())

    def __call__(self, task, conv: dict, reply: dict) -> float:
        return self.total(self.each(task, conv, reply))


class HeldOutRewards:
    """`eval.rewards` measured on a chat stage's held-out replies (`lm.eval.chat.evaluate_tasks`'s
    `score`): each named reward of each reply, e.g. a reward model's score beside the labeller's
    true reward of the same greedy replies, so the gap between them is seen on prompts the policy
    never practised on. `model` needs `rl.reward_model` (or the stage's own scorer)."""

    def __init__(self, cfg: Config, tokenizer, scorer: Optional[RewardModelScorer] = None):
        self.reward = Composite({k: 1.0 for k in parse(cfg.eval.rewards, "eval.rewards")})
        self.tokenizer = tokenizer
        self.scorer = scorer
        if "model" in self.reward.weights and scorer is None:
            self.scorer = reward_model(cfg, tokenizer)

    def __call__(self, task, convs: Sequence[dict], replies: Sequence[dict]) -> dict[str, list]:
        """{reward name: [value per reply]} for replies (generate_replies' dicts) to convs."""
        if self.scorer is not None:
            seqs = [chat.render_for_completion(c, self.tokenizer) + list(r["tokens"])
                    for c, r in zip(convs, replies)]
            for r, s in zip(replies, self.scorer(seqs)):
                r["model_score"] = float(s)
        out: dict[str, list] = {name: [] for name in self.reward.weights}
        for c, r in zip(convs, replies):
            for name, v in self.reward.each(task, c, r).items():
                out[name].append(v)
        return out
