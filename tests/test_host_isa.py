"""The ISA cap (XLA_FLAGS=--xla_cpu_max_isa=...) is one rule for every choice lm makes from the
CPU's flags: a process capped at AVX2 picks what an AVX2-only host picks (fp32, XLA's kernels),
so `--isa avx2` on the benches emulates that host kind on both sides."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from lm import cpu
from tools import bench_dots, bench_host

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


def test_bench_dots_reads_every_product_of_a_compiled_program_and_times_both_sides(tmp_path):
    """The dots of a compiled program, read back from its HLO text with their shapes and dims,
    give the program's own products (as einsums on both sides), and a side's subprocess times
    each one."""
    def program(x_BTD, w_DF, q_BHTK, k_BHSK):
        h_BTF = jnp.einsum("btd,df->btf", x_BTD, w_DF)
        s_BHTS = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_BHSK)
        return h_BTF.sum() + s_BHTS.sum()

    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype(np.float32)
            for s in [(2, 8, 16), (16, 24), (2, 3, 8, 4), (2, 3, 8, 4)]]
    grad = jax.jit(jax.grad(program, argnums=(0, 1, 2, 3)))
    dots = bench_dots.dots_of(grad.lower(*args).compile().as_text())
    assert len(dots) >= 4        # the backward pass's products: dx, dw, dq, dk
    for d in dots:
        a = rng.standard_normal(d["lhs"]).astype(np.float32)
        b = rng.standard_normal(d["rhs"]).astype(np.float32)
        dn = (((d["lhs_contract"],), (d["rhs_contract"],)),
              (tuple(d["lhs_batch"]), tuple(d["rhs_batch"])))
        want = np.asarray(jax.lax.dot_general(a, b, dn))
        assert list(want.shape) == d["out"]
        np.testing.assert_allclose(np.einsum(bench_dots.einsum_spec(d), a, b), want,
                                   rtol=1e-4, atol=1e-4)
        assert bench_dots.flops(d) == 2 * want.size * a.shape[d["lhs_contract"]]
    path = tmp_path / "dots.json"
    path.write_text(json.dumps(dots))
    r = subprocess.run([sys.executable, "-m", "tools.bench_dots", "--_side", "xla", "--_dots",
                        str(path), "--_reps", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    times = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(times) == len(dots) and all(t > 0 for t in times)
