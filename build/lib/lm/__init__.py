"""lm: a JAX codebase that builds a ChatGPT-style assistant end to end.

The front door (for notebooks; see examples/quickstart.ipynb):

    import lm
    run = lm.load("grpo_arith_tiny")        # a run dir, a checkpoint dir, or an experiment name
    run.chat([{"role": "user", "content": "What is 12 * 7?"}])
    run.generate(["Once upon a time"], max_new_tokens=40)
    run.evaluate(tasks="arithmetic_easy", limit=50)
    summary = lm.fit(lm.experiment("shakespeare_char_cpu", "train.steps=100"))

Everything else is in the modules (WORKSPACE.md has the map).
"""
import sys

from lm import host

# `python -m lm.main ...` and the other commands re-execute here, before JAX is imported, with
# mimalloc preloaded (lm/host.py); other programs importing lm are left alone.
host.use_fast_allocator(getattr(sys, "orig_argv", sys.argv))

__all__ = ["Model", "experiment", "fit", "load"]


def __getattr__(name: str):
    if name in __all__:
        from lm import api  # the front door: loaded on first use, so `import lm.config` stays light
        return getattr(api, name)
    raise AttributeError(f"module 'lm' has no attribute {name!r}")
