"""Test setup: 8 simulated CPU devices (set before JAX is imported) and the shared data folder."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Hermetic: named data files resolve from the shared folder, never from the network.
os.environ["LM_DATA_DIR"] = SHARED_DATA if os.path.isdir(SHARED_DATA) else os.path.join(
    ROOT, ".no-data-dir")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data; tests that need it skip with the reason when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real data folder {SHARED_DATA} is absent (see its README for provenance)")
    return SHARED_DATA


@pytest.fixture
def data_env(shared_data, monkeypatch):
    """LM_DATA_DIR pointing at the shared data, so named sources resolve offline."""
    monkeypatch.setenv("LM_DATA_DIR", shared_data)
    return shared_data


# In CI (`.ci/run` sets LM_CI=1) every dependency and data file is installed, so a skipped test
# means something is missing: the run fails and names the skipped tests and their reasons.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append(f"{report.nodeid}: {reason}")


HARDWARE = "host hardware:"     # a skip for hardware this host lacks (AVX512-BF16, ...)


def pytest_sessionfinish(session, exitstatus):
    hardware = [s for s in _SKIPPED if HARDWARE in s]
    if hardware:
        print(f"\n{len(hardware)} test(s) need hardware this host lacks (not a failure):",
              file=sys.stderr)
        for line in hardware:
            print(f"  {line}", file=sys.stderr)
    if os.environ.get("LM_CI") == "1" and len(hardware) < len(_SKIPPED):
        print(f"\nLM_CI=1: {len(_SKIPPED) - len(hardware)} test(s) skipped, which CI does not "
              f"allow:", file=sys.stderr)
        for line in (s for s in _SKIPPED if HARDWARE not in s):
            print(f"  {line}", file=sys.stderr)
        session.exitstatus = 1
