"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel, on a tiny chat run
(random weights), and its outputs are what the front door promises."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from lm import runs
from lm.config import Config, DataConfig, ModelConfig
from lm.tokenizer import train_bpe, trained_specials

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")
TEXT = "Once upon a time there was a dog called Rex. What is 12 * 7? It is 84. " * 40


@pytest.fixture
def tiny_chat_run(tmp_path):
    tok = train_bpe([TEXT], 256 + len(trained_specials()) + 60)
    cfg = Config(name="tiny_chat", stage="sft", init_from="parent",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1,
                                   n_head=2, n_embd=32),
                 data=DataConfig(seq_len=64, batch_size=2))
    return runs.save_run(str(tmp_path / "runs" / "tiny_chat" / "0"), cfg, tok)


def test_quickstart_notebook_runs_and_shows_the_front_door(tiny_chat_run, tmp_path, data_env,
                                                           monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("LM_QUICKSTART_RUN", tiny_chat_run)
    monkeypatch.setenv("LM_QUICKSTART_WORKDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.delenv("XLA_FLAGS", raising=False)     # the kernel is a fresh process: 1 device
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [c.get("outputs", []) for c in nb.cells if c.cell_type == "code"]
    errors = [o for out in outputs for o in out if o.output_type == "error"]
    assert not errors, errors

    def text(i):
        return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                       for o in outputs[i] if o.get("name") != "stderr")
    assert text(0).startswith("lm.Model('tiny_chat', stage='sft'")
    assert text(1).strip() and text(2).strip()                 # chat replies (random weights)
    assert len(text(3).strip().splitlines()) == 2               # one continuation per prompt
    assert "'eval/arithmetic_easy'" in text(4) and "'eval/format'" in text(4)
    step, val, run_dir = text(5).strip().splitlines()[-1].split()
    assert step == "40" and 0 < float(val) < 5 and run_dir.startswith(str(tmp_path))
    assert os.path.exists(os.path.join(run_dir, "report.md"))
    assert len(text(6)) > 20
