"""What a benchmark says about its host, and how it measures another host's kind from this one.

    host_isa()          {"avx2": True, "avx512f": False, "avx512_bf16": False, "amx_bf16": False,
                         "name": "avx2"}: the CPU's vector ISA (from /proc/cpuinfo)
    has_bf16(isa)       whether bf16 runs on matrix hardware there (else bf16 is emulated)
    isa_env(cap)        the environment that caps both sides at `cap` ("avx2", "avx512"):
                        ours via XLA_FLAGS=--xla_cpu_max_isa=..., the PyTorch peer via
                        ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS
    torch_capability(env)   what torch reports under that environment (checks the cap took)

Every bench's JSON carries `host_isa` (and `isa_cap` when capped), so a figure says which kind of
host it was measured on, and whether that kind was real or emulated by a cap.

What a cap does not reach: XLA's YNN matmul kernels pick their ISA at run time, past
`--xla_cpu_max_isa` (a 2048³ fp32 dot: 310 GFLOP/s capped at AVX2, 316 uncapped, on a 2-core AMX
Xeon; torch 230 capped, 403 uncapped). So an emulated AVX2 figure flatters our side's matmuls:
it is an upper bound for a real AVX2 host (docs/performance.md, "The main job on other hosts").
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_host.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import subprocess

from lm import cpu

CAPS = {"avx2": {"xla": "AVX2", "aten": "avx2", "onednn": "AVX2", "mkl": "AVX2"},
        "avx512": {"xla": "AVX512", "aten": "avx512", "onednn": "AVX512_CORE", "mkl": "AVX512"}}


def host_isa(cap: str | None = None) -> dict:
    """The CPU's vector ISA as a benchmark sees it (under `cap`, the ISA it is limited to)."""
    flags = cpu.capped(cpu.cpu_flags(), CAPS[cap]["xla"] if cap else None)
    out = {"avx2": "avx2" in flags, "avx512f": "avx512f" in flags,
           "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}
    out["name"] = ("amx" if out["amx_bf16"] else "avx512_bf16" if out["avx512_bf16"] else
                   "avx512" if out["avx512f"] else "avx2" if out["avx2"] else "other")
    return out


def has_bf16(isa: dict) -> bool:
    return isa["avx512_bf16"] or isa["amx_bf16"]


def isa_env(cap: str | None, env: dict | None = None) -> dict:
    """`env` (default: this process's) with both sides capped at `cap` (None: unchanged)."""
    env = dict(os.environ if env is None else env)
    if cap is None:
        return env
    if cap not in CAPS:
        raise ValueError(f"--isa {cap!r}: known caps {sorted(CAPS)}")
    c = CAPS[cap]
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = (flags + f" --xla_cpu_max_isa={c['xla']}").strip()
    env["ATEN_CPU_CAPABILITY"] = c["aten"]
    env["ONEDNN_MAX_CPU_ISA"] = c["onednn"]
    env["MKL_ENABLE_INSTRUCTIONS"] = c["mkl"]
    return env


def cap_this_process(cap: str | None) -> None:
    """Cap our side in this process (before JAX starts)."""
    if cap is not None:
        os.environ.update(isa_env(cap))


def torch_capability(env: dict) -> str:
    """torch's CPU capability under `env` ('' when torch is absent): checks that a cap took."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    return r.stdout.strip() if r.returncode == 0 else ""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Print this host's vector ISA as the benchmarks "
                                            "record it (and, with --isa, what a cap leaves).")
    p.add_argument("--isa", choices=sorted(CAPS), default=None,
                   help="show the host as seen under this cap (both sides)")
    p.add_argument("--torch", action="store_true",
                   help="also ask PyTorch which CPU capability it uses under the cap")
    a = p.parse_args(argv)
    out = {"host_isa": host_isa(a.isa), "isa_cap": a.isa,
           "bf16_hardware": has_bf16(host_isa(a.isa))}
    if a.torch:
        out["torch_capability"] = torch_capability(isa_env(a.isa))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
