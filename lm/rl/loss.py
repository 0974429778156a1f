"""GRPO's maths: group-relative advantages and the policy loss with every variant the field uses.

    advantages(rewards_PG, std_norm, eps)            (r - mean_g) [/ (std_g + eps)], per group
    policy_loss(logp, old_logp, ref_logp, adv, mask, entropy, cfg) -> (loss, metrics)
    denominator(mask, aggregation, max_new_tokens)   what the aggregation divides by
    preference_loss(logp, ref_logp, tokens, beta, kind)   DPO / IPO over (chosen, rejected) pairs
    reward_model_loss(rewards)                       Bradley-Terry over (chosen, rejected) pairs

Per token t of a response (mask 1: a token the model sampled; prompts, padding and the engine's
forced tool outputs are 0):
    ratio = exp(logp - old_logp)                     (1 on-policy; old_logp has no gradient)
    pg    = max(-A · ratio, -A · clip(ratio, 1 - ε, 1 + ε_high))          PPO / GRPO / DAPO
    kl    = exp(d) - d - 1 with d = ref - logp ("k3"), or logp - ref ("kl"); 0 without a penalty
    loss_t = pg + β · kl            (the logged `kl` is always the k3 estimate, penalty or not)
aggregated as `token_mean` (Σ loss·mask / Σ mask over the batch: DAPO), `seq_mean_token_mean`
(mean over sequences of each one's token mean: GRPO), or `seq_mean_token_scale` (Σ loss·mask /
(rows · max_new_tokens): Dr. GRPO's constant length). nanochat's chat_rl is the setting
std_norm=False, kl=none, updates=1 (ratio 1, nothing clipped): plain on-policy REINFORCE with a
group-mean baseline.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lm.config import RLConfig

Array = jax.Array


def zero_variance(rewards_PG: np.ndarray) -> np.ndarray:
    """[P] flags: the groups whose rewards are all equal (they teach nothing)."""
    r = np.asarray(rewards_PG, np.float64)
    return np.all(r == r[:, :1], axis=1)


def advantages(rewards_PG: np.ndarray, std_norm: bool, eps: float = 1e-6
               ) -> tuple[np.ndarray, np.ndarray]:
    """(advantages [P, G], zero-variance group flags [P]). A group whose rewards are all equal
    gets advantage 0 everywhere: it teaches nothing."""
    r = np.asarray(rewards_PG, np.float64)
    centred = r - r.mean(axis=1, keepdims=True)
    if std_norm:
        centred = centred / (r.std(axis=1, keepdims=True) + eps)
    zero = zero_variance(r)
    centred[zero] = 0.0
    return centred.astype(np.float32), zero


def denominator(mask_BT, aggregation: str, max_new_tokens: int, xp=np):
    """What the aggregation divides the summed loss by, over the rows of `mask_BT`: trained
    tokens (`token_mean`), rows with a trained token (`seq_mean_token_mean`, after each row's
    token mean), or rows × max_new_tokens (`seq_mean_token_scale`). Computed once over a whole
    rollout batch, it lets a step train only the rows that carry a gradient and normalise as
    the whole batch would (`lm.stages.grpo.train_rows`)."""
    if aggregation == "token_mean":
        return xp.maximum(mask_BT.sum(), 1.0)
    if aggregation == "seq_mean_token_mean":
        return xp.maximum((mask_BT.sum(axis=1) > 0).sum(), 1)
    return mask_BT.shape[0] * max_new_tokens


def policy_loss(logp_BT: Array, old_logp_BT: Optional[Array], ref_logp_BT: Array, adv_B: Array,
                mask_BT: Array, entropy_BT: Array, rl: RLConfig,
                denom: Optional[Array] = None) -> tuple[Array, dict]:
    """(loss, metrics) of the rows given. old_logp None: the policy that sampled them is this one
    (one update per rollout batch), so the ratio is exactly 1 and no extra forward pass is needed.
    denom: the aggregation's divisor for these rows (`denominator` of the whole batch, over the
    pieces the step averages); None: `denominator` of these rows."""
    m = mask_BT.astype(jnp.float32)
    A = adv_B.astype(jnp.float32)[:, None]
    if old_logp_BT is None:
        old_logp_BT = logp_BT
    ratio = jnp.exp(logp_BT - jax.lax.stop_gradient(old_logp_BT))
    lo, hi = 1.0 - rl.clip_eps, 1.0 + (rl.clip_eps_high or rl.clip_eps)
    clipped = jnp.clip(ratio, lo, hi)
    pg = jnp.maximum(-A * ratio, -A * clipped)
    d = jax.lax.stop_gradient(ref_logp_BT) - logp_BT
    k3 = jnp.exp(d) - d - 1.0
    per_token = pg
    if rl.kl == "k3":
        per_token = pg + rl.beta * k3
    elif rl.kl == "kl":
        per_token = pg + rl.beta * (-d)
    n = jnp.maximum(m.sum(), 1.0)
    if rl.aggregation == "seq_mean_token_mean":
        total = ((per_token * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)).sum()
    else:   # token_mean (DAPO), seq_mean_token_scale (Dr. GRPO)
        total = (per_token * m).sum()
    if denom is None:
        denom = denominator(m, rl.aggregation, rl.max_new_tokens, jnp)
    loss = total / denom
    # diagnostics, over the trained tokens
    engaged = ((ratio < lo) & (A < 0)) | ((ratio > hi) & (A > 0))
    mean = lambda x: (x * m).sum() / n
    metrics = {"loss": loss, "pg_loss": mean(pg), "kl": mean(jax.lax.stop_gradient(k3)),
               "clip_frac": mean(engaged.astype(jnp.float32)), "ratio": mean(ratio),
               "entropy": mean(entropy_BT), "tokens": m.sum()}
    return loss, metrics


def preference_loss(logp_2B: Array, ref_logp_2B: Array, tokens_2B: Array, beta: float,
                    kind: str = "sigmoid") -> tuple[Array, dict]:
    """DPO (`sigmoid`: -log σ(β·Δ), Rafailov et al. 2023) or IPO (`ipo`: (Δ/len - 1/(2β))², the
    log-ratios averaged per reply token as trl does) over pairs; rows alternate chosen,
    rejected (`lm.data.preferences.to_rows`: any even split of the rows keeps pairs whole).
    logp / ref_logp: each reply's summed log-prob under the policy and the frozen reference;
    Δ = (chosen − ref) − (rejected − ref).
    Metrics: the implied rewards β·(logp − ref) of both sides, their margin, and the share of
    pairs the policy ranks right."""
    ratio = logp_2B - ref_logp_2B
    if kind == "ipo":
        ratio = ratio / jnp.maximum(tokens_2B, 1.0)
    chosen, rejected = ratio[0::2], ratio[1::2]
    delta = chosen - rejected
    if kind == "sigmoid":
        per_pair = -jax.nn.log_sigmoid(beta * delta)
    elif kind == "ipo":
        per_pair = (delta - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"preference loss {kind!r}: known sigmoid, ipo")
    loss = jnp.mean(per_pair)
    r_c, r_r = jax.lax.stop_gradient(beta * chosen), jax.lax.stop_gradient(beta * rejected)
    return loss, {"loss": loss, "pref/accuracy": jnp.mean((r_c > r_r).astype(jnp.float32)),
                  "pref/margin": jnp.mean(r_c - r_r), "pref/chosen_reward": jnp.mean(r_c),
                  "pref/rejected_reward": jnp.mean(r_r)}


def reward_model_loss(rewards_2B: Array) -> tuple[Array, dict]:
    """Bradley-Terry: -log σ(r_chosen - r_rejected), rows alternating chosen, rejected (as
    trl's RewardTrainer without a margin). Metrics: the share of pairs ranked right, the mean
    margin and the mean reward."""
    chosen, rejected = rewards_2B[0::2], rewards_2B[1::2]
    loss = jnp.mean(-jax.nn.log_sigmoid(chosen - rejected))
    sg = jax.lax.stop_gradient
    return loss, {"loss": loss,
                  "rm/accuracy": jnp.mean((sg(chosen) > sg(rejected)).astype(jnp.float32)),
                  "rm/margin": jnp.mean(sg(chosen - rejected)),
                  "rm/reward": jnp.mean(sg(rewards_2B))}
