"""Loading a trained run — config, parameters, tokenizer, stage — in one place. Used by the chat
CLI, SFT/RL initialisation (`init_from`), evaluation, the report card and the server.

A run directory (`runs/<experiment>/<timestamp>/`) is self-contained:

    config.json      the resolved Config (its `stage`, model shape, ...)
    tokenizer.json   the tokenizer artifact (`lm.tokenizer.load_tokenizer`)
    lineage.json     the parent run this one started from (init_from), if any
    checkpoints/     orbax step folders (`lm.checkpoint`)

`resolve(spec)` accepts a run directory, a checkpoint directory (or one step folder inside it),
or the name of a registered experiment: its latest *finished* run (`unfinished`), so that a run
still training, or stopped half way, is never taken for the experiment's result by a later stage,
an evaluation or the server. A run directory given by path is used as it stands.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp

import experiments
from lm import model
from lm.checkpoint import CheckpointManager, has_checkpoint, saved_steps
from lm.config import Config, from_dict
from lm.data import pipeline
from lm.data.sources import DataUnavailableError
from lm.optim import make_optimizer
from lm.state import checkpoint_target, init_state
from lm.tokenizer import Tokenizer, load_tokenizer as load_artifact


class RunError(ValueError):
    """A run that cannot be found or used (the message names it and what is wrong)."""


@dataclasses.dataclass
class RunRef:
    """Where a run lives: its directory, its checkpoint directory, and an explicit step (or None
    for the latest)."""
    run_dir: str
    ckpt_dir: str
    step: Optional[int] = None


@dataclasses.dataclass
class Run:
    ref: RunRef
    config: Config
    tokenizer: Tokenizer
    params: Any
    step: int

    @property
    def run_dir(self) -> str:
        return self.ref.run_dir

    @property
    def stage(self) -> str:
        return self.config.stage


def checkpoint_dir(run_dir: str, cfg: Optional[Config] = None) -> str:
    """Where a run's checkpoints live: `<run dir>/checkpoints`, or, with `checkpoint.dir` set (a
    path or a gs:// bucket), `<checkpoint.dir>/<experiment>/<timestamp>`."""
    if cfg is None:
        path = os.path.join(run_dir, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            cfg_dir, name = saved.get("checkpoint", {}).get("dir", ""), saved.get("name", "")
        else:
            cfg_dir, name = "", ""
    else:
        cfg_dir, name = cfg.checkpoint.dir, cfg.name
    if not cfg_dir:
        return os.path.join(run_dir, "checkpoints")
    return "/".join([cfg_dir.rstrip("/"), name, os.path.basename(os.path.normpath(run_dir))])


def latest_run(experiment: str, workdir: Optional[str] = None,
               cfg: Optional[Config] = None) -> Optional[str]:
    """The newest `runs/<experiment>/<timestamp>` under `workdir` that holds a checkpoint,
    finished or not."""
    found = run_dirs(experiment, workdir, cfg)
    return found[-1] if found else None


def run_dirs(experiment: str, workdir: Optional[str] = None,
             cfg: Optional[Config] = None) -> list[str]:
    """Every `runs/<experiment>/<timestamp>` under `workdir` that holds a checkpoint, oldest
    first."""
    root = os.path.join(workdir or ".", "runs", experiment)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, d))
            and has_checkpoint(checkpoint_dir(os.path.join(root, d), cfg))]


def unfinished(run_dir: str) -> Optional[str]:
    """None when `run_dir` holds a finished run: training wrote its summary.json at its last step
    (or at its time limit), or `save_run` wrote the run whole. Otherwise why not, in words."""
    path = os.path.join(run_dir, "summary.json")
    steps = saved_steps(checkpoint_dir(run_dir))
    last = steps[-1] if steps else 0
    try:
        total = load_config(RunRef(run_dir, "")).train.steps
    except (RunError, OSError, ValueError, KeyError):
        total = None
    of = f" of {total:,}" if total else ""
    if not os.path.exists(path):
        return (f"has no summary.json: it is still training, or was killed (latest checkpoint: "
                f"step {last:,}{of})")
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        return f"has an unreadable summary.json ({e})"
    if summary.get("complete", not summary.get("interrupted", False)):   # older: no such key
        return None
    why = "was interrupted" if summary.get("interrupted") else "was stopped early"
    return f"{why} at step {summary.get('final_step', last):,}{of}"


