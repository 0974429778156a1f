"""Checkpoints: the train state (a pytree of possibly sharded jax.Arrays) plus a JSON `extra` dict.

This is the only module that imports orbax. Layout of `directory` (orbax's, one folder a step):

    <directory>/<step>/state/   the pytree (OCDBT/zarr; restorable onto any sharding / device count)
    <directory>/<step>/extra/   the JSON dict (data-iterator position, ...)
    <directory>/<step>.orbax-checkpoint-tmp-*/   a save in progress, or one killed mid-way (ignored)

Saves are asynchronous: `save` returns once the arrays are copied off the devices (so the caller may
donate / overwrite them right away), and the files are written in the background; the next
save/restore/wait/close waits for that to finish. A step folder only gets its final name once
everything in it is written, so a killed save leaves only a tmp folder behind.

One directory holds one line of training. If a run resumes from step s (the latest checkpoint, or an
earlier one because a later one is corrupt, or one asked for on purpose), checkpoints after s belong
to the abandoned continuation: the first save after the restore deletes them (with a warning), so
that a later resume never jumps back onto them. Without a restore, a save that would collide with
or precede checkpoints already in the directory raises instead of deleting anything.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

_STATE, _EXTRA = "state", "extra"
_STEP_DIR = re.compile(r"^(\d+)(\.orbax-checkpoint-tmp.*)?$")  # orbax's tmp-folder suffix


def _short(err: BaseException, limit: int = 400) -> str:
    """One line of an exception (TensorStore errors embed pages of JSON spec)."""
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[:limit] + " ..."
    return f"{type(err).__name__}: {text}"


def _json_snapshot(extra: dict) -> dict:
    """A deep copy through JSON: fails now (not in the background writer) if `extra` isn't JSON,
    and later mutation of the caller's dict can't leak into a save still in flight."""
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        return json.loads(json.dumps(extra))
    except (TypeError, ValueError) as e:
        raise TypeError(f"extra must be JSON-serializable: {e}") from None


def _abstract(tree):
    """ShapeDtypeStructs with a target sharding for every leaf (concrete arrays are accepted too)."""
    def leaf(path, x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if not isinstance(x, jax.ShapeDtypeStruct):
            raise TypeError(f"restore target leaf {jax.tree_util.keystr(path)} is a "
                            f"{type(x).__name__}, expected jax.ShapeDtypeStruct")
        if x.sharding is None:
            raise ValueError(f"restore target leaf {jax.tree_util.keystr(path)} has no sharding; "
                             "set ShapeDtypeStruct(..., sharding=...) to where it should live")
        return x
    return jax.tree_util.tree_map_with_path(leaf, tree)


def _is_url(path: str) -> bool:
    return "://" in str(path)


def _dir_bytes(path: str) -> int:
    """Bytes under `path`, walked one level at a time (gs:// paths refuse recursive globs)."""
    total, todo = 0, [epath.Path(path)]
    while todo:
        try:
            children = list(todo.pop().iterdir())
        except OSError:
            continue
        for f in children:
            try:
                if f.is_dir():
                    todo.append(f)
                elif f.is_file():
                    total += f.stat().length
            except OSError:
                pass
    return total


def _has_items(step_dir: str) -> bool:
    return all((epath.Path(step_dir) / item).is_dir() for item in (_STATE, _EXTRA))


def has_checkpoint(directory: str) -> bool:
    """Whether `directory` (a local path or a gs:// URL) holds at least one complete step folder
    (no orbax call, no waiting)."""
    return bool(saved_steps(directory))


def saved_steps(directory: str) -> list[int]:
    """The complete step folders under `directory`, ascending (no orbax call, no waiting)."""
    d = epath.Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir()
                  if (m := _STEP_DIR.match(p.name)) and not m.group(2) and _has_items(str(p)))


def describe(directory: str) -> list[dict]:
    """Every step folder under `directory`, complete or not, oldest first (for CLIs / debugging).

    Each row: step, path, complete (a finalized folder holding both items; the array data itself is
    not verified, only a restore does that), tmp (an unfinished save), bytes, extra (the JSON dict,
    or None if unreadable/absent).
    """
    d = epath.Path(directory)
    if not d.is_dir():
        return []
    rows = []
    for entry in d.iterdir():
        name = entry.name
        m = _STEP_DIR.match(name)
        path = str(entry)
        if not m or not entry.is_dir():
            continue
        tmp = m.group(2) is not None
        extra = None
        if (entry / _EXTRA).is_dir():
            try:
                extra = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
                    str(entry / _EXTRA))
            except Exception:  # noqa: BLE001 - a listing must not fail on one bad folder
                extra = None
        rows.append({"step": int(m.group(1)), "path": path, "complete": not tmp and _has_items(path),
                     "tmp": tmp, "bytes": _dir_bytes(path), "extra": extra})
    rows.sort(key=lambda r: (r["step"], r["tmp"], r["path"]))
    return rows


