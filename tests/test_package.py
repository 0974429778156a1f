"""lm installs as a package (issue 30): `pip install .` copies lm (with its non-Python files) and
the console scripts; the dependencies and extras are the pinned requirements files."""
import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements(name):
    out = []
    for line in open(os.path.join(ROOT, name)):
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def _source(tmp_path):
    """A copy of what a source distribution holds (pip builds in the source tree: not in ours)."""
    src = tmp_path / "src"
    for d in ("lm", "experiments"):
        shutil.copytree(os.path.join(ROOT, d), src / d,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in os.listdir(ROOT):
        if f == "pyproject.toml" or f == "README.md" or re.fullmatch(r"requirements.*\.txt", f):
            shutil.copy(os.path.join(ROOT, f), src / f)
    return str(src)


def test_an_installed_copy_runs_its_console_scripts(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "--target", str(target), _source(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in ("lm/serve/static/index.html", "lm/cpu/onednn_matmul.cc", "lm/tasks/identity.json",
              "lm/tasks/data/everyday.json"):
        assert (target / f).is_file(), f
    env = dict(os.environ, PYTHONPATH=str(target))
    for script in ("lm-train", "lm-chat", "lm-serve", "lm-eval"):
        assert (target / "bin" / script).is_file(), script
    r = subprocess.run([str(target / "bin" / "lm-train"), "--list"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "shakespeare_char_cpu" in r.stdout and "chat_tiny_sft" in r.stdout
    r = subprocess.run([sys.executable, "-c", "import lm; print(lm.__file__)"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.strip().startswith(str(target)), r.stdout


def test_the_dependencies_are_the_requirements_files(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(tmp_path / "wheel"), _source(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = [f for f in os.listdir(tmp_path / "wheel") if f.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / "wheel" / wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith("METADATA"))).decode()
    deps = re.findall(r"^Requires-Dist: (.+)$", meta, re.M)
    core = sorted(d for d in deps if "extra ==" not in d)
    assert core == sorted(_requirements("requirements.txt"))
    for extra in ("web", "eval", "serve", "bench", "gguf", "tfds"):
        got = sorted(d.split(";")[0].strip() for d in deps if f'extra == "{extra}"' in d)
        assert got == sorted(_requirements(f"requirements-{extra}.txt")), extra