def _latest_finished(experiment: str, workdir: Optional[str]) -> str:
    """The experiment's newest finished run; RunError naming the unfinished one if that is all
    there is (a note on stderr when a newer unfinished run is passed over)."""
    root = os.path.join(workdir or ".", "runs", experiment)
    found = run_dirs(experiment, workdir)
    if not found:
        raise RunError(f"experiment {experiment!r} has no run with a checkpoint under {root}; "
                       f"train it first: python -m lm.main --experiment {experiment}")
    why = {d: unfinished(d) for d in found}
    done = [d for d in found if why[d] is None]
    if not done:
        where = f" --workdir {workdir}" if workdir else ""
        raise RunError(f"experiment {experiment!r} has no finished run under {root}: the latest, "
                       f"{found[-1]}, {why[found[-1]]}; finish it with `python -m lm.main -e "
                       f"{experiment}{where} --resume`, or pass its directory to use it as it "
                       f"stands")
    if found[-1] != done[-1]:
        print(f"note: {experiment} -> {done[-1]}, its latest finished run; the newer "
              f"{found[-1]} {why[found[-1]]}", file=sys.stderr)
    return done[-1]


def resolve(spec: str, *, workdir: Optional[str] = None, step: Optional[int] = None) -> RunRef:
    """A RunRef from a run dir, a checkpoint dir / step folder, or an experiment name."""
    if not spec:
        raise RunError("no run given")
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "config.json")):
            return RunRef(path, checkpoint_dir(path), step)
        base = os.path.basename(path.rstrip("/"))
        if base.isdigit() and os.path.exists(os.path.join(path, "..", "..", "config.json")):
            ckpt = os.path.dirname(path)
            return RunRef(os.path.dirname(ckpt), ckpt, int(base) if step is None else step)
        if os.path.exists(os.path.join(path, "..", "config.json")):
            return RunRef(os.path.dirname(path), path, step)
        raise RunError(f"{spec}: neither a run directory (config.json + checkpoints/) nor a "
                       f"checkpoint directory of one")
    names = dict(experiments.list_experiments())
    if spec in names:
        found = _latest_finished(spec, workdir)
        return RunRef(found, checkpoint_dir(found), step)
    raise RunError(f"{spec!r} is not a run directory, a checkpoint directory, or a registered "
                   f"experiment (see python -m lm.main --list)")


def load_config(ref: RunRef) -> Config:
    path = os.path.join(ref.run_dir, "config.json")
    if not os.path.exists(path):
        raise RunError(f"no config.json in {ref.run_dir}")
    with open(path) as f:
        return from_dict(json.load(f))


def load_tokenizer(ref: RunRef, cfg: Optional[Config] = None):
    """The run's own tokenizer.json; a run written before runs saved it falls back to rebuilding
    the tokenizer from its config (which may need the training data)."""
    path = os.path.join(ref.run_dir, "tokenizer.json")
    if os.path.exists(path):
        return load_artifact(path)
    cfg = cfg or load_config(ref)
    try:
        return pipeline.build_tokenizer(cfg.data)
    except DataUnavailableError as e:
        raise RunError(f"{ref.run_dir} has no tokenizer.json (written by older versions of lm), "
                       f"and rebuilding it from the config needs the training data: {e}") from None


def abstract_params(cfg: Config):
    return jax.eval_shape(lambda: model.init(cfg.model, jax.random.key(0)))


