"""Process setup for the host: a memory allocator that keeps XLA's large buffers.

XLA:CPU allocates and frees its big temporaries (logits, their gradients) every step. glibc's
malloc serves those with mmap and gives them back with munmap, so every step the kernel faults in
and zeroes fresh pages: on the chat_tiny base config that was ~600k page faults and a third of the
step's time in the kernel. mimalloc (the pinned `cmeel-mimalloc` wheel) with purging off keeps the
freed pages: the same step runs ~28% faster with identical numbers (docs/performance.md).

`use_fast_allocator(sys.orig_argv)` re-executes an lm command (`python -m lm.main ...`, the other
CLIs) with mimalloc preloaded, once, before JAX is imported; it does nothing for other programs
(tests, notebooks), or if mimalloc is absent, already loaded, or LM_ALLOCATOR=system. Only the
standard library here: this module runs before anything heavy is imported.
"""
from __future__ import annotations

import glob
import os
import sys
import sysconfig


def mimalloc_path() -> str | None:
    """The mimalloc shared library of the cmeel-mimalloc wheel, if installed."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "cmeel.prefix", "lib", "libmimalloc.so*")))
        if hits:
            return hits[0]
    return None


# the commands that re-execute with mimalloc (their first `import lm` does it)
CLIS = ("lm.main", "lm.chat", "lm.serve", "lm.eval", "lm.report", "tools.bench_rl",
        "tools.bench_train")


def cli_module(argv: list[str]) -> str | None:
    """The lm command a `python [flags] -m lm.X ...` command line runs, else None."""
    if "-m" not in argv[1:]:
        return None
    i = argv.index("-m", 1)
    module = argv[i + 1] if i + 1 < len(argv) else None
    return module if module in CLIS else None


def use_fast_allocator(argv: list[str]) -> None:
    """Re-run the command line `argv` (`sys.orig_argv`) with mimalloc preloaded (see the module
    doc), when it runs one of lm's commands. `lm/__init__.py` calls it first thing, before JAX
    is imported, so the re-executed process is the only one that loads the training stack."""
    env = os.environ
    if cli_module(argv) is None:
        return
    if env.get("LM_ALLOCATOR", "mimalloc") == "system" or "mimalloc" in env.get("LD_PRELOAD", ""):
        return
    lib = mimalloc_path()
    if lib is None or not sys.platform.startswith("linux"):
        return
    new = dict(env)
    new["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    new.setdefault("MIMALLOC_PURGE_DELAY", "-1")      # keep freed pages: no refaulting
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    new["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + list(argv[1:]), new)
