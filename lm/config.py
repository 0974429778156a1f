"""Typed dataclass configs for every part of a run, dotted overrides, and validation.

An experiment is one `Config`. `apply_overrides(cfg, ["train.steps=100", "model.n_layer=2"])`
parses each value with the field's declared type; an unknown key, a wrong type or a value outside
a field's allowed set raises `ConfigError` naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import jax.numpy as jnp


class ConfigError(ValueError):
    pass


def num(default, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
        also: tuple = ()):
    """A numeric field with its allowed range, checked by `check_ranges` (None bounds: open).

    `also`: extra allowed values outside the range (e.g. -1 = "all"). None is allowed when the
    field's type is Optional.
    """
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open, tuple(also))})


def _range_text(lo, hi, lo_open, hi_open, also) -> str:
    parts = []
    if lo is not None and hi is not None:
        parts.append(f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
    elif lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    elif hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    parts += [repr(a) for a in also]
    return " or ".join(parts)


def check_ranges(obj, prefix: str) -> None:
    """Every `num(...)` field of dataclass `obj` within its range, else ConfigError naming it."""
    for f in dataclasses.fields(obj):
        spec = f.metadata.get("range")
        if spec is None:
            continue
        v = getattr(obj, f.name)
        lo, hi, lo_open, hi_open, also = spec
        if v is None or v in also:
            continue
        ok = ((lo is None or (v > lo if lo_open else v >= lo))
              and (hi is None or (v < hi if hi_open else v <= hi)))
        if not ok or (isinstance(v, float) and not math.isfinite(v)):
            raise ConfigError(f"{prefix}.{f.name} must be {_range_text(*spec)}, got {v!r}")


def parse_weights(spec: str, known, *, key: str, kind: str = "task") -> dict[str, float]:
    """'name:weight,name:weight' (a bare name weighs 1) -> {name: weight}, every name in `known`
    (a `kind`: task, reward) and every weight a number >= 0, else ConfigError naming `key`."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, w = item.partition(":")
        name = name.strip()
        if name not in known:
            raise ConfigError(f"{key}: unknown {kind} {name!r}; known: {sorted(known)}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ConfigError(f"{key}: weight of {name!r} must be a number, got {w!r}") from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise ConfigError(f"{key}: weight of {name!r} must be a finite number >= 0, got {w!r}")
        out[name] = weight
    return out


@dataclass(unsafe_hash=True)
class ModelConfig:
    """One config for both families: GPT-2 exactly, and the modern options.

    Hashable (by value) so it can be a static argument of jitted functions; don't mutate one
    after handing it to jit.
    """
    vocab_size: int = num(65, 1)
    block_size: int = num(64, 1)         # max sequence length (learned positions / RoPE table size)
    n_layer: int = num(4, 1)
    n_head: int = num(4, 1)
    n_embd: int = num(128, 1)
    n_kv_head: Optional[int] = num(None, 1)  # grouped-query attention; None = n_head
    mlp: Literal["gelu", "relu2", "swiglu"] = "gelu"
    mlp_hidden: Optional[int] = num(None, 1)  # None: 4*n_embd (gelu/relu2), 8/3*n_embd rounded to 64 (swiglu)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = num(1e-5, 0, lo_open=True)
    pos: Literal["learned", "rope"] = "learned"
    rope_theta: float = num(10000.0, 0, lo_open=True)
    qk_norm: bool = False
    # a learned gain per head channel after the QK-norm (Qwen3's q_norm/k_norm). Without it a
    # normed query·key is at most head_dim, so the attention logits are bounded by sqrt(head_dim)
    # (8 at head_dim 64) and a head cannot attend sharply to one earlier token (docs/context.md)
    qk_norm_scale: bool = False
    bias: bool = True
    tie_embeddings: bool = True
    logit_softcap: float = num(0.0, 0)   # 0 = off; else logits = c*tanh(logits/c)
    dropout: float = num(0.0, 0, 1, hi_open=True)
    # compute dtype; parameters stay float32. auto: bfloat16 on a CPU host with lm's bf16 kernels
    # (lm.kernels.bf16_kernels_expected), float32 elsewhere; decided at the entry points
    # (lm.process.resolve), so a saved config.json holds the dtype the run used
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    init_std: float = num(0.02, 0, lo_open=True)
    remat: bool = False                  # recompute each block in the backward pass
    # backend kernels (lm/kernels.py): auto = XLA:CPU layouts on CPU, plain JAX elsewhere
    kernels: Literal["auto", "plain", "xla_cpu", "onednn"] = "auto"
    # the output: next-token logits ("lm"), or one scalar per position ("score": a reward model,
    # read at a reply's last token; HF's *ForSequenceClassification with one label)
    head: Literal["lm", "score"] = "lm"

    @property
    def compute_dtype(self):
        """The dtype activations are computed in (the KV cache stores them as
        `lm.kvcache.storage_dtype` says)."""
        if self.dtype == "auto":
            raise ConfigError("model.dtype='auto' is decided for the host at the entry point "
                              "(lm.process.resolve(cfg)) before a model is built")
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return int(math.ceil(8 * self.n_embd / 3 / 64) * 64)
        return 4 * self.n_embd

    def validate(self, prefix: str = "model") -> None:
        check_ranges(self, prefix)
        if self.n_embd % self.n_head:
            raise ConfigError(f"{prefix}.n_embd ({self.n_embd}) must be divisible by "
                              f"{prefix}.n_head ({self.n_head})")
        if self.qk_norm_scale and not self.qk_norm:
            raise ConfigError(f"{prefix}.qk_norm_scale=true needs {prefix}.qk_norm=true")
        if self.n_head % self.kv_heads:
            raise ConfigError(f"{prefix}.n_head ({self.n_head}) must be divisible by "
                              f"{prefix}.n_kv_head ({self.kv_heads})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"{prefix}: RoPE needs an even head_dim, got {self.head_dim}")


def gpt2_preset(name: str) -> ModelConfig:
    """GPT-2 family with its published shapes (vocab 50257, context 1024)."""
    shapes = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
              "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}
    if name not in shapes:
        raise ConfigError(f"unknown GPT-2 preset {name!r}; known: {sorted(shapes)}")
    n_layer, n_head, n_embd = shapes[name]
    return ModelConfig(vocab_size=50257, block_size=1024, n_layer=n_layer, n_head=n_head,
                       n_embd=n_embd)


def modern(**kw) -> ModelConfig:
    """The modern family: RoPE, RMSNorm, QK-norm, ReLU², untied, no biases, logit soft-cap."""
    base = dict(pos="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", bias=False,
                tie_embeddings=False, logit_softcap=15.0, norm_eps=1e-6)
    base.update(kw)
    return ModelConfig(**base)


def depth_preset(depth: int, *, vocab_size: int = 65536, block_size: int = 2048,
                 aspect: int = 64, head_dim: int = 128, **kw) -> ModelConfig:
    """`d{N}` scaling dial (nanochat-style): width = 64·depth, heads = width/128 (at least 1)."""
    n_embd = depth * aspect
    n_head = max(1, (n_embd + head_dim - 1) // head_dim)
    while n_embd % n_head:
        n_head += 1
    return modern(vocab_size=vocab_size, block_size=block_size, n_layer=depth, n_head=n_head,
                  n_embd=n_embd, **kw)


def model_preset(name: str) -> ModelConfig:
    if name.startswith("gpt2"):
        return gpt2_preset(name)
    if name.startswith("d") and name[1:].isdigit():
        return depth_preset(int(name[1:]))
    raise ConfigError(f"unknown model preset {name!r}; known: gpt2, gpt2-medium, gpt2-large, "
                      f"gpt2-xl, d<N> (e.g. d12)")


@dataclass
class DataConfig:
    source: str = "tinyshakespeare"       # a name in lm.data.pipeline.SOURCES
    tokenizer: str = "char"               # 'char', 'gpt2', or a path to a saved tokenizer artifact
    # the corpus a 'bpe:N' tokenizer is trained on ('' = data.source): a warm-up on another
    # mixture shares the chain's tokenizer
    tokenizer_source: str = ""
    train_split: float = num(0.9, 0, 1, lo_open=True, hi_open=True)  # first fraction of the token stream for training
    seq_len: int = num(64, 1)             # tokens per row (targets are the next tokens)
    batch_size: int = num(12, 1)          # global batch (rows per optimizer step)
    sampling: Literal["random", "sequential"] = "random"   # nanoGPT random windows, or strided
    segment_on_bos: bool = False          # packed documents: no attention across BOS boundaries
    shards: str = ""                      # glob of token shards (source='shards')
    val_shards: str = ""                  # glob of held-out shards ('' = the stream's last part)
    seed: int = num(1337, 0)
    # 'files': read the sources directly; 'tfds': through their TFDS builds (lm_text,
    # lm_token_shards, lm_chat_tasks; built on first use under lm.paths.tfds_dir()), same batches
    reader: Literal["files", "tfds"] = "files"
    tfds_examples: int = num(100_000, 1)  # a generated chat task's training conversations (tfds)


@dataclass
class OptimConfig:
    lr: float = num(1e-3, 0)
    min_lr: float = num(1e-4, 0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = num(100, 0)
    decay_steps: int = num(0, 0)          # wsd: length of the final decay; 0 = 20% of steps
    b1: float = num(0.9, 0, 1, hi_open=True)
    b2: float = num(0.99, 0, 1, hi_open=True)
    eps: float = num(1e-8, 0, lo_open=True)
    weight_decay: float = num(0.1, 0)
    decay_embeddings: bool = False        # apply weight decay to embeddings too
    grad_clip: float = num(1.0, 0)        # 0 = off
    z_loss: float = num(0.0, 0)           # coefficient of log(Z)^2


@dataclass
class MeshConfig:
    # auto: jit, except on a CPU whose bf16 step runs through oneDNN in products too small to
    # spread over the cores (the main job's): pmap, one device per core (lm.process.resolve)
    parallelism: Literal["auto", "jit", "pmap"] = "auto"
    data: int = num(-1, 1, also=(-1,))    # devices along 'data'; -1 = all that fsdp leaves
    fsdp: int = num(1, 1)                 # devices along 'fsdp' (parameters sharded)
    # CPU hosts only: split the cores into this many XLA devices, data-parallel over them
    # (lm.parallel.configure_cpu_devices). 0 = auto: the most, up to the core count, that divide
    # the per-step batch; 1 = one device using every core through XLA's intra-op threads.
    cpu_devices: int = num(0, 0)


@dataclass
class TrainConfig:
    steps: int = num(2000, 1)
    grad_accum: int = num(1, 1)
    eval_every: int = num(250, 1)
    eval_batches: int = num(200, 1)       # nanoGPT's eval_iters
    # batches for the evaluations before the last one (0 or more than eval_batches: all of
    # them); the final val_loss is always over eval_batches, the interim ones over its first ones
    interim_eval_batches: int = num(0, 0)
    log_every: int = num(10, 1)
    seed: int = num(1337, 0)
    sample_tokens: int = num(300, 0)      # text sample at the end (0 = none)
    sample_prompt: str = "\n"
    time_limit_s: float = num(0.0, 0)     # end training after this long (0 = off); the final
                                          # evaluation still runs (equal-wall-time ablations)


@dataclass
class CheckpointConfig:
    every: int = num(1000, 0)             # save every N steps (0: only at the end)
    keep: int = num(3, 1)
    dir: str = ""                         # '' = <run dir>/checkpoints; or a path / gs:// bucket


@dataclass
class SFTConfig:
    """Supervised fine-tuning (stage `sft`): a weighted task mixture packed best-fit into rows."""
    mixture: str = ("identity:1,arithmetic_easy:2,spelling:1.5,gsm8k:1,mmlu:0.2,dolly:0.5,"
                    "alpaca:0.5")                  # task:weight,... (lm.tasks names; the sft
                                                   # stage checks them)
    buffer: int = num(64, 1)              # conversations in the best-fit buffer
    keep_optimizer: bool = False          # keep the parent's Adam moments (else start fresh)
    val_rows: int = num(32, 0)            # packed held-out rows for the validation loss
    # conversation files named as tasks for the mixture: "name=path,..." (JSONL, one
    # conversation per line, e.g. tools.distill's output; a relative path is from the workdir)
    files: str = ""


@dataclass
class EvalConfig:
    """Held-out task evaluations through the engine (greedy, tools on) during and after a run."""
    tasks: str = ""                       # comma list ('' = none): lm.tasks names (chat stages),
                                          # likelihood benchmarks and probes (pretraining);
                                          # the stage checks them
    every: int = num(0, 0)                # steps between task evaluations (0: only at the end)
    limit: int = num(64, 1)               # examples per task during training
    final_limit: int = num(0, 0)          # examples per task at the end (0: `limit`)
    batch_size: int = num(64, 1)          # prompts per engine call
    max_new_tokens: int = num(0, 0)       # reply budget (0: each task's own)
    samples: int = num(6, 0)              # sample conversations written to the run directory
    rewards: str = ""                     # lm.rl.rewards names scored on the held-out greedy
                                          # replies (eval/reward/<name>; stages that reply),
                                          # "model,labeller": a reward model beside the truth


@dataclass
class RLConfig:
    """GRPO-style RL (stage `grpo`) against verifiable rewards; every variant is a setting."""
    task: str = "arithmetic_easy"         # the lm.tasks task whose `split` gives the prompts,
                                          # or a mixture "name:weight,name:weight"
    split: str = "train"                  # arithmetic keeps "rl": phrasings neither SFT nor eval use
    rewards: str = "correct:1"            # reward:weight,... (lm.rl.rewards names; weight 0:
                                          # logged as rl/reward/<name>, not optimised)
    reward_model: str = ""                # the `rm` run the `model` reward reads (its score of the
                                          # conversation with each rollout, one forward per batch)
    prompts: int = num(16, 1)             # P prompts per rollout batch
    samples: int = num(8, 1)              # G samples per prompt (the group)
    temperature: float = num(1.0, 0, lo_open=True)
    top_k: int = num(0, 0)
    top_p: float = num(1.0, 0, 1, lo_open=True)
    max_new_tokens: int = num(160, 1)
    updates: int = num(1, 1)              # optimizer steps per rollout batch (>1: ratio + clip)
    std_norm: bool = True                 # advantages (r - mean) / (std + adv_eps), else r - mean
    adv_eps: float = num(1e-6, 0)
    clip_eps: float = num(0.2, 0)         # PPO clip: ratio in [1 - clip_eps, 1 + clip_eps_high]
    clip_eps_high: float = num(0.0, 0)    # 0: = clip_eps (DAPO uses 0.28)
    kl: Literal["none", "k3", "kl"] = "none"   # penalty to the frozen reference (the parent)
    beta: float = num(0.04, 0)            # KL coefficient
    aggregation: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_scale"] = \
        "seq_mean_token_mean"             # DAPO, GRPO, Dr. GRPO (divides by max_new_tokens)
    pass_k: int = num(8, 1)               # held-out pass@k at each evaluation
    dynamic_sampling: int = num(0, 0, 64)  # DAPO's dynamic sampling: up to this many more batches
                                          # of P prompts a step, whose groups with unequal
                                          # rewards replace groups that teach nothing (0: off)
    trim: bool = True                     # a step trains only the rows with a gradient, cut to
                                          # their length: the same gradient, a fraction of the
                                          # compute (false: the whole padded batch)


@dataclass
class PrefConfig:
    """Preference stages (`dpo`, `rm`): pairs of replies, one preferred (`lm.data.preferences`);
    dpo trains against the frozen parent as the reference policy."""
    data: str = "hh_rlhf"                 # hh_rlhf[:<subset>+...], labeller:<task>+..., jsonl:<path>
    beta: float = num(0.1, 0, lo_open=True)   # DPO's beta (trl's default 0.1)
    loss: Literal["sigmoid", "ipo"] = "sigmoid"   # DPO (Rafailov et al.) or IPO (Azar et al.;
                                          # log-ratios averaged per reply token, as trl does)
    val_pairs: int = num(256, 0)          # held-out pairs for the evaluation's accuracy/margin
    pairs: int = num(4000, 1)             # labeller: pairs drawn (train + held out)
    noise: float = num(0.1, 0, 0.5)       # labeller: the chance a label is flipped


STAGES = ("pretrain", "sft", "grpo", "dpo", "rm")


@dataclass
class Config:
    name: str = "unnamed"
    description: str = ""
    stage: Literal["pretrain", "sft", "grpo", "dpo", "rm"] = "pretrain"
    init_from: str = ""                   # parent run: run dir, checkpoint dir, or experiment name
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    pref: PrefConfig = field(default_factory=PrefConfig)

    def validate(self) -> "Config":
        self.model.validate()
        for name in ("data", "optim", "mesh", "train", "checkpoint", "sft", "eval", "rl", "pref"):
            check_ranges(getattr(self, name), name)
        if self.data.seq_len > self.model.block_size:
            raise ConfigError(f"data.seq_len ({self.data.seq_len}) exceeds model.block_size "
                              f"({self.model.block_size})")
        if self.data.batch_size % self.train.grad_accum:
            raise ConfigError(f"data.batch_size ({self.data.batch_size}) must be divisible by "
                              f"train.grad_accum ({self.train.grad_accum})")
        if self.optim.min_lr > self.optim.lr:
            raise ConfigError(f"optim.min_lr ({self.optim.min_lr}) exceeds optim.lr "
                              f"({self.optim.lr})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ---------------------------------------------------------------------------------------------
# Overrides

def _fields(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _parse(key: str, raw: Any, tp: Any) -> Any:
    """Parse `raw` (string from the CLI, or a Python value) as type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _parse(key, raw, inner[0])
    if origin is Literal:
        if raw not in args:
            raise ConfigError(f"{key}: {raw!r} is not allowed; choose one of {list(args)}")
        return raw
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a bool (true/false), got {raw!r}")
    if tp is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected an int, got {raw!r}")
        try:
            if isinstance(raw, str):
                v = float(raw.replace("_", ""))
                if v != int(v):
                    raise ValueError
                return int(v)
            if isinstance(raw, float) and raw != int(raw):
                raise ValueError
            return int(raw)
        except (ValueError, TypeError):
            raise ConfigError(f"{key}: expected an int, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except (ValueError, TypeError):
            raise ConfigError(f"{key}: expected a float, got {raw!r}") from None
    if tp is str:
        return str(raw)
    raise ConfigError(f"{key}: cannot override a field of type {tp}")


def set_value(cfg: Config, key: str, raw: Any) -> None:
    """Set dotted `key` (e.g. 'model.n_layer') on `cfg`, parsing `raw` with the field's type."""
    parts = key.split(".")
    obj = cfg
    hints_owner = cfg
    for i, part in enumerate(parts):
        fields = _fields(obj)
        where = ".".join(parts[:i]) or "<top level>"
        if part not in fields:
            raise ConfigError(f"unknown config key {key!r}: {where} has no {part!r}; "
                              f"valid keys there: {sorted(fields)}")
        hints = typing.get_type_hints(type(hints_owner))
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{key!r} is a section; set one of its keys: "
                                  f"{sorted(_fields(getattr(obj, part)))}")
            setattr(obj, part, _parse(key, raw, hints[part]))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} is "
                                  f"not a section")
            hints_owner = obj


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply 'key=value' strings in order; `model.preset=NAME` first replaces the model config."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like key=value")
        key, raw = ov.split("=", 1)
        key = key.strip()
        if key == "model.preset":
            cfg.model = model_preset(raw.strip())
            continue
        set_value(cfg, key, raw.strip())
    return cfg.validate()


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `to_dict()` output (e.g. a run's saved config.json)."""
    cfg = Config()
    for section, values in d.items():
        if isinstance(values, dict):
            for k, v in values.items():
                set_value(cfg, f"{section}.{k}", v)
        else:
            set_value(cfg, section, values)
    return cfg.validate()
