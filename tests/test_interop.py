"""Hugging Face interop: export -> transformers gives our logits (fp32, max abs diff <= 1e-4),
import -> lm gives transformers' logits, a round trip is bit-identical, the tokenizer files encode
as ours does, and options without a counterpart are named errors."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model
from lm.config import Config, DataConfig, ModelConfig, modern
from lm.interop import hf
from lm.tokenizer import train_bpe, trained_specials

torch = pytest.importorskip("torch", reason="transformers/torch: pip install -r requirements-eval.txt")
transformers = pytest.importorskip("transformers", reason="pip install -r requirements-eval.txt")

TEXT = ("The quick brown fox jumps over the lazy dog. 12 + 30 = 42. Café 😀 naïve.\n\n" * 30)


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT], 256 + len(trained_specials()) + 120)


CONFIGS = {
    "gpt2": lambda V: ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32),
    "llama": lambda V: dataclasses.replace(
        modern(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
               mlp="swiglu", mlp_hidden=96), qk_norm=False, logit_softcap=0.0, rope_theta=500.0),
    "qwen3": lambda V: dataclasses.replace(
        modern(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
               mlp="swiglu", mlp_hidden=96), logit_softcap=0.0, qk_norm_scale=True),
    # the chain's chat models: Qwen3 with tied embeddings (HF's tie_word_embeddings)
    "qwen3_tied": lambda V: dataclasses.replace(
        modern(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
               mlp="swiglu", mlp_hidden=96), logit_softcap=0.0, tie_embeddings=True),
    # a QK-norm without a learned gain exports as Qwen3 with gains of ones
    "qwen3_unscaled": lambda V: dataclasses.replace(
        modern(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
               mlp="swiglu", mlp_hidden=96), logit_softcap=0.0),
}


def _random_params(cfg, seed=0):
    """Random parameters with non-trivial norms and biases (init has ones/zeros there)."""
    p = model.init(cfg, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_export_import_parity_and_round_trip(arch, tok, tmp_path):
    cfg = Config(model=CONFIGS[arch](tok.vocab_size), data=DataConfig(seq_len=32)).validate()
    assert hf.architecture(cfg.model) == arch.split("_")[0]
    params = _random_params(cfg.model)
    out = hf.export(params, cfg, tok, str(tmp_path / "hf"))
    ref = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ref.eval()
    ids = np.random.default_rng(0).integers(0, tok.vocab_size, (2, 24)).astype(np.int64)
    with torch.no_grad():
        theirs = ref(torch.tensor(ids)).logits.numpy()
    ours = np.asarray(model.apply(params, dataclasses.replace(cfg.model, kernels="plain"),
                                  jnp.asarray(ids, jnp.int32)))
    assert np.abs(ours - theirs).max() <= 1e-4
    # import: the same logits from the folder, and bit-identical parameters
    cfg2, params2, tok2 = hf.load_folder(out)
    assert cfg2.model == cfg.model          # lm_config.json keeps our exact options
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)
    if arch == "qwen3_unscaled":    # a folder without lm_config.json is read as Qwen3 is
        os.remove(os.path.join(out, "lm_config.json"))
        cfg3, params3, _ = hf.load_folder(out)
        assert cfg3.model.qk_norm_scale
        assert all(np.all(params3[h]["attn"][f"{x}_norm"]["scale"] == 1)
                   for h in ("h_0", "h_1") for x in "qk")
    assert tok2.to_dict() == tok.to_dict()
    # an import written as a run directory trains, samples and evaluates like any run
    from lm import runs
    rd = hf.import_folder(out, str(tmp_path / "run"))
    run = runs.load(rd)
    got = np.asarray(model.apply(run.params, run.config.model, jnp.asarray(ids, jnp.int32)))
    np.testing.assert_allclose(got, ours, atol=1e-5)


# years and amounts: digit merges ("18", "86", "188") make a digit run's split visible
NUMBERS = " ".join(str(y) for y in range(1800, 2030)) + " 19000 km, 250000 people. " * 3


@pytest.fixture(scope="module")
def digit_tok():
    return train_bpe([TEXT, NUMBERS], 256 + len(trained_specials()) + 200)


def test_hf_tokenizer_files_encode_like_ours(digit_tok, tmp_path):
    tok = digit_tok
    out = str(tmp_path / "t")
    os.makedirs(out)
    hf.write_tokenizer(tok, out)
    fast = transformers.AutoTokenizer.from_pretrained(out)
    for text in [TEXT[:300], "  leading spaces\n\n\ttabs 123456 ünïcödé 😀😀", "x" * 50,
                 "<|assistant_end|> stays text", "In 1886, 19000 km; as of 2020 (1838-1842)."]:
        assert fast.encode(text, add_special_tokens=False) == tok.encode(text)
        assert fast.encode(text) == [tok.bos_id] + tok.encode(text)     # BOS, as lm trains
        assert fast.decode(tok.encode(text)) == text


def test_a_tokenizer_json_that_splits_differently_is_refused(digit_tok, tmp_path, monkeypatch):
    # Oniguruma reads GPT-4's possessive `\p{N}{1,3}+` as "repeated": "1886" stays one piece
    monkeypatch.setattr(hf, "onig_pattern", lambda p: p)
    with pytest.raises(hf.InteropError, match="does not encode like lm's tokenizer"):
        hf.write_tokenizer(digit_tok, str(tmp_path))


def test_gpt2_tokenizer_files(tmp_path):
    pytest.importorskip("tokenizers")
    from lm.tokenizer import BPETokenizer
    enc = os.path.join(os.environ["LM_DATA_DIR"], "gpt2_tokenizer", "encoder.json")
    if not os.path.exists(enc):
        pytest.skip(f"{enc} is absent (../shared/data)")
    gpt2 = BPETokenizer.gpt2()
    out = str(tmp_path / "g")
    os.makedirs(out)
    hf.write_tokenizer(gpt2, out)
    os.remove(os.path.join(out, "lm_tokenizer.json"))
    back = hf.read_tokenizer(out, 50257)            # OpenAI's GPT-2: 50257 ids
    assert back.vocab_size == 50257 and back.bos_id == 50256
    assert back.encode(TEXT[:500]) == gpt2.encode(TEXT[:500])
    slow = transformers.GPT2TokenizerFast(vocab=os.path.join(out, "vocab.json"),
                                          merges=os.path.join(out, "merges.txt"))
    assert slow.encode(TEXT[:500]) == gpt2.encode(TEXT[:500])


@pytest.mark.parametrize("change,match", [
    (dict(mlp="relu2"), r"model.mlp='relu2'"),
    (dict(logit_softcap=15.0), r"model.logit_softcap=15.0"),
    (dict(bias=True), r"model.bias=True"),
])
def test_options_without_a_counterpart_are_named(change, match, tok):
    m = dataclasses.replace(CONFIGS["llama"](tok.vocab_size), **change)
    with pytest.raises(hf.InteropError, match=match):
        hf.architecture(m)
    g = dataclasses.replace(CONFIGS["gpt2"](tok.vocab_size), n_kv_head=2)
    with pytest.raises(hf.InteropError, match="grouped-query"):
        hf.architecture(g)
