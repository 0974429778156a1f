"""tools/compare_runs: final eval rows side by side with binomial errors, into --out and the runs."""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from test_sampling_chat import _run  # noqa: E402  (a tiny saved run)
from tools import compare_runs  # noqa: E402


def test_table_reads_each_summary_and_writes_json_and_markdown(tmp_path):
    dirs = []
    for k, acc in enumerate((0.5, 0.9)):
        d = _run(tmp_path / f"r{k}", f"student{k}", "sft")
        with open(os.path.join(d, "summary.json"), "w") as f:
            only = {"eval/only_here": 1.0, "eval/only_here_n": 10} if k == 0 else {}
            json.dump({"eval/spelling": acc, "eval/spelling_n": 100, **only,
                       "val_loss": 1.0 + k}, f)
        dirs.append(d)
    out = tmp_path / "table"
    assert compare_runs.main(["--runs", f"A={dirs[0]}", f"B={dirs[1]}", "--out", str(out),
                              "--into_runs"]) == 0
    table = json.load(open(out / "compare.json"))
    assert table["tasks"] == ["spelling"]               # only what every run has
    b = table["rows"][1]
    assert b["label"] == "B" and b["eval"]["spelling"]["acc"] == 0.9
    assert math.isclose(b["eval"]["spelling"]["se"], math.sqrt(0.9 * 0.1 / 100))
    assert "| B | 0.900 ± 0.030 |" in open(out / "compare.md").read()
    assert all(os.path.exists(os.path.join(d, f)) for d in dirs
               for f in ("compare.md", "compare.png"))
    assert compare_runs.main(["--runs", str(tmp_path / "nope")]) == 2
