"""GGUF export: a run as one llama.cpp file (weights, architecture, tokenizer, chat template), so
llama.cpp's `llama-server`, LM Studio and other GGUF apps open it as a chat model.

    python -m lm.interop.gguf export --run runs/<exp>/<ts> --out model.gguf [--type q8_0]
    python -m lm.interop.gguf check --run runs/<exp>/<ts> --gguf model.gguf   # llama.cpp vs lm

The weights go through the transformers mapping (`lm.interop.hf.to_hf`) and the `gguf` package's
own transformers -> GGUF tensor names, so the architecture knowledge has one home: GPT-2 runs
become `gpt2`, the modern family `llama` or `qwen3` (QK-norm), tied or untied. An option with no
counterpart is an error naming it. The tokenizer is GGUF's byte-level BPE (`gpt2` model): our
tokens, merges, the llama.cpp pre-tokenizer whose split regex is ours, the special tokens as
control tokens, and `lm.conversation.JINJA_TEMPLATE` as `tokenizer.chat_template`.

The file is written to a temporary name and renamed, so a failed export leaves nothing behind.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np

from lm import model, runs, tasks
from lm.config import Config, ModelConfig
from lm.conversation import JINJA_TEMPLATE, render_for_completion
from lm.interop import hf
from lm.tokenizer import (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, BPETokenizer, Tokenizer,
                          gpt2_bytes_to_unicode)

# --type -> the file type recorded in the header
TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
ARCHS = {"gpt2": gguf.MODEL_ARCH.GPT2, "llama": gguf.MODEL_ARCH.LLAMA,
         "qwen3": gguf.MODEL_ARCH.QWEN3}
# our split regex -> the llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) that splits the same way.
# llama.cpp knows a fixed list of regexes by name; see docs/gguf.md for the one corner where
# "llama-bpe" (Llama 3's form of GPT-4's regex) differs from tiktoken's current form that we use.
PRE_TOKENIZERS = {GPT4_SPLIT_PATTERN: "llama-bpe", GPT2_SPLIT_PATTERN: "gpt-2"}
# GPT-2's transformers weights are Conv1D ([in, out]); GGUF stores [out, in] like nn.Linear
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GGUFError(hf.InteropError):
    """A run that cannot become a GGUF file (the message names the cause)."""


@dataclasses.dataclass
class Vocab:
    """The tokenizer as GGUF stores it."""
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int
    eot: int | None             # <|assistant_end|>: where a chat reply stops


def architecture(m: ModelConfig) -> str:
    """'gpt2', 'llama' or 'qwen3', or GGUFError naming the options without a counterpart."""
    try:
        return hf.architecture(m)
    except hf.InteropError as e:
        raise GGUFError(f"GGUF export goes through the transformers mapping: {e}") from None


def file_type(name: str) -> gguf.LlamaFileType:
    if name not in TYPES:
        raise GGUFError(f"unknown --type {name!r} (known: {', '.join(TYPES)})")
    return TYPES[name]


def _rope_pairs(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection from rotate-half order (transformers, ours) to llama.cpp's
    `llama` order, which rotates consecutive pairs: row 2i <- i, row 2i+1 <- i + head_dim/2."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(w.shape)


def tensors(params, m: ModelConfig) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array in llama.cpp's layout (numpy shape [out, in])."""
    arch = architecture(m)
    names = gguf.get_tensor_name_map(ARCHS[arch], m.n_layer)
    out = {}
    for key, w in hf.to_hf(params, m).items():
        if key == "lm_head.weight" and m.tie_embeddings:
            continue                  # llama.cpp reuses token_embd when `output` is absent
        if arch == "gpt2" and key.endswith(_CONV1D):
            w = w.T
        if arch == "llama" and key.endswith(("q_proj.weight", "k_proj.weight")):
            w = _rope_pairs(w, m.n_head if "q_proj" in key else m.kv_heads)
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"no GGUF tensor name for {key!r} ({arch})")
        out[name] = np.ascontiguousarray(w, np.float32)
    return out


def vocab(tok: Tokenizer) -> Vocab:
    """Our byte-level BPE as GGUF's `gpt2` tokenizer, or GGUFError when there is no mapping."""
    if not isinstance(tok, BPETokenizer):
        raise GGUFError(f"the run's tokenizer is {tok.kind!r}: GGUF has no character-level "
                        f"tokenizer (its BPE `gpt2` model needs byte-level BPE with a BOS token); "
                        f"train with a BPE tokenizer (data.tokenizer=bpe:N) to export")
    pre = PRE_TOKENIZERS.get(tok.pattern)
    if pre is None:
        raise GGUFError(f"no llama.cpp pre-tokenizer splits text like this tokenizer's pattern "
                        f"{tok.pattern!r} (supported: lm's gpt4 and gpt2 split patterns)")
    b2u = gpt2_bytes_to_unicode()
    text = lambda b: "".join(b2u[x] for x in b)
    tokens = [""] * tok.vocab_size
    types = [int(gguf.TokenType.NORMAL)] * tok.vocab_size
    for b, i in tok.mergeable_ranks.items():
        tokens[i] = text(b)
    for s, i in tok.special_tokens.items():
        tokens[i], types[i] = s, int(gguf.TokenType.CONTROL)   # never made from text
    merges = [f"{text(a)} {text(b)}" for a, b in hf.bpe_merges(tok)]
    return Vocab(tokens, types, merges, pre, tok.bos_id,
                 tok.chat.assistant_end if tok.chat else None)


