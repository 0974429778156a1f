"""Every tool runs however it is called: `python -m tools.X` and `python tools/X.py`, from the
repository root (a tool named like a standard-library module once broke the second form)."""
import glob
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(REPO, "tools", "*.py"))
               if not os.path.basename(f).startswith("_"))
STDLIB = set(sys.stdlib_module_names)


def test_no_tool_shadows_a_standard_library_module():
    assert TOOLS and not (set(TOOLS) & STDLIB), set(TOOLS) & STDLIB


@pytest.mark.parametrize("name", TOOLS)
def test_tool_help_both_ways(name):
    env = dict(os.environ, PYTHONPATH="")          # nothing but the tool's own bootstrap
    for cmd in ([sys.executable, "-m", f"tools.{name}", "--help"],
                [sys.executable, os.path.join("tools", f"{name}.py"), "--help"]):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, f"{' '.join(cmd[1:])}:\n{r.stderr[-2000:]}"
        assert "usage" in r.stdout.lower(), r.stdout[:500]
