"""Hugging Face interop: export a run to a `transformers` folder (safetensors + config +
tokenizer files) and import such a folder into an lm run that trains, samples and evaluates.

    python -m lm.interop.hf export --run runs/<exp>/<ts> --out hf/mymodel
    python -m lm.interop.hf import --hf path/to/gpt2 --out runs/gpt2_124m_hf/imported

Architectures: the GPT-2 family -> `GPT2LMHeadModel`; the modern family -> `LlamaForCausalLM`
(RoPE + RMSNorm + SwiGLU, no biases, tied or untied) or `Qwen3ForCausalLM` (the same with
QK-norm). An option with no counterpart (ReLU², a logit soft-cap, ...) is a clear error naming
it. Weights are written as float32 safetensors, so a round trip is bit-identical; no
`transformers` import is needed to export or import (the tests use it to check logit parity).

The tokenizer goes along as `lm_tokenizer.json` (exact, what import reads back) and, for HF, as
`vocab.json` + `merges.txt` (GPT-2's split pattern) or a `tokenizer.json` (`tokenizers`' BPE with
our split pattern), with the special tokens.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer as HFTokenizer

from lm import runs
from lm.config import Config, ModelConfig, from_dict
from lm.tokenizer import (CHAT_SPECIAL_TOKENS, GPT2_ENDOFTEXT, GPT2_SPLIT_PATTERN, BPETokenizer,
                          Tokenizer, _gpt2_ranks, gpt2_bytes_to_unicode, load_tokenizer)


class InteropError(ValueError):
    pass


# ---- which HF architecture ----------------------------------------------------------------------

def architecture(m: ModelConfig) -> str:
    """'gpt2', 'llama' or 'qwen3', or InteropError naming the options without a counterpart."""
    gpt2 = dict(pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True,
                qk_norm=False, logit_softcap=0.0)
    if all(getattr(m, k) == v for k, v in gpt2.items()) and m.kv_heads == m.n_head:
        return "gpt2"
    llama = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, logit_softcap=0.0)
    bad = [f"model.{k}={getattr(m, k)!r} (needs {v!r})" for k, v in llama.items()
           if getattr(m, k) != v]
    if m.pos == "learned" and m.norm == "layernorm":   # looks like GPT-2: say what differs there
        bad = [f"model.{k}={getattr(m, k)!r} (GPT-2 needs {v!r})" for k, v in gpt2.items()
               if getattr(m, k) != v]
        if m.kv_heads != m.n_head:
            bad.append(f"model.n_kv_head={m.n_kv_head} (GPT-2 has no grouped-query attention)")
    if bad:
        raise InteropError("no transformers architecture matches this model: " + "; ".join(bad))
    return "qwen3" if m.qk_norm else "llama"


# ---- parameter maps ------------------------------------------------------------------------------

def to_hf(params: Any, m: ModelConfig) -> dict[str, np.ndarray]:
    """Our parameter pytree -> HF state dict (numpy float32)."""
    arch = architecture(m)
    p = lambda *ks: np.asarray(_get(params, ks), np.float32)
    out: dict[str, np.ndarray] = {}
    if arch == "gpt2":
        out["transformer.wte.weight"] = p("wte")
        out["transformer.wpe.weight"] = p("wpe")
        for i in range(m.n_layer):
            h, t = f"h_{i}", f"transformer.h.{i}."
            for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                out[t + theirs + ".weight"] = p(h, ours, "scale")
                out[t + theirs + ".bias"] = p(h, ours, "bias")
            for mod, sub in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"),
                             ("mlp", "c_proj")):
                out[t + f"{mod}.{sub}.weight"] = p(h, mod, sub, "kernel")   # Conv1D: [in, out]
                out[t + f"{mod}.{sub}.bias"] = p(h, mod, sub, "bias")
        out["transformer.ln_f.weight"] = p("ln_f", "scale")
        out["transformer.ln_f.bias"] = p("ln_f", "bias")
        if m.head == "score":
            out["score.weight"] = p("score").T
        else:
            out["lm_head.weight"] = out["transformer.wte.weight"]
        return out
    N, K, H, F = m.n_head, m.kv_heads, m.head_dim, m.hidden
    out["model.embed_tokens.weight"] = p("wte")
    for i in range(m.n_layer):
        h, t = f"h_{i}", f"model.layers.{i}."
        qkv = p(h, "attn", "c_attn", "kernel")
        out[t + "self_attn.q_proj.weight"] = qkv[:, :N * H].T
        out[t + "self_attn.k_proj.weight"] = qkv[:, N * H:(N + K) * H].T
        out[t + "self_attn.v_proj.weight"] = qkv[:, (N + K) * H:].T
        out[t + "self_attn.o_proj.weight"] = p(h, "attn", "c_proj", "kernel").T
        fc = p(h, "mlp", "c_fc", "kernel")
        out[t + "mlp.gate_proj.weight"] = fc[:, :F].T
        out[t + "mlp.up_proj.weight"] = fc[:, F:].T
        out[t + "mlp.down_proj.weight"] = p(h, "mlp", "c_proj", "kernel").T
        out[t + "input_layernorm.weight"] = p(h, "ln_1", "scale")
        out[t + "post_attention_layernorm.weight"] = p(h, "ln_2", "scale")
        if arch == "qwen3":     # a QK-norm without a learned gain: HF's weight of ones
            for x in "qk":
                out[t + f"self_attn.{x}_norm.weight"] = (
                    p(h, "attn", f"{x}_norm", "scale") if m.qk_norm_scale
                    else np.ones((H,), np.float32))
    out["model.norm.weight"] = p("ln_f", "scale")
    if m.head == "score":         # *ForSequenceClassification's one-label head, [1, D]
        out["score.weight"] = p("score").T
    else:
        out["lm_head.weight"] = p("wte") if m.tie_embeddings else p("lm_head", "kernel").T
    return out


def from_hf(sd: dict[str, np.ndarray], m: ModelConfig) -> dict:
    """HF state dict -> our parameter pytree (numpy float32)."""
    arch = architecture(m)
    g = lambda k: np.asarray(sd[k], np.float32)
    params: dict = {}
    if arch == "gpt2":
        pre = "transformer." if "transformer.wte.weight" in sd else ""
        params["wte"] = g(pre + "wte.weight")
        params["wpe"] = g(pre + "wpe.weight")
        for i in range(m.n_layer):
            t = f"{pre}h.{i}."
            layer = {n: {"scale": g(t + n + ".weight"), "bias": g(t + n + ".bias")}
                     for n in ("ln_1", "ln_2")}
            layer["attn"] = {s: {"kernel": g(t + f"attn.{s}.weight"), "bias": g(t + f"attn.{s}.bias")}
                             for s in ("c_attn", "c_proj")}
            layer["mlp"] = {s: {"kernel": g(t + f"mlp.{s}.weight"), "bias": g(t + f"mlp.{s}.bias")}
                            for s in ("c_fc", "c_proj")}
            params[f"h_{i}"] = layer
        params["ln_f"] = {"scale": g(pre + "ln_f.weight"), "bias": g(pre + "ln_f.bias")}
        return params
    params["wte"] = g("model.embed_tokens.weight")
    for i in range(m.n_layer):
        t = f"model.layers.{i}."
        qkv = np.concatenate([g(t + f"self_attn.{x}_proj.weight").T for x in "qkv"], axis=1)
        fc = np.concatenate([g(t + "mlp.gate_proj.weight").T, g(t + "mlp.up_proj.weight").T], 1)
        params[f"h_{i}"] = {
            "ln_1": {"scale": g(t + "input_layernorm.weight")},
            "ln_2": {"scale": g(t + "post_attention_layernorm.weight")},
            "attn": {"c_attn": {"kernel": qkv},
                     "c_proj": {"kernel": g(t + "self_attn.o_proj.weight").T},
                     **({f"{x}_norm": {"scale": g(t + f"self_attn.{x}_norm.weight")}
                         for x in "qk"} if m.qk_norm_scale else {})},
            "mlp": {"c_fc": {"kernel": fc}, "c_proj": {"kernel": g(t + "mlp.down_proj.weight").T}}}
    params["ln_f"] = {"scale": g("model.norm.weight")}
    if not m.tie_embeddings:
        params["lm_head"] = {"kernel": g("lm_head.weight").T}
    return params


def _get(tree, keys):
    for k in keys:
        tree = tree[k]
    return tree


# ---- configs -------------------------------------------------------------------------------------

def hf_config(m: ModelConfig, tok) -> dict:
    arch = architecture(m)
    bos = tok.bos_id or 0
    if m.head == "score":     # a reward model: the sequence classifier with one label, read at
        # the last token that is not padding (rows are right-padded with id 0)
        lm = hf_config(dataclasses.replace(m, head="lm"), tok)
        name = {"gpt2": "GPT2", "qwen3": "Qwen3", "llama": "Llama"}[arch]
        return {**lm, "architectures": [f"{name}ForSequenceClassification"], "num_labels": 1,
                "pad_token_id": 0, "problem_type": "regression"}
    if arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": m.vocab_size, "n_positions": m.block_size, "n_ctx": m.block_size,
                "n_embd": m.n_embd, "n_layer": m.n_layer, "n_head": m.n_head, "n_inner": m.hidden,
                "activation_function": "gelu_new", "layer_norm_epsilon": m.norm_eps,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "initializer_range": m.init_std, "scale_attn_weights": True,
                "tie_word_embeddings": True, "bos_token_id": bos, "eos_token_id": bos,
                "use_cache": True}
    return {"architectures": ["Qwen3ForCausalLM" if arch == "qwen3" else "LlamaForCausalLM"],
            "model_type": arch, "vocab_size": m.vocab_size, "hidden_size": m.n_embd,
            "intermediate_size": m.hidden, "num_hidden_layers": m.n_layer,
            "num_attention_heads": m.n_head, "num_key_value_heads": m.kv_heads,
            "head_dim": m.head_dim, "hidden_act": "silu", "max_position_embeddings": m.block_size,
            "rms_norm_eps": m.norm_eps, "tie_word_embeddings": m.tie_embeddings,
            "attention_bias": False,
            "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": m.init_std,
            "rope_theta": m.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
            "bos_token_id": bos, "eos_token_id": bos, "use_cache": True,
            "use_sliding_window": False}


def model_config(hf: dict) -> ModelConfig:
    """Our ModelConfig for an HF config dict (GPT-2, Llama or Qwen3)."""
    t = hf.get("model_type")
    if t == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise InteropError(f"GPT-2 activation {act!r}: lm's GELU is the tanh form (gelu_new)")
        n_embd = hf["n_embd"]
        inner = hf.get("n_inner") or 4 * n_embd
        return ModelConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=n_embd,
                           mlp_hidden=None if inner == 4 * n_embd else inner,
                           norm_eps=hf.get("layer_norm_epsilon", 1e-5), kernels="auto")
    if t in ("llama", "qwen3"):
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise InteropError(f"{t} with biases has no lm counterpart (lm's modern family is "
                               f"bias-free)")
        if hf.get("hidden_act", "silu") != "silu":
            raise InteropError(f"{t} activation {hf.get('hidden_act')!r}: lm's SwiGLU is silu")
        rope = (hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", 10000.0))
        n_head, D = hf["num_attention_heads"], hf["hidden_size"]
        if hf.get("head_dim", D // n_head) != D // n_head:
            raise InteropError("head_dim != hidden_size / num_attention_heads is not supported")
        return ModelConfig(vocab_size=hf["vocab_size"],
                           block_size=hf.get("max_position_embeddings", 2048),
                           n_layer=hf["num_hidden_layers"], n_head=n_head, n_embd=D,
                           n_kv_head=hf.get("num_key_value_heads") or None, mlp="swiglu",
                           mlp_hidden=hf["intermediate_size"], norm="rmsnorm",
                           norm_eps=hf.get("rms_norm_eps", 1e-6), pos="rope",
                           rope_theta=float(rope), qk_norm=t == "qwen3",
                           qk_norm_scale=t == "qwen3", bias=False,
                           tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    raise InteropError(f"model_type {t!r} is not supported (gpt2, llama, qwen3)")


# ---- tokenizer files ----------------------------------------------------------------------------

def bpe_merges(tok) -> list[tuple[bytes, bytes]]:
    """BPE merges in rank order, recovered from the ranks (a token of rank r is the merge of the
    two pieces that BPE with ranks < r leaves it as)."""
    ranks = tok.mergeable_ranks
    out = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1),
                       key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 62))
            merged = parts[best] + parts[best + 1]
            if ranks.get(merged, 1 << 62) >= rank:
                break
            parts[best:best + 2] = [merged]
        if len(parts) != 2:
            raise InteropError(f"token {token!r} (rank {rank}) is not a merge of two tokens")
        out.append((parts[0], parts[1]))
    return out


def onig_pattern(pattern: str) -> str:
    """Our split regex for `tokenizers` (Oniguruma, Ruby syntax). There a possessive interval
    `{n,m}+` means "the interval, repeated": GPT-4's `\p{N}{1,3}+` would keep "1886" whole
    instead of splitting "188" | "6". A plain interval gives the same split as the possessive one
    here, since nothing follows it in its branch."""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


# digit runs, whitespace runs, contractions, punctuation, newlines, non-Latin letters, emoji
_PROBE = ("In 1886, 19000 km; 2020/2017 and 1234567 items.\n\n  It's    'll\t\tx\r\n"
          "Ünïcödé 東京 😀😀 -- ... ?!\n   end  ")


def _check_tokenizer_json(tok, path: str) -> None:
    """The written tokenizer.json must split and merge as `tok` does (tokenizers' regex engine is
    not ours), else an error naming the first piece that differs."""
    theirs = HFTokenizer.from_file(path).encode(_PROBE, add_special_tokens=False).ids
    ours = list(tok.encode(_PROBE))
    if theirs != ours:
        i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                 min(len(ours), len(theirs)))
        raise InteropError(f"tokenizer.json does not encode like lm's tokenizer (split pattern "
                           f"{tok.pattern!r}): at token {i}, lm {tok.decode(ours[i:i + 3])!r}, "
                           f"tokenizers {tok.decode(theirs[i:i + 3])!r}")


def write_tokenizer(tok: Tokenizer, out: str) -> None:
    tok.save(os.path.join(out, "lm_tokenizer.json"))
    if not isinstance(tok, BPETokenizer):
        return                           # a char tokenizer: lm_tokenizer.json only
    b2u = gpt2_bytes_to_unicode()
    u = lambda b: "".join(b2u[x] for x in b)
    vocab = {u(b): r for b, r in tok.mergeable_ranks.items()}
    specials = dict(tok.special_tokens)
    merges = [f"{u(a)} {u(b)}" for a, b in bpe_merges(tok)]
    if tok.pattern == GPT2_SPLIT_PATTERN:
        with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump({**vocab, **specials}, f, ensure_ascii=False)
        with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tj = {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}
                           for s, i in sorted(specials.items(), key=lambda kv: kv[1])],
          "normalizer": None,
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": onig_pattern(tok.pattern)},
               "behavior": "Isolated", "invert": False},
              {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
               "use_regex": False}]},
          # HF's default add_special_tokens=True prepends BOS, as lm trains (documents start
          # with BOS) and as lm's likelihood scorer does
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": tok.bos_token, "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}],
                             "pair": [{"SpecialToken": {"id": tok.bos_token, "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"Sequence": {"id": "B", "type_id": 1}}],
                             "special_tokens": {tok.bos_token: {
                                 "id": tok.bos_token, "ids": [int(tok.bos_id)],
                                 "tokens": [tok.bos_token]}}},
          "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                      "use_regex": True},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                    "vocab": vocab, "merges": merges}}
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    _check_tokenizer_json(tok, os.path.join(out, "tokenizer.json"))
    bos = tok.bos_token
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos,
                   "add_bos_token": True,
                   "eos_token": bos, "unk_token": None, "add_prefix_space": False,
                   "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False,
                   # text that spells a special token is text (lm's injection boundary)
                   "split_special_tokens": True}, f)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": bos}, f)


def read_tokenizer(folder: str, vocab_size: int):
    """lm_tokenizer.json if present (an lm export); else GPT-2's vocab.json + merges.txt, with
    only the specials that fit the model's vocabulary (OpenAI's GPT-2: <|endoftext|>)."""
    mine = os.path.join(folder, "lm_tokenizer.json")
    if os.path.exists(mine):
        return load_tokenizer(mine)
    enc, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    if not (os.path.exists(enc) and os.path.exists(merges)):
        raise InteropError(f"{folder}: no lm_tokenizer.json nor vocab.json + merges.txt")
    with open(enc, encoding="utf-8") as f:
        full = json.load(f)
    with open(merges, encoding="utf-8") as f:
        n_regular = 256 + sum(1 for ln in f.read().split("\n")[1:] if ln)
    found = {s: i for s, i in full.items() if i >= n_regular}        # the special tokens
    ranks = _gpt2_ranks(enc, merges, specials=tuple(found))
    specials = {s: i for s, i in found.items() if i < vocab_size}
    specials.setdefault(GPT2_ENDOFTEXT, len(ranks))
    extra = [s for s in CHAT_SPECIAL_TOKENS[1:] if s not in specials]
    for s in extra:                       # the chat set where the vocabulary has room for it
        if len(ranks) + len(specials) < vocab_size:
            specials[s] = len(ranks) + len(specials)
    return BPETokenizer(ranks, GPT2_SPLIT_PATTERN, specials, name="gpt2",
                        bos_token=GPT2_ENDOFTEXT if GPT2_ENDOFTEXT in specials else
                        next(iter(specials)))


# ---- export / import -----------------------------------------------------------------------------

def export(params, cfg: Config, tok: Tokenizer, out: str) -> str:
    m = cfg.model
    architecture(m)                          # an option without a counterpart fails first
    os.makedirs(out, exist_ok=True)
    sd = to_hf(params, m)
    if m.tie_embeddings:
        sd.pop("lm_head.weight", None)       # tied: HF ties it to the embedding on load
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
              os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(m, tok), f, indent=2)
    bos = tok.bos_id or 0
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": bos}, f)
    write_tokenizer(tok, out)
    with open(os.path.join(out, "lm_config.json"), "w") as f:
        f.write(cfg.to_json())
    return out


def load_folder(folder: str):
    """(Config, params, tokenizer) of an HF folder (ours or anyone's)."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise InteropError(f"{folder}: no config.json (a transformers model folder)")
    with open(cfg_path) as f:
        hf = json.load(f)
    files = sorted(x for x in os.listdir(folder) if x.endswith(".safetensors"))
    if not files:
        raise InteropError(f"{folder}: no *.safetensors weights (convert .bin weights with "
                           f"transformers' save_pretrained(safe_serialization=True))")
    sd = {}
    for x in files:
        sd.update(load_file(os.path.join(folder, x)))
    m = model_config(hf)
    mine = os.path.join(folder, "lm_config.json")
    if os.path.exists(mine):
        with open(mine) as f:
            cfg = from_dict(json.load(f))
        if architecture(cfg.model) != architecture(m):    # lm_config.json: our exact options
            raise InteropError(f"{folder}: lm_config.json does not match config.json")
    else:
        cfg = Config(name=os.path.basename(os.path.abspath(folder)), model=m)
    cfg.data.seq_len = min(cfg.data.seq_len, cfg.model.block_size)
    params = from_hf(sd, cfg.model)
    tok = read_tokenizer(folder, cfg.model.vocab_size)
    cfg.data.tokenizer = "imported"
    return cfg, params, tok


def import_folder(folder: str, out: str) -> str:
    """Write an lm run directory (config, tokenizer, a step-0 checkpoint) from an HF folder."""
    cfg, params, tok = load_folder(folder)
    cfg.data.tokenizer = os.path.abspath(os.path.join(out, "tokenizer.json"))
    # save_run's summary.json marks the run finished and names where it came from
    return runs.save_run(out, cfg, tok, params, extra={"imported_from": os.path.abspath(folder)})


def load_as_run(folder: str):
    """An HF folder as an in-memory `lm.runs.Run` (for `python -m lm.eval --hf`)."""
    cfg, params, tok = load_folder(folder)
    ref = runs.RunRef(os.path.abspath(folder),
                      os.path.join(os.path.abspath(folder), "checkpoints"))
    return runs.Run(ref, cfg, tok, jax.tree.map(jnp.asarray, params), 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.interop.hf", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="run -> transformers folder")
    e.add_argument("--run", required=True, help="run dir, checkpoint dir, or experiment name")
    e.add_argument("--step", type=int, default=None)
    e.add_argument("--out", required=True)
    i = sub.add_parser("import", help="transformers folder -> lm run directory")
    i.add_argument("--hf", required=True)
    i.add_argument("--out", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "export":
            run = runs.load(a.run, step=a.step)
            print(export(run.params, run.config, run.tokenizer, a.out))
        else:
            print(import_folder(a.hf, a.out))
    except (InteropError, runs.RunError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
