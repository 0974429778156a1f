"""Compiled code shared across processes and work folders: XLA's programs (JAX's persistent
compilation cache, one folder per CPU kind) and the oneDNN kernel (lm.paths.machine_cache_dir)."""
import json
import os
import subprocess
import sys

from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configure the process as the CLIs do, compile one program big enough to be cached, report
PROG = """
import json, sys, time
import jax, jax.numpy as jnp
from lm import process
d = process.configure_devices()
def f(x):
    for i in range(40):
        x = jnp.tanh(x @ x.T) + jnp.sin(x) * (i + 1)   # ~0.5 s to compile: over the 0.1 s floor
    return x.sum()
f = jax.jit(f)
f(jnp.ones((64, 64)) * 0.01).block_until_ready()
print(json.dumps({"dir": process.compile_cache()}))
"""


def run(env_extra, tmp_path, cap=None):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LM_COMPILE_CACHE")}
    env = bench_host.isa_env(cap, env)
    env.update(env_extra)
    env["JAX_LOG_COMPILES"] = "1"
    env["PYTHONPATH"] = ROOT   # runs in tmp_path (no cache under the checkout)
    r = subprocess.run([sys.executable, "-c", PROG], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])["dir"], r.stderr


def entries(d):
    return sorted(os.listdir(d)) if d and os.path.isdir(d) else []


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    env = {"LM_MACHINE_CACHE_DIR": str(tmp_path / "machine")}
    d1, log1 = run(env, tmp_path)
    assert d1.startswith(str(tmp_path / "machine" / "xla"))
    assert any(e.startswith("jit_f-") for e in entries(d1)), entries(d1)
    assert "Persistent compilation cache hit for 'jit_f'" not in log1
    d2, log2 = run(env, tmp_path)
    assert d2 == d1
    assert "Persistent compilation cache hit for 'jit_f'" in log2


def test_a_capped_cpu_gets_its_own_folder_and_the_cache_can_be_off(tmp_path):
    env = {"LM_MACHINE_CACHE_DIR": str(tmp_path / "machine")}
    d_full, _ = run(env, tmp_path)
    d_avx2, _ = run(env, tmp_path, cap="avx2")
    if bench_host.host_isa()["name"] not in ("avx2", "other"):   # the cap removes flags here
        assert d_avx2 != d_full
    off, _ = run({**env, "LM_COMPILE_CACHE": "0"}, tmp_path)
    assert off is None
    user, _ = run({**env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")}, tmp_path)
    assert user == str(tmp_path / "mine")     # the user's folder, with JAX's own settings