class CheckpointManager:
    """Periodic, asynchronous, keep-last-K checkpoints of (state pytree, JSON extra)."""

    def __init__(self, directory: str, *, every: int, keep: int):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        directory = os.fspath(directory)   # a local path or a URL orbax can write (gs://...)
        self.directory = directory if _is_url(directory) else os.path.abspath(directory)
        self.every = int(every)  # <= 0: only forced saves
        self.keep = int(keep)
        self._good: set[int] = set()  # steps saved or successfully restored by this manager
        self._bad: set[int] = set()  # steps whose restore failed, or unfinished folders
        self._restored_step: Optional[int] = None
        self._closed = False
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            create=True,
            enable_async_checkpointing=True,
            # Don't delete other processes' in-flight tmp folders (an eval job opening the same
            # directory); leftovers from killed saves are ignored, `describe` shows them.
            cleanup_tmp_directories=False,
            async_options=ocp.AsyncOptions(timeout_secs=3600),
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=(_STATE, _EXTRA))

    # ----------------------------------------------------------------------------------- queries
    def _step_dir(self, step: int) -> str:
        return str(epath.Path(self.directory) / str(step))

    def _listed_steps(self) -> list[int]:
        """Finalized step folders as orbax sees them on disk (complete or not)."""
        self._mngr.reload()
        return sorted(self._mngr.all_steps())

    def all_steps(self) -> list[int]:
        """Complete checkpoints on disk, ascending (waits for a save in flight)."""
        self.wait()
        return [s for s in self._listed_steps() if _has_items(self._step_dir(s))]

    def latest_step(self) -> Optional[int]:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        step = int(step)
        return self.every > 0 and step > 0 and step % self.every == 0 and step not in self._good

    # -------------------------------------------------------------------------------------- save
    def save(self, step: int, state, extra: dict, *, force: bool = False) -> bool:
        """Save `state` and `extra` as `step` if `should_save(step)` or `force`. True if it saved.

        Returns once the arrays are copied to host memory; files are written in the background.
        A step this manager already saved (or restored) is not saved again.
        """
        if self._closed:
            raise RuntimeError("CheckpointManager is closed")
        step = int(step)
        if not force and not self.should_save(step):
            return False
        extra = _json_snapshot(extra)
        self.wait()  # the previous save is finished (and errors surface) before we look at the disk
        listed = self._listed_steps()
        if step in self._good and step in listed:
            return False
        stale = [s for s in listed if s >= step]
        if stale:
            abandoned = [s for s in stale if s in self._bad
                         or (self._restored_step is not None and s > self._restored_step)]
            blocking = sorted(set(stale) - set(abandoned))
            if blocking:
                raise RuntimeError(
                    f"cannot save step {step} in {self.directory}: it already holds checkpoints at "
                    f"steps {blocking} (>= {step}) that this run did not restore or supersede. "
                    "Resume from them (restore) or use another directory.")
            for s in abandoned:
                log.warning("deleting checkpoint %s: step %d is from an abandoned continuation "
                            "(this run continues from step %s)", self._step_dir(s), s,
                            self._restored_step)
                self._mngr.delete(s)
                self._bad.discard(s)
                self._good.discard(s)
        self._mngr.save(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(state),
            _EXTRA: ocp.args.JsonSave(extra),
        }), force=True)
        self._good.add(step)
        return True

    # ----------------------------------------------------------------------------------- restore
    def _restore_step(self, abstract, step: int):
        out = self._mngr.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardRestore(abstract),
            _EXTRA: ocp.args.JsonRestore(),
        }))
        extra = out[_EXTRA]
        if not isinstance(extra, dict):
            raise ValueError(f"extra item is a {type(extra).__name__}, expected a dict")
        return step, out[_STATE], extra

    def restore(self, abstract_state, step: Optional[int] = None):
        """(step, state, extra) restored onto `abstract_state`'s shardings, or None if there is none.

        `abstract_state`: pytree of jax.ShapeDtypeStruct with `.sharding` set (the layout may differ
        from the one saved: any mesh / device count). With `step=None`, the latest complete
        checkpoint; if it can't be read, a warning names it and the error, and the previous one is
        tried, and so on; if none can be read, RuntimeError. An explicit `step` is restored or
        raises (FileNotFoundError if absent).
        """
        if self._closed:
            raise RuntimeError("CheckpointManager is closed")
        abstract = _abstract(abstract_state)
        self.wait()
        listed = self._listed_steps()
        complete = [s for s in listed if _has_items(self._step_dir(s))]
        if step is not None:
            step = int(step)
            if step not in listed:
                raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                                        f"(complete steps: {complete})")
            out = self._restore_step(abstract, step)
            self._restored_step = step
            self._good.add(step)
            return out
        for s in listed:
            if s not in complete:
                log.warning("ignoring incomplete checkpoint folder %s (step %d): missing %r or %r",
                            self._step_dir(s), s, _STATE, _EXTRA)
                self._bad.add(s)
        if not complete:
            return None
        failures = []
        for s in reversed(complete):
            try:
                out = self._restore_step(abstract, s)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint -> try the previous one
                log.warning("could not restore checkpoint %s (step %d): %s; falling back to the "
                            "previous checkpoint", self._step_dir(s), s, _short(e))
                self._bad.add(s)
                failures.append((s, e))
                continue
            self._restored_step = s
            self._good.add(s)
            if failures:
                log.warning("restored step %d from %s after skipping unreadable steps %s", s,
                            self.directory, [f[0] for f in failures])
            return out
        summary = "; ".join(f"step {s}: {_short(e, 200)}" for s, e in failures)
        raise RuntimeError(f"no checkpoint in {self.directory} could be restored ({summary})") \
            from failures[0][1]

    # --------------------------------------------------------------------------------- lifecycle
    def wait(self) -> None:
        """Block until a save in flight is fully written (re-raises its error, if any)."""
        if not self._closed:
            self._mngr.wait_until_finished()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._mngr.wait_until_finished()
        finally:
            self._closed = True
            self._mngr.close()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
