"""LLM psychology (issue 26) as experiments on the tiny chat chain.

Hallucination and working memory on a synthetic knowledge base (`lm.tasks.knowledge`): made-up
people read in pretraining 0-128 times, then asked about after SFT.

    python -m lm.main -e chat_tiny_base_kb          # chat_tiny_base + the biographies
    python -m lm.main -e chat_tiny_sft_kb           # plain SFT: every fact question answered
    python -m tools.probe_knowledge --run chat_tiny_sft_kb --out runs/knowledge_probe
    python -m lm.main -e chat_tiny_sft_kb_probed    # SFT: known facts answered, unknown refused
    python -m lm.main -e chat_tiny_sft_kb_naive     # baseline: refuse people seen < 8 times
    python -m lm.main -e chat_tiny_sft_kb_search    # SFT: search the knowledge base, then answer
    python -m lm.main -e chat_tiny_sft_kb_qa_light_read   # working memory taught: passage, question
    python -m lm.main -e chat_tiny_sft_kb_qa_search_read  # search, with more of it and reading

The same chain on `chat_tiny_kb_qa` (`_kb_qa` for `_kb` in every name; the probe writes
runs/knowledge_probe_qa), and each SFT of either at a third of the learning rate (`_light` after
the variant: chat_tiny_sft_kb_qa_light, _light_probed, ...; probe in
runs/knowledge_probe_qa_light). In `chat_tiny_kb_qa` question-answer conversations about plain
SFT's people are in pretraining too, so the base may learn to answer from what it read (mixed training, Allen-Zhu and
Li, Physics of Language Models 3.1); the probe's and the held-out people are still read only as
biographies. `python -m tools.psychology --parts knowledge --kb kb_qa [--recipe light]` runs it all.

Each SFT run evaluates the held-out people (never in SFT data), greedy: correct / hallucinated /
refused, overall and per pretraining frequency (`eval/kb_qa_<verdict>_f<n>`), and the same
questions with the biography in the user turn (`kb_qa_context`: working memory).

Models need tokens to think: the same arithmetic SFT'd in three reply formats (`lm.tasks.thinking`:
calculator, reasoning written out, answer first), nothing else in the mixture that calls the
calculator; held-out problems and mental addition of 1-4 digit numbers.

    python -m lm.main -e chat_tiny_sft_think_calculator    # and _reasoning, _answer_first

Tokenization and spelling: the chain's BPE model against a byte-level one (the same model and
steps, a tokenizer with no merges: 256 bytes + the chat specials), each SFT'd with spelling
answered by the calculator (`tool`, the chain's), spelled out and counted by position
(`spell`), or with the count alone (`direct`).

    python -m lm.main -e chat_tiny_base_bytes
    python -m lm.main -e chat_tiny_sft_spell_direct        # and _spell, _tool; _bytes_* on bytes

Knowledge of self: what the model says it is, without identity data and with it.

    python -m lm.eval --run chat_tiny_base --tasks whoami_teacher,identity   # the base model
    python -m lm.main -e chat_tiny_sft_noid         # SFT without the identity task
    (chat_tiny_sft: SFT with it)

graded on the held-out identity phrasings (`eval/whoami_teacher_names_self`, `_names_maker`,
`_claims_other`: naming another assistant, `lm.tasks.identity.OTHER_ASSISTANTS`).
"""
from __future__ import annotations

import dataclasses

from lm.config import Config
from lm.tasks.knowledge import ATTRIBUTES, knowledge_base
from lm.tokenizer import trained_specials

from experiments import register
from experiments.chat import STUDY_SFT_STEPS, chat_sft_recipe, chat_tiny_base

KB_EVAL = "kb_qa,kb_qa_seen_phrasings,kb_qa_context,identity,arithmetic_easy,recall"


# the knowledge-base chains: `_kb` (biographies only) and `_kb_qa` (mixed training: question-answer
# conversations about plain SFT's people in pretraining too, Allen-Zhu and Li, Physics of LMs 3.1)
KB_VARIANTS = {"kb": "chat_tiny_kb", "kb_qa": "chat_tiny_kb_qa"}


def _base_kb(corpus: str) -> Config:
    cfg = chat_tiny_base()
    cfg.data = dataclasses.replace(cfg.data, source=corpus, tokenizer_source="chat_tiny")
    return cfg


