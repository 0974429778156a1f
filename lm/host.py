"""Process setup for the host: a memory allocator that keeps XLA's large buffers.

XLA:CPU allocates and frees its big temporaries (logits, their gradients) every step. glibc's
malloc serves those with mmap and gives them back with munmap, so every step the kernel faults in
and zeroes fresh pages: on the chat_tiny base config that was ~600k page faults and a third of the
step's time in the kernel. mimalloc (the pinned `cmeel-mimalloc` wheel) with purging off keeps the
freed pages: the same step runs ~28% faster with identical numbers (docs/performance.md).

`use_fast_allocator()` re-executes the current command with mimalloc preloaded, once, before JAX
starts; it does nothing if mimalloc is absent, already loaded, or LM_ALLOCATOR=system.
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


def use_fast_allocator(module: str) -> None:
    """Re-run `python -m <module> <args>` with mimalloc preloaded (see the module doc). Call it
    only from a command's `if __name__ == "__main__":` block: it replaces the process."""
    env = os.environ
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
    os.execve(sys.executable, [sys.executable, "-m", module] + sys.argv[1:], new)