def _encoded(x: np.ndarray, ftype: gguf.LlamaFileType):
    """(data, raw dtype or None) of one tensor at the file type; vectors (norms, biases) stay
    f32, and q8_0 keeps f16 for a matrix whose rows are not whole 32-value blocks."""
    if x.ndim == 1 or ftype == gguf.LlamaFileType.ALL_F32:
        return x, None
    if ftype == gguf.LlamaFileType.MOSTLY_Q8_0 and x.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(x, q), q
    return x.astype(np.float16), None


def _write(w: gguf.GGUFWriter, params, cfg: Config, v: Vocab, ftype: gguf.LlamaFileType) -> None:
    m, arch = cfg.model, architecture(cfg.model)
    w.add_name(cfg.name)
    w.add_file_type(int(ftype))
    if ftype == gguf.LlamaFileType.MOSTLY_Q8_0:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_context_length(m.block_size)
    w.add_embedding_length(m.n_embd)
    w.add_block_count(m.n_layer)
    w.add_feed_forward_length(m.hidden)
    w.add_head_count(m.n_head)
    if arch == "gpt2":
        w.add_layer_norm_eps(m.norm_eps)
    else:
        w.add_head_count_kv(m.kv_heads)
        w.add_key_length(m.head_dim)
        w.add_value_length(m.head_dim)
        w.add_rope_dimension_count(m.head_dim)
        w.add_rope_freq_base(m.rope_theta)
        w.add_layer_norm_rms_eps(m.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    w.add_token_merges(v.merges)
    # documents start with BOS (as lm trains) and the next document's BOS ends a text
    w.add_bos_token_id(v.bos)
    w.add_eos_token_id(v.bos)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if v.eot is not None:
        w.add_eot_token_id(v.eot)
        w.add_chat_template(JINJA_TEMPLATE)
    for name, x in tensors(params, m).items():
        data, raw = _encoded(x, ftype)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()


def export(params, cfg: Config, tok: Tokenizer, out: str, type: str = "f32") -> str:
    """Write `out` (a .gguf file); every check runs before anything is written."""
    ftype = file_type(type)
    arch = architecture(cfg.model)
    v = vocab(tok)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    try:
        w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[ARCHS[arch]])
        try:
            _write(w, params, cfg, v, ftype)
        finally:
            w.close()
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def check(run, path: str, task_names=("identity", "arithmetic_easy", "spelling", "recall"),
          per_task: int = 5, new_tokens: int = 24) -> dict:
    """llama.cpp (llama-cpp-python) on the exported file against lm in float32, on held-out
    chat prompts of `task_names`: greedy replies of `new_tokens` tokens identical or not, and the
    largest logit difference at the first reply token."""
    import llama_cpp  # requirements-gguf.txt; it loads llama.cpp's shared library: check only
    m = dataclasses.replace(run.config.model, dtype="float32")
    logits = jax.jit(lambda p, ids: model.apply(p, m, ids))

    def last(ids):
        return np.asarray(logits(run.params, jnp.asarray([ids], jnp.int32)))[0, -1]
    # an f32 KV cache: llama.cpp's default f16 cache alone moves logits by ~2e-3 (docs/gguf.md)
    llm = llama_cpp.Llama(path, n_ctx=m.block_size, logits_all=True, type_k=0, type_v=0,
                          verbose=False)
    same, total, diff = 0, 0, 0.0
    try:
        for name in task_names:
            for i in range(per_task):
                ids = render_for_completion(tasks.get(name).example("test", i), run.tokenizer)
                ids = ids[-(m.block_size - new_tokens):]
                llm.reset()
                llm.eval(ids)
                diff = max(diff, float(np.abs(np.asarray(llm.scores[llm.n_tokens - 1])
                                              - last(ids)).max()))
                theirs, ours = [], list(ids)
                for _ in range(new_tokens):
                    theirs.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                    llm.eval([theirs[-1]])
                    ours.append(int(np.argmax(last(ours))))
                same += theirs == ours[len(ids):]
                total += 1
    finally:
        llm.close()
    return {"prompts": total, "greedy_identical": same, "new_tokens": new_tokens,
            "first_token_logit_max_abs_diff": diff, "tasks": list(task_names)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.interop.gguf",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="run -> .gguf file")
    e.add_argument("--run", required=True, help="run dir, checkpoint dir, or experiment name")
    e.add_argument("--step", type=int, default=None)
    e.add_argument("--out", required=True, help="the .gguf file to write")
    e.add_argument("--type", default="f32", help=f"weight type: {', '.join(TYPES)} (default f32)")
    c = sub.add_parser("check", help="llama.cpp on a .gguf file against lm on its run")
    c.add_argument("--run", required=True, help="the run the file was exported from")
    c.add_argument("--step", type=int, default=None)
    c.add_argument("--gguf", required=True, help="the .gguf file")
    c.add_argument("--tasks", default="identity,arithmetic_easy,spelling,recall",
                   help="held-out chat prompts from these tasks")
    c.add_argument("--per_task", type=int, default=5)
    c.add_argument("--new_tokens", type=int, default=24)
    a = p.parse_args(argv)
    try:
        if a.cmd == "check":
            if not os.path.isfile(a.gguf):
                raise FileNotFoundError(f"--gguf {a.gguf}: no such file")
            run = runs.load(a.run, step=a.step)
            print(json.dumps(check(run, a.gguf, a.tasks.split(","), a.per_task, a.new_tokens)))
            return 0
        file_type(a.type)                        # before loading the run
        run = runs.load(a.run, step=a.step)
        print(export(run.params, run.config, run.tokenizer, a.out, a.type))
    except (hf.InteropError, runs.RunError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
