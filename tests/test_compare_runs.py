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


def test_a_step_row_and_reward_errors(tmp_path):
    """`run@STEP` reads the evaluation logged at that step (early stopping); a mean reward's
    error is the one the evaluation logged, not a binomial one."""
    d = _run(tmp_path / "r", "rl", "sft")
    rows = [{"step": 0, "eval/reward/true": 0.9, "eval/reward/true_n": 50,
             "eval/reward/true_se": 0.02, "eval/arith": 0.7, "eval/arith_n": 100},
            {"step": 5, "loss": 1.0},
            {"step": 10, "eval/reward/true": -0.3, "eval/reward/true_n": 50,
             "eval/reward/true_se": 0.05, "eval/arith": 0.2, "eval/arith_n": 100}]
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(d, "summary.json"), "w") as f:
        json.dump({k: v for k, v in rows[2].items() if k != "step"}, f)
    out = tmp_path / "t"
    assert compare_runs.main(["--runs", f"end={d}", f"stopped={d}@0", "--out", str(out),
                              "--tasks", "reward/true,arith"]) == 0
    table = json.load(open(out / "compare.json"))
    end, stopped = table["rows"]
    assert end["eval"]["reward/true"] == {"acc": -0.3, "n": 50, "se": 0.05}
    assert stopped["eval"]["reward/true"]["acc"] == 0.9 and stopped["eval"]["arith"]["acc"] == 0.7
    assert math.isclose(stopped["eval"]["arith"]["se"], math.sqrt(0.7 * 0.3 / 100))
    assert compare_runs.main(["--runs", f"{d}@7"]) == 2          # nothing logged at step 7