def restore_state(ref: RunRef, target, step: Optional[int] = None):
    """(step, state, extra) of the run's checkpoint restored onto `target` (an abstract pytree
    with shardings), or RunError."""
    if not has_checkpoint(ref.ckpt_dir):
        raise RunError(f"{ref.run_dir} has no checkpoint (in {ref.ckpt_dir})")
    # every=0: never saves; a huge keep: never garbage-collects.
    with CheckpointManager(ref.ckpt_dir, every=0, keep=1 << 30) as mgr:
        try:
            out = mgr.restore(target, step if step is not None else ref.step)
        except (FileNotFoundError, RuntimeError) as e:   # no such step, or none readable
            raise RunError(f"{ref.run_dir}: {e}") from None
    if out is None:
        raise RunError(f"no checkpoint in {ref.ckpt_dir}")
    return out


def load(spec: str, *, step: Optional[int] = None, workdir: Optional[str] = None,
         with_params: bool = True) -> Run:
    """The run named by `spec`, its parameters on this process's first device."""
    ref = resolve(spec, workdir=workdir, step=step)
    cfg = load_config(ref)
    tok = load_tokenizer(ref, cfg)
    params, got = None, -1
    if with_params:
        got, state, _ = restore_state(ref, checkpoint_target(cfg))
        params = state.params
    return Run(ref, cfg, tok, params, got)


def check_compatible(parent: Run, cfg: Config) -> None:
    """A child config must build the parent's parameter shapes (RunError naming both); only the
    output head may differ (`model.head`: a reward model from a language model), its body the
    parent's."""
    same_head = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, head=parent.config.model.head))
    want = jax.tree_util.tree_map(lambda a: a.shape, abstract_params(same_head))
    have = jax.tree_util.tree_map(lambda a: a.shape, abstract_params(parent.config))
    if want != have:
        diffs = [f"model.{f.name}: parent {getattr(parent.config.model, f.name)!r}, "
                 f"this run {getattr(cfg.model, f.name)!r}"
                 for f in dataclasses.fields(cfg.model)
                 if f.name != "head"
                 and getattr(parent.config.model, f.name) != getattr(cfg.model, f.name)]
        raise RunError(f"init_from {parent.run_dir}: its model shape does not match this "
                       f"config's ({'; '.join(diffs) or 'parameter shapes differ'})")


def save_run(run_dir: str, cfg: Config, tokenizer, params=None, *, step: int = 0,
             extra: Optional[dict] = None) -> str:
    """Write a self-contained run directory: config.json, tokenizer.json and a checkpoint of a
    fresh TrainState holding `params` (the model's random init if None). For imported weights,
    tools and tests: the result loads, trains, samples, evaluates and serves like any run."""
    os.makedirs(run_dir, exist_ok=True)
    tokenizer.save(os.path.join(run_dir, "tokenizer.json"))
    cfg.validate()
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(cfg.to_json())
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    state = jax.jit(lambda: init_state(cfg, tx, 0))()
    if params is not None:
        state = state.replace(params=jax.tree.map(jnp.asarray, params))
    with CheckpointManager(checkpoint_dir(run_dir, cfg), every=0, keep=1) as mgr:
        mgr.save(step, state, {"data": {}, **(extra or {})}, force=True)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:    # whole: a finished run
        json.dump({"complete": True, "stage": cfg.stage, "final_step": step,
                   "saved_by": "runs.save_run", **(extra or {})}, f, indent=2)
    return run_dir


def write_lineage(run_dir: str, parent: Optional[Run]) -> None:
    if parent is None:
        return
    with open(os.path.join(run_dir, "lineage.json"), "w") as f:
        json.dump({"parent": {"run_dir": parent.run_dir, "step": parent.step,
                              "experiment": parent.config.name, "stage": parent.stage}}, f,
                  indent=2)


def lineage(run_dir: str) -> list[dict]:
    """The chain of parent runs, nearest first ({'run_dir', 'step', 'experiment', 'stage'})."""
    out, seen = [], set()
    d = run_dir
    while True:
        path = os.path.join(d, "lineage.json")
        if not os.path.exists(path) or d in seen:
            return out
        seen.add(d)
        with open(path) as f:
            parent = json.load(f)["parent"]
        out.append(parent)
        d = parent["run_dir"]