def _sft(variant: str, mixture: str, files: str = "") -> Config:
    cfg = chat_sft_recipe(STUDY_SFT_STEPS)
    cfg.init_from = f"chat_tiny_base_{variant}"
    cfg.sft = dataclasses.replace(cfg.sft, mixture=cfg.sft.mixture + "," + mixture, files=files)
    # every held-out person's every attribute, for kb_qa and kb_qa_context alike
    held_out = len(knowledge_base().split("test")) * len(ATTRIBUTES)
    cfg.eval = dataclasses.replace(cfg.eval, tasks=KB_EVAL, final_limit=held_out)
    return cfg


def _search(variant: str) -> Config:
    cfg = _sft(variant, "kb_search:1.5")
    cfg.eval = dataclasses.replace(cfg.eval, tasks="kb_search," + KB_EVAL)
    return cfg


def _light(cfg: Config) -> Config:
    """The same SFT at a third of the learning rate: plain SFT (lr 1e-3, 800 steps) overwrote
    most of what the base stored about people it does not mention (docs/results.md)."""
    cfg.optim = dataclasses.replace(cfg.optim, lr=3e-4, min_lr=3e-6)
    return cfg


# the SFT recipes of the knowledge chain: the chain's own, and `_light` (a third of its learning
# rate), which keeps what the base stored (docs/results.md, "A lighter SFT keeps what the base
# stored"); every SFT of the chain exists in each, named chat_tiny_sft_<variant><recipe><kind>
RECIPES = {"": lambda cfg: cfg, "_light": _light}


def probe_dir(variant: str, recipe: str = "") -> str:
    """Where `tools.probe_knowledge` writes the probe of the variant's plain SFT in `recipe` (the
    probed SFT of that recipe reads its fix.jsonl), relative to the workdir."""
    return "runs/knowledge_probe" + variant[2:] + recipe


_WHAT = {"kb": "the knowledge base's biographies (each made-up person 0-128 times)",
         "kb_qa": "the knowledge base's biographies (each made-up person 0-128 times) and "
                  "question-answer conversations about plain SFT's people (mixed training)"}
_HOW = {"": "", "_light": ", at a third of the chain's learning rate (3e-4 instead of 1e-3: a "
                          "lighter SFT keeps what the base stored)"}
for _v, _corpus in KB_VARIANTS.items():
    _base = f"chat_tiny_base_{_v}"
    register(_base, f"chat_tiny_base on {_corpus}: the chain's corpus plus {_WHAT[_v]}, the "
             "chain's tokenizer")(lambda c=_corpus: _base_kb(c))
    for _r, _recipe in RECIPES.items():
        _plain = f"chat_tiny_sft_{_v}{_r}"
        register(_plain, f"plain SFT of {_base}{_HOW[_r]}: the chain's mixture plus fact "
                 "questions about half the knowledge base's train people (the other half is the "
                 "probe's), every one answered")(lambda v=_v, r=_recipe: r(_sft(v, "kb_qa:1.5")))
        register(f"{_plain}_naive", f"SFT of {_base}{_HOW[_r]} that refuses questions about "
                 "people seen fewer than 8 times in pretraining (the frequency-threshold "
                 "baseline)")(lambda v=_v, r=_recipe: r(_sft(v, "kb_qa_naive:1.5")))
        register(f"{_plain}_probed", f"SFT of {_base}{_HOW[_r]} on the probe's labels "
                 f"(tools.probe_knowledge on {_plain}): known facts answered, unknown refused")(
            lambda v=_v, r=_recipe, n=_r: r(_sft(v, "kb_probed:1.5",
                                                 files=f"kb_probed={probe_dir(v, n)}/fix.jsonl")))
        register(f"{_plain}_search", f"SFT of {_base}{_HOW[_r]} that searches before answering "
                 "a question about a person (lm.search over the knowledge base); evaluated with "
                 "the tool")(lambda v=_v, r=_recipe: r(_search(v)))


@register("chat_tiny_sft_kb_qa_light_read", "chat_tiny_sft_kb_qa_light plus the same people's "
          "questions with their biography in the user turn (kb_qa_context's train items): does "
          "reading a passage, once taught, answer at every pretraining frequency?")
def chat_tiny_sft_kb_qa_light_read() -> Config:
    return _light(_sft("kb_qa", "kb_qa:1.5,kb_qa_context:1"))


@register("chat_tiny_sft_kb_qa_search_read", "chat_tiny_sft_kb_qa_search with twice its share of "
          "search conversations and passage-reading ones (kb_qa_context's train items): does "
          "practice at copying the name into the query and at reading the passage take the "
          "tool's answers towards 0.9?")
def chat_tiny_sft_kb_qa_search_read() -> Config:
    cfg = _search("kb_qa")
    mixture = cfg.sft.mixture.replace("kb_search:1.5", "kb_search:3") + ",kb_qa_context:1"
    cfg.sft = dataclasses.replace(cfg.sft, mixture=mixture)
    return cfg


