"""The ISA cap (XLA_FLAGS=--xla_cpu_max_isa=...) is one rule for every choice lm makes from the
CPU's flags: a process capped at AVX2 picks what an AVX2-only host picks (fp32, XLA's kernels),
so `--isa avx2` on the benches emulates that host kind on both sides."""
import json
import os
import subprocess
import sys

from lm import cpu
from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                  "avx512_bf16", "amx_bf16", "amx_tile"})


def test_caps_drop_what_the_capped_isa_lacks():
    assert cpu.capped(FULL, "AVX2") == {"sse4_2", "avx", "avx2", "fma"}
    assert cpu.capped(FULL, "AVX512") == {"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"}
    assert cpu.capped(FULL, "AVX512_BF16") == FULL - {"amx_bf16", "amx_tile"}
    assert cpu.capped(FULL, None) == FULL
    assert cpu.isa_cap("--xla_force_host_platform_device_count=2 --xla_cpu_max_isa=avx2") == "AVX2"
    assert cpu.isa_cap("--xla_force_host_platform_device_count=2") is None


def test_a_process_capped_at_avx2_chooses_as_an_avx2_host():
    code = ("import json; from lm import cpu, kernels, process; "
            "print(json.dumps({'bf16': cpu.cpu_has_bf16(), 'avx512_bf16': cpu.cpu_has_avx512_bf16(),"
            " 'expected': kernels.bf16_kernels_expected(), 'flags': sorted(cpu.cpu_flags())}))")
    env = bench_host.isa_env("avx2", {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert not out["bf16"] and not out["avx512_bf16"] and not out["expected"]
    assert not any(f.startswith(("avx512", "amx")) for f in out["flags"])
    assert bench_host.host_isa("avx2")["name"] == ("avx2" if "avx2" in cpu.cpu_flags() else "other")