@register("chat_tiny_sft_noid", "chat_tiny_sft without the identity task: who does the model say "
          "it is when no data told it?")
def chat_tiny_sft_noid() -> Config:
    cfg = chat_sft_recipe(STUDY_SFT_STEPS)
    mixture = [m for m in cfg.sft.mixture.split(",") if not m.startswith("identity:")]
    cfg.sft = dataclasses.replace(cfg.sft, mixture=",".join(mixture))
    cfg.eval = dataclasses.replace(cfg.eval, tasks="whoami_teacher,identity,arithmetic_easy,recall")
    return cfg


# the chain's SFT mixture without the tasks whose replies use the calculator (so a format's
# model sees only its own way of doing arithmetic)
_NO_CALC = "identity:1.5,spelling:2,recall:2,copy:0.5,mmlu:0.2,dolly:0.25,alpaca:0.25"
THINK_EVAL = "arithmetic_easy,mental_d1,mental_d2,mental_d3,mental_d4," + ",".join(
    f"mental_d{d}_seen_phrasings" for d in (1, 2, 3, 4))


def _think(fmt: str) -> Config:
    cfg = chat_sft_recipe(STUDY_SFT_STEPS)
    arith = "arithmetic_easy" if fmt == "calculator" else f"arithmetic_easy_{fmt}"
    cfg.sft = dataclasses.replace(cfg.sft, mixture=f"{_NO_CALC},{arith}:3,mental_add_{fmt}:2")
    cfg.eval = dataclasses.replace(cfg.eval, tasks=THINK_EVAL, final_limit=400)
    return cfg


for _fmt in ("calculator", "reasoning", "answer_first"):
    register(f"chat_tiny_sft_think_{_fmt}", f"SFT of chat_tiny_base with arithmetic replies in "
             f"the {_fmt.replace('_', ' ')} format only (same problems, same budget): held-out "
             f"problems and mental addition by operand size")((lambda f: lambda: _think(f))(_fmt))


BYTES = 256 + len(trained_specials())          # a BPE with no merges: bytes + the specials
SPELL_EVAL = "spelling,everyday_letters,spelling_ood"
BYTES_REPLY_BUDGET = 384


@register("chat_tiny_base_bytes", "chat_tiny_base with a byte-level tokenizer (no merges; the chat "
          "specials kept): the same model, steps and tokens per step")
def chat_tiny_base_bytes() -> Config:
    cfg = chat_tiny_base()
    cfg.model = dataclasses.replace(cfg.model, vocab_size=BYTES)
    cfg.data = dataclasses.replace(cfg.data, tokenizer=f"bpe:{BYTES}")
    return cfg


def _spell(fmt: str, bytes_: bool) -> Config:
    cfg = chat_sft_recipe(STUDY_SFT_STEPS)
    task = "spelling" if fmt == "tool" else f"spelling_{fmt}"
    # the chain's mixture with its spelling task in this format and without the spelling drill
    # (which spells words out in every variant: the formats would differ in one task only)
    mixture = [m for m in cfg.sft.mixture.split(",") if not m.startswith("spelling_drill:")]
    cfg.sft = dataclasses.replace(cfg.sft, mixture=",".join(mixture).replace("spelling:",
                                                                            f"{task}:"))
    cfg.eval = dataclasses.replace(cfg.eval, tasks=SPELL_EVAL, final_limit=400)
    if bytes_:
        cfg.init_from = "chat_tiny_base_bytes"
        cfg.model = dataclasses.replace(cfg.model, vocab_size=BYTES)
        # the tasks' reply budgets are in the chain's BPE tokens; in bytes the same replies take
        # 2.3-3.3x as many (spelling's longest held-out reference: 61 BPE tokens, 160 bytes), and
        # at 128 the calculator format's replies were cut before their answer (landing 49)
        cfg.eval = dataclasses.replace(cfg.eval, max_new_tokens=BYTES_REPLY_BUDGET)
    return cfg


for _fmt in ("tool", "spell", "direct"):
    for _bytes in (False, True):
        register(f"chat_tiny_sft_{'bytes_' if _bytes else ''}spell_{_fmt}",
                 f"SFT of chat_tiny_base{'_bytes' if _bytes else ''} with spelling answered "
                 f"{dict(tool='with the calculator', spell='by spelling out', direct='directly')[_fmt]}"
                 f": held-out words")((lambda f, b: lambda: _spell(f, b))(_fmt, _bytes))
