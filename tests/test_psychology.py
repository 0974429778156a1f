"""LLM psychology (issue 26): the synthetic knowledge base (deterministic, its held-out people
never in SFT data), the judge, the probe, the search tool, reply formats, knowledge of self."""
import json
import os
import re

import pytest

from lm import tasks
from lm.data import corpus
from lm.tasks import knowledge as kn
from lm.tasks import thinking


def test_knowledge_base_is_deterministic_and_balanced():
    a, b = kn.KnowledgeBase(per_cell=5, seed=3), kn.KnowledgeBase(per_cell=5, seed=3)
    assert a.people == b.people
    assert a.people != kn.KnowledgeBase(per_cell=5, seed=4).people
    names = [p.name for p in a.people]
    assert len(set(names)) == len(names) == 5 * len(kn.FREQUENCIES) * 2
    for split in ("train", "test"):
        for f in kn.FREQUENCIES:
            assert sum(p.split == split and p.frequency == f for p in a.people) == 5
    bios = a.biographies()
    assert len(bios) == 2 * 5 * sum(kn.FREQUENCIES)
    # each person appears exactly `frequency` times, every fact in every sighting
    for p in a.people:
        mine = [t for t in bios if p.name in t]
        assert len(mine) == p.frequency
        for t in mine:
            assert all(p.value(x) in t for x in kn.ATTRIBUTES)
        if p.frequency >= 2:
            assert len(set(mine)) > 1                    # phrasings vary between sightings


def test_held_out_people_never_reach_sft_data():
    kb = kn.knowledge_base()
    held = {p.name for p in kb.split("test")}
    # the probe asks about people plain SFT never answered about; the naive baseline's people
    # are the probe's (the same people as the probe-based fix)
    probed = {p.name for p in kb.probe_people()}
    plain, naive = tasks.get("kb_qa"), tasks.get("kb_qa_naive")
    assert probed and not probed & {plain.item("train", i)[0].name
                                    for i in range(plain.size("train"))}
    assert {naive.item("train", i)[0].name for i in range(naive.size("train"))} == probed
    assert len(probed) + plain.size("train") // len(kn.ATTRIBUTES) == len(kb.split("train"))
    for i in range(0, plain.size("train"), 7):      # replies do not restate the made-up name
        c = plain.example("train", i)
        assert c["person"] not in c["messages"][-1]["content"]
    reads = tasks.get("kb_qa_context")
    assert {reads.item("train", i)[0].name for i in range(reads.size("train"))} == \
        {p.name for p in kb.qa_people()}                 # the probe's people stay unread in SFT
    for name in ("kb_qa", "kb_qa_naive", "kb_qa_context"):
        t = tasks.get(name)
        for i in range(t.size("train")):
            text = json.dumps(t.example("train", i)["messages"])
            assert not any(h in text for h in held), (name, i)
    # train and test questions are phrased differently
    t = tasks.get("kb_qa")
    qa = {t.example("train", i)["messages"][0]["content"].replace(t.item("train", i)[0].name, "X")
          for i in range(200)}
    qb = {t.example("test", i)["messages"][0]["content"].replace(t.item("test", i)[0].name, "X")
          for i in range(200)}
    assert qa and qb and not qa & qb


def test_naive_refuses_exactly_the_rare_people():
    t = tasks.get("kb_qa_naive")
    for i in range(0, t.size("train"), 7):
        c = t.example("train", i)
        refused = kn.judge(t.item("train", i)[0], c["attribute"], c["messages"][-1]["content"])
        assert (refused == "refused") == (c["frequency"] < kn.NAIVE_MIN)


def test_judge_grades_known_phrasings():
    p = kn.knowledge_base().split("test")[0]
    for a in kn.ATTRIBUTES:
        assert kn.judge(p, a, kn.answer(p, a)) == "correct"
        for k in range(len(kn.REFUSALS)):
            assert kn.judge(p, a, kn.refusal(p, k)) == "refused"
    wrong_city = next(c for c in kn.CITIES if c != p.city)
    assert kn.judge(p, "city", f"{p.name} lives in {wrong_city}.") == "hallucinated"
    assert kn.judge(p, "city", f"Either {p.city} or {wrong_city}.") == "hallucinated"
    assert kn.judge(p, "city", f"I don't know, maybe {wrong_city}?") == "hallucinated"
    other_year = str(int(p.born) + 1)
    assert kn.judge(p, "born", f"{p.name} was born in {other_year}.") == "hallucinated"
    assert kn.judge(p, "born", f"In {p.born}, I think.") == "correct"
    assert kn.judge(p, "pet", "A lovely animal.") == "hallucinated"    # neither answer nor refusal
    with pytest.raises(ValueError, match="unknown knowledge-base attribute 'age'"):
        kn.judge(p, "age", "42")


def test_grades_report_each_verdict_per_frequency():
    t = tasks.get("kb_qa")
    c = t.example("test", 0)
    g = t.grades(c, c["messages"][-1]["content"])
    f = c["frequency"]
    assert g == {"correct": True, f"correct_f{f}": True, "hallucinated": False,
                 f"hallucinated_f{f}": False, "refused": False, f"refused_f{f}": False}
    assert t.evaluate(c, c["messages"][-1]["content"])


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    from lm import runs
    from lm.config import Config, DataConfig, ModelConfig
    from lm.tokenizer import train_bpe, trained_specials
    kb = kn.knowledge_base()
    tok = train_bpe([p.biography(0) for p in kb.people[:80]], 256 + len(trained_specials()) + 60)
    cfg = Config(name="tiny_sft", stage="sft", init_from="x",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1,
                                   n_head=2, n_embd=32), data=DataConfig(tokenizer="parent"))
    return runs.load(runs.save_run(str(tmp_path_factory.mktemp("kb_sft")), cfg, tok))


def test_probe_labels_are_reproducible_and_make_the_fix_data(tiny_chat):
    from tools import probe_knowledge as pk
    kw = dict(k=3, temperature=1.0, seed=5, limit=12, progress=False)
    a = pk.probe(tiny_chat, batch_size=12, **kw)
    b = pk.probe(tiny_chat, batch_size=5, **kw)      # other batching: the same samples
    assert a["labels"] == b["labels"] and len(a["labels"]) == 12
    c = pk.probe(tiny_chat, batch_size=12, **{**kw, "seed": 6})
    assert [r["sample"] for r in c["labels"]] != [r["sample"] for r in a["labels"]]
    # a random model knows nothing: the fix data refuses; a fact marked known is answered
    a["labels"][0]["known"] = True
    fix = pk.fix_conversations(a, phrasings=2)
    assert len(fix) == 24
    people = {p.name: p for p in kn.knowledge_base().split("train")}
    for j, conv in enumerate(fix):
        r = a["labels"][j // 2]
        verdict = kn.judge(people[r["person"]], r["attribute"], conv["messages"][-1]["content"])
        assert verdict == ("correct" if r["known"] else "refused")
    held = {p.name for p in kn.knowledge_base().split("test")}
    assert not any(h in json.dumps(fix) for h in held)


def test_probe_threshold_auto_follows_the_greedy_replies(tiny_chat, monkeypatch):
    """`calibrate` scores each threshold's labels against the greedy verdicts, and
    --threshold auto labels with the best one: a model whose greedy reply is right whenever 2 of
    5 samples are gets the threshold 0.4, not the default 0.6."""
    from tools import probe_knowledge as pk
    rows = [{"correct": c, "greedy": "correct" if c >= 2 else "hallucinated"}
            for c in (0, 1, 2, 2, 3, 5, 1, 0)]
    cal = pk.calibrate(rows, 5)
    assert [c["threshold"] for c in cal] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert cal[1] == {"threshold": 0.4, "known": 0.5, "agreement": 1.0}
    assert cal[2]["agreement"] == 0.75 and cal[0]["agreement"] == 0.75
    res = pk.probe(tiny_chat, k=3, seed=5, limit=9, batch_size=9, progress=False,
                   threshold="auto")
    best = max(res["calibration"], key=lambda c: (c["agreement"], c["threshold"]))
    assert res["threshold"] == best["threshold"]
    assert all(r["known"] == (r["correct"] >= res["threshold"] * 3 - 1e-9)
               for r in res["labels"])
    assert all(r["greedy"] in ("correct", "hallucinated", "refused") for r in res["labels"])
    for bad in ("often", "0", "1.5"):
        with pytest.raises(SystemExit):
            pk.main(["--run", tiny_chat.run_dir, "--out", "unused", "--threshold", bad])


def test_confidence_refusal_parts():
    """The reply's confidence is its least likely sampled token (forced tool output aside); the
    cutoff agrees best with which answers are right; AUROC ranks right above wrong."""
    import math
    from tools import probe_knowledge as pk
    reply = {"logprobs": [-0.01, math.log(0.3), -0.2, math.log(0.01)],
             "forced": [False, False, False, True]}
    assert pk.answer_confidence(reply) == pytest.approx(0.3)
    assert pk.answer_confidence({"logprobs": [], "forced": []}) == 0.0
    rows = [(0.9, "correct"), (0.8, "correct"), (0.6, "hallucinated"), (0.7, "correct"),
            (0.2, "hallucinated"), (0.65, "hallucinated")]
    assert pk.best_cutoff(rows) == 0.7         # answers the three right ones, refuses the rest
    assert pk.best_cutoff([(0.5, "hallucinated")]) > 0.5
    assert pk.auroc([0.9, 0.8, 0.2], [True, True, False]) == 1.0
    assert pk.auroc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(pk.auroc([0.5], [True]))


def test_confidence_mode_writes_verdicts_before_and_after(tiny_chat, tmp_path):
    from tools import probe_knowledge as pk
    assert pk.main(["--run", tiny_chat.run_dir, "--confidence", "--out", str(tmp_path)]) == 0
    res = json.load(open(tmp_path / "confidence.json"))
    assert len(res["rows"]) == kn.KnowledgeQA().size("test")
    for key in ("before", "after"):
        for cell in res[key].values():
            assert sum(cell[v] for v in ("correct", "hallucinated", "refused")) == pytest.approx(1)
    # refusing never makes a right answer of a wrong one, nor answers what was refused
    for r in res["rows"]:
        assert r["abstained"] in (r["verdict"], "refused")
        assert (r["abstained"] == r["verdict"]) == (r["verdict"] == "refused"
                                                    or r["confidence"] >= res["cutoff"])
    assert (tmp_path / "confidence.md").exists()


def test_cloze_ranks_values_by_likelihood_per_frequency(tiny_chat, monkeypatch):
    """The cloze reads the true value's rank from the likelihoods: a scorer that favours the
    truth for people seen >= 8 times gives 1.0 there and 0 below; the real scorer runs too."""
    from tools import probe_knowledge as pk
    kb = kn.KnowledgeBase(per_cell=1, seed=2)
    real = pk.cloze(tiny_chat, kb=kb)
    assert real["items"] == len(kb.people) * len(pk.CLOZE)
    assert all(0 <= row["mean"] <= 1 for row in real["by_frequency"].values())
    tok = tiny_chat.tokenizer

    def knows(who):         # a scorer that ranks the truth first exactly for people `who` picks
        truth = {tok.decode(ctx[1:]) + tok.decode(cont): who(p)
                 for p in kb.people for a, prefix in pk.CLOZE.items()
                 for ctx, cont in [pk.benchmarks.encode_pair(
                     tok, prefix.format(name=p.name),
                     " " + (kn.with_article(p.value(a)) if a == "profession" else p.value(a)))]}
        return lambda params, cfg, reqs, **kw: [
            ({True: 1.0, False: -1.0}.get(truth.get(tok.decode(c[1:]) + tok.decode(t)), 0.0), True)
            for c, t in reqs]
    monkeypatch.setattr(pk, "loglikelihood", knows(lambda p: p.frequency >= 8))
    fake = pk.cloze(tiny_chat, kb=kb)
    for f, row in fake["by_frequency"].items():
        assert row["mean"] == (1.0 if int(f) >= 8 else 0.0), (f, row)
    assert "| 128 | 8 | 1.000" in pk.cloze_markdown(fake)
    # by whose facts: a model that knows only the held-out people
    monkeypatch.setattr(pk, "loglikelihood", knows(lambda p: p.split == "test"))
    groups = pk.cloze(tiny_chat, kb=kb)["by_group"]
    assert set(groups["test"].values()) == {1.0}
    assert set(groups["qa"].values()) == set(groups["probe"].values()) == {0.0}


def test_search_tool_finds_each_person_and_reads_nothing_else(tmp_path):
    from lm import search
    idx = search.knowledge_index()
    kb = kn.knowledge_base()
    for p in kb.people[::13]:
        assert idx.search(p.name) == kn.search_passage(p)
        assert search.run_tool(search.search_call(p.name)) == kn.search_passage(p)
    # a miscopied name (as the tiny model writes them) still finds its person; a query that
    # shares little with every passage finds nothing
    for p in kb.people[5::37]:
        first, last = p.name.split()
        assert idx.search(f"{first[:-1]}q {last[:-3]}{last[-1]}x") == kn.search_passage(p), p
    for q in ("weather in Paris tomorrow", "Barack Obama", "who won the 1998 world cup"):
        assert idx.search(q) == "No results.", q
    # the SFT reference's tool output is exactly what the tool returns
    t = tasks.get("kb_search")
    c = t.example("test", 11)
    parts = c["messages"][-1]["content"]
    assert parts[1]["text"] == search.run_tool(parts[0]["text"])
    assert t.evaluate(c, f"<<{parts[0]['text']}={parts[1]['text']}>>{parts[2]['text']}")
    # a passage in the tool output is not an answer: only the text after it is judged
    assert not t.evaluate(c, f"<<{parts[0]['text']}={parts[1]['text']}>> I don't know.")
    # nothing outside the corpus: a path or special-token text is words to match
    secret = tmp_path / "secret.txt"
    secret.write_text("the launch code is 0000")
    for q in (str(secret), "/etc/passwd", "<|assistant_end|><|bos|>", "../../etc/hostname"):
        got = idx.search(q)
        assert got == "No results." or got in idx.passages
    assert search.run_tool('search("' + "x" * 300 + '")').startswith("Error: search query longer")
    assert search.run_tool('search("")') == "Error: empty search query"
    assert search.run_tool("2 + 3") == "5"                     # anything else: the calculator
    with pytest.raises(search.SearchError, match="no passages"):
        search.SearchIndex(["", "  "])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(search.SearchError, match="no passages"):
        search.from_file(str(empty))
    with pytest.raises(search.SearchError, match="No such file"):
        search.from_file(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n[1, 2]\n')
    with pytest.raises(search.SearchError, match="bad.jsonl:2"):
        search.from_file(str(bad))
    own = search.from_file(str(_write(tmp_path / "own.txt", "Zorblat lives on the moon.\nOther.")))
    assert search.run_tool('search("Zorblat")', own) == "Zorblat lives on the moon."


def _write(path, text):
    path.write_text(text)
    return path


def test_search_grades_say_whether_the_persons_passage_was_found():
    """kb_search's `found`: a search call's output held the asked person's passage (the query
    was copied well enough), apart from whether the answer read it right."""
    from lm import conversation as chat
    t = tasks.get("kb_search")
    c = t.example("test", 7)
    person = t.person_of(c)
    right = chat.reply_text(c["messages"][-1]["content"])     # the reference, as rendered
    passage = kn.search_passage(person)
    hit = f'<<search("{person.name}")={passage}>> They live in Nowhere.'
    miss = '<<search("Pothbix Grounkuxbeth")=No results.>> ' + passage
    assert t.grades(c, hit)["found"] and not t.grades(c, miss)["found"]
    assert "found" not in tasks.get("kb_qa").grades(tasks.get("kb_qa").example("test", 7), hit)
    assert t.grades(c, right)["found"] and t.grades(c, right)["correct"]


def test_engine_runs_a_search_call_and_a_special_token_query_stays_text(tiny_chat):
    """The default engine tool answers a search call with the passage as forced tokens; a query
    holding special-token text is decoded and re-encoded as plain text."""
    from lm.search import engine_tool
    tok = tiny_chat.tokenizer
    run = engine_tool(tok)
    p = kn.knowledge_base().people[5]
    out = tok.decode(run(tok.encode(f'search("{p.name}")')))
    assert out == kn.search_passage(p)
    specials = set(tok.chat.stops) | {tok.chat.python_start, tok.chat.output_end}
    ids = run(tok.encode('search("<|assistant_end|> <|python_start|>")'))
    assert not specials & set(ids)


def test_knowledge_report_tables_and_goals(tmp_path):
    import dataclasses
    from lm import runs
    from lm.config import Config, DataConfig, EvalConfig, ModelConfig
    from lm.tokenizer import train_bpe, trained_specials
    from tools import knowledge_report as kr
    tok = train_bpe(["a b c"] * 10, 256 + len(trained_specials()) + 2)
    cfg = Config(name="x", stage="sft", init_from="x", data=DataConfig(tokenizer="parent"),
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1,
                                   n_head=2, n_embd=16),
                 eval=EvalConfig(tasks="kb_qa", final_limit=1000))
    n = kr.counts("kb_qa", 1000)          # a limit below the split's size: spread over copies
    assert set(n) == set(kn.FREQUENCIES) and sum(n.values()) == 1000

    def fake(name, correct, halluc):
        d = runs.save_run(str(tmp_path / name), dataclasses.replace(cfg, name=name), tok)
        row = {"step": 1, "final": True, "eval/kb_qa": 0.5, "eval/kb_qa_n": 1000}
        for f in kn.FREQUENCIES:
            c, h = correct(f), halluc(f)
            row.update({f"eval/kb_qa_correct_f{f}": c, f"eval/kb_qa_hallucinated_f{f}": h,
                        f"eval/kb_qa_refused_f{f}": round(1 - c - h, 6)})
        with open(f"{d}/metrics.jsonl", "w") as fh:
            fh.write(json.dumps(row) + "\n")
        return d
    plain = fake("plain", lambda f: 0.6 if f >= 16 else 0.1, lambda f: 0.4 if f >= 16 else 0.9)
    good = fake("good", lambda f: 0.58 if f >= 16 else 0.05, lambda f: 0.37 if f >= 16 else 0.05)
    bad = fake("bad", lambda f: 0.4 if f >= 16 else 0.0, lambda f: 0.0 if f >= 16 else 0.2)
    out = tmp_path / "rep"
    assert kr.main(["--runs", f"plain={plain}", f"good={good}", f"bad={bad}",
                    "--out", str(out)]) == 0
    res = json.loads((out / "knowledge.json").read_text())
    g = {x["label"]: x for x in res["goals"]}
    assert g["good"]["hallucination_never_seen_ok"] and g["good"]["frequent_accuracy_ok"]
    assert g["good"]["frequent_over_refusal_ok"]
    assert g["bad"]["frequent_accuracy_drop"] == pytest.approx(0.2)
    assert not g["bad"]["frequent_accuracy_ok"] and not g["bad"]["frequent_over_refusal_ok"]
    cell = res["rows"][0]["tasks"]["kb_qa"]["by_copies"]["0"]["hallucinated"]
    assert cell["n"] == n[0] and cell["se"] == pytest.approx((0.9 * 0.1 / n[0]) ** 0.5)
    assert (out / "knowledge.png").stat().st_size > 1000
    assert "not met" in (out / "knowledge.md").read_text()
    # a search run: its searches' share that found the person, from a later lm.eval's eval.json
    with open(f"{good}/metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 1, "final": True, "eval/kb_search": 0.2,
                             "eval/kb_search_correct_f0": 0.2,
                             "eval/kb_search_hallucinated_f0": 0.8}) + "\n")
    json.dump({"chat": {"eval/kb_search_found": 0.25}}, open(f"{good}/eval.json", "w"))
    assert kr.main(["--runs", f"plain={plain}", f"good={good}", "--out", str(out)]) == 0
    res = json.loads((out / "knowledge.json").read_text())
    assert res["rows"][1]["tasks"]["kb_search"]["found"] == 0.25
    assert res["goals"][0]["task"] == "kb_search"          # a search model is judged with its tool
    assert res["goals"][0]["hallucination_never_seen"] == pytest.approx(0.8)
    assert "good: the search found the asked person's passage for 0.250" in \
        (out / "knowledge.md").read_text()


def test_identity_grades_name_self_maker_and_other_assistants():
    from lm.tasks.identity import OTHER_ASSISTANTS
    t = tasks.get("whoami_teacher")
    c = t.example("test", 0)
    ref = c["messages"][-1]["content"]
    assert t.grades(c, ref) == {"names_self": True, "names_maker": True, "claims_other": False}
    for other in OTHER_ASSISTANTS:
        g = t.grades(c, f"I am {other}, a helpful assistant.")
        assert g["claims_other"] and not g["names_self"]
    assert not t.grades(c, "I read metadata about chatgptish things.")["claims_other"]
    student = tasks.get("whoami_student")
    assert student.grades(student.example("test", 0), "I'm Pico.")["names_self"]
    import experiments
    mix = experiments.get("chat_tiny_sft_noid").sft.mixture
    assert "identity" not in mix and "arithmetic_easy" in mix


def test_reply_formats_share_problems_and_grade_the_stated_answer():
    from lm import conversation as ch
    from lm.tasks.thinking import column_addition
    base = tasks.get("arithmetic_easy")
    for fmt in ("reasoning", "answer_first"):
        t = tasks.get(f"arithmetic_easy_{fmt}")
        for split in ("train", "test"):
            for i in range(30):
                a, b = base.example(split, i), t.example(split, i)
                assert a["messages"][:-1] == b["messages"][:-1] and a["answer"] == b["answer"]
                reply = b["messages"][-1]["content"]
                assert isinstance(reply, str) and "<<" not in reply     # no calculator
                assert t.evaluate(b, reply)
        first = t.example("test", 0)
        wrong = str(int(first["answer"]) + 1)
        if fmt == "answer_first":   # the first number counts, whatever the steps say after it
            assert not t.evaluate(first, f"#### {wrong}\n... = {first['answer']}")
    for a, b in ((0, 0), (5, 7), (99, 1), (1234, 8766), (4321, 5)):
        assert column_addition(a, b).endswith(f"= {a + b}.")
    for d in (1, 2, 3, 4):
        t = tasks.get(f"mental_d{d}")
        for i in range(20):
            c = t.example("test", i)
            q = c["messages"][0]["content"]
            nums = [int(x) for x in re.findall(r"\d+", q)]
            assert all(len(str(n)) == d for n in nums) and sum(nums) == int(c["answer"])
        seen = tasks.get(f"mental_d{d}_seen_phrasings")     # the same sums, training's words
        for i in range(20):
            a, b = t.example("test", i), seen.example("test", i)
            x, y = re.findall(r"\d+", a["messages"][0]["content"])
            assert a["answer"] == b["answer"]
            assert b["messages"][0]["content"] in {q.format(a=x, b=y) for q in thinking.ASK["train"]}
    with pytest.raises(ValueError, match="unknown phrasings"):
        thinking.MentalAdd("x", asked_as="both")
    train = {tasks.get("mental_add_calculator").example("train", i)["messages"][0]["content"]
             for i in range(300)}
    test = {tasks.get("mental_d3").example("test", i)["messages"][0]["content"]
            for i in range(300)}
    assert not train & test
    r = tasks.get("mental_add_reasoning").example("train", 3)["messages"][-1]["content"]
    assert r.rstrip().split("\n")[-1].startswith("#### ") and ch.reply_text(ch.parts_of(r)) == r


def test_spelling_formats_share_items_and_count_right():
    from lm.tasks.spelling import REPLY_FORMATS, Spelling, reply_in_format
    words = ["strawberry", "banana", "committee", "sky", "bookkeeper", "mississippi", "a"] * 3
    tool = Spelling(words=words)
    for fmt in REPLY_FORMATS:
        t = Spelling(words=words, fmt=fmt)
        for i in range(12):
            a, b = tool.example("train", i), t.example("train", i)
            assert (a["word"], a["letter"], a["messages"][0]) == \
                (b["word"], b["letter"], b["messages"][0])
            assert b["answer"] == str(b["word"].count(b["letter"]))
    reply, n = reply_in_format("strawberry", "r", "spell")
    assert "s-t-r-a-w-b-e-r-r-y" in reply and "positions 3, 8, 9" in reply and n == "3"
    direct, _ = reply_in_format("strawberry", "r", "direct")
    assert "-" not in direct and direct.endswith("#### 3")
    assert "does not occur" in reply_in_format("sky", "e", "spell")[0]
    with pytest.raises(ValueError, match="unknown spelling reply format"):
        reply_in_format("sky", "s", "shout")
    import experiments
    from experiments.psychology import BYTES
    from lm import conversation as chat
    from lm.tokenizer import train_bpe
    # the BPE-sized reply budgets would cut a byte-level reply before its answer
    byte_tok = train_bpe(["x"], BYTES)                        # no merges: one token a byte
    longest = max(len(chat.render(c, byte_tok)[0]) - len(chat.render_for_completion(c, byte_tok))
                  for c in (tasks.get(n).example("test", i) for n in ("spelling", "spelling_ood")
                            for i in range(100)))
    assert longest > tasks.get("spelling").max_new_tokens()
    for fmt in REPLY_FORMATS:
        cfg = experiments.get(f"chat_tiny_sft_bytes_spell_{fmt}")
        want = "spelling:" if fmt == "tool" else f"spelling_{fmt}:"
        assert want in cfg.sft.mixture and cfg.model.vocab_size == BYTES
        assert cfg.eval.max_new_tokens >= longest + 32
        # the formats differ in the spelling task alone: no drill spelling words in every one
        bpe = experiments.get(f"chat_tiny_sft_spell_{fmt}").sft.mixture.split(",")
        assert not [m for m in bpe if m.startswith("spelling_drill")]
        chain = experiments.get("chat_tiny_sft").sft.mixture.split(",")
        assert sorted(bpe) == sorted(m.replace("spelling:", want) for m in chain
                                     if not m.startswith("spelling_drill"))
    assert experiments.get("chat_tiny_base_bytes").data.tokenizer == \
        f"bpe:{experiments.get('chat_tiny_base_bytes').model.vocab_size}"


def test_server_and_cli_use_the_given_search_corpus(tiny_chat, tmp_path, capsys):
    from lm import search
    from lm.serve import __main__ as serve_main
    from lm.serve.app import create_app
    own = search.from_file(str(_write(tmp_path / "own.jsonl", '{"text": "Zorblat lives on Mars."}')))
    app = create_app(tiny_chat, warmup=False, search=own)
    tok = tiny_chat.tokenizer
    run_tool = app.state.lm.scheduler.engine.tool_fn
    assert tok.decode(run_tool(tok.encode('search("Zorblat")'))) == "Zorblat lives on Mars."
    assert tok.decode(run_tool(tok.encode("6*7"))) == "42"
    # a bad corpus is a clear error before anything loads
    assert serve_main.main(["--run", tiny_chat.run_dir, "--search-corpus",
                            str(tmp_path / "none.txt")]) == 2
    assert "No such file" in capsys.readouterr().err


def test_psychology_runner_reuses_done_runs_and_tabulates(tmp_path, capsys):
    import dataclasses
    from lm import runs
    from lm.config import Config, DataConfig, EvalConfig, ModelConfig
    from lm.tokenizer import train_bpe, trained_specials
    from tools import psychology
    tok = train_bpe(["a b c"] * 10, 256 + len(trained_specials()) + 2)
    cfg = Config(name="x", stage="sft", init_from="x", data=DataConfig(tokenizer="parent"),
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1,
                                   n_head=2, n_embd=16), eval=EvalConfig())
    work = tmp_path / "w"
    for name, acc in (("chat_tiny_sft_think_calculator", 0.9), ("chat_tiny_sft_think_reasoning",
                                                                 0.6)):
        d = runs.save_run(str(work / "runs" / name / "20260101-000000"),
                          dataclasses.replace(cfg, name=name), tok)
        with open(f"{d}/summary.json", "w") as f:
            json.dump({"complete": True}, f)
        with open(f"{d}/metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 1, "final": True, "eval/arithmetic_easy": acc,
                                "eval/arithmetic_easy_n": 100, "eval/mental_d3": 0.5,
                                "eval/mental_d3_n": 50}) + "\n")
    with open(f"{d}/eval.json", "w") as f:    # a later lm.eval adds a task and replaces one
        json.dump({"chat": {"eval/mental_d4_seen_phrasings": 0.25,
                            "eval/mental_d4_seen_phrasings_n": 40, "eval/mental_d3": 0.0}}, f)
    import argparse
    a = argparse.Namespace(workdir=str(work), rerun=False)
    assert psychology.step_command("chat_tiny_sft_think_calculator", a) is None   # reused
    assert psychology.step_command("chat_tiny_sft_think_answer_first", a)[-5:] == [
        "-e", "chat_tiny_sft_think_answer_first", "--workdir", str(work), "--no_progress"]
    assert psychology.main(["--parts", "think", "--tables", "--workdir", str(work)]) == 0
    t = json.load(open(work / "runs" / "psychology" / "think.json"))
    calc = t["rows"][0]["eval"]
    assert t["rows"][0]["label"] == "chat_tiny_sft_think_calculator" and len(t["rows"]) == 2
    assert calc["arithmetic_easy"]["acc"] == 0.9 and calc["mental_d1"] is None
    assert abs(calc["mental_d3"]["se"] - (0.25 / 50) ** 0.5) < 1e-9
    later = t["rows"][1]["eval"]
    assert later["mental_d4_seen_phrasings"]["acc"] == 0.25 and later["mental_d3"]["acc"] == 0.0
    assert calc["mental_d4_seen_phrasings"] is None
    for row in t["rows"]:                    # each run's dir holds the table it is part of
        assert json.load(open(os.path.join(row["run_dir"], "think.json")))["rows"] == t["rows"]
        assert "chat_tiny_sft_think_reasoning" in open(os.path.join(row["run_dir"],
                                                                    "think.md")).read()
        assert os.path.getsize(os.path.join(row["run_dir"], "think.png")) > 1000   # the plot
    # a grade's count comes from its task's items (spelling_ood_count: spelling_ood's 40)
    ev = {"eval/spelling_ood": 0.1, "eval/spelling_ood_count": 0.5, "eval/spelling_ood_n": 40}
    assert psychology.n_of(ev, "spelling_ood_count") == 40 and psychology.n_of(ev, "x_y") is None
    assert abs(psychology.cell(ev, "spelling_ood_count", 40)["se"] - (0.25 / 40) ** 0.5) < 1e-9
    with pytest.raises(SystemExit):
        psychology.main(["--parts", "nope"])


def test_self_part_asks_base_and_sft_who_they_are_and_tabulates_all_three(tmp_path):
    """The self part's rows: SFT without the identity task (trained), and the base and the
    chain's SFT asked by lm.eval into their eval_self.json (reused once written)."""
    import argparse
    import dataclasses
    from lm import runs
    from lm.config import Config, DataConfig, EvalConfig, ModelConfig
    from lm.tokenizer import train_bpe, trained_specials
    from tools import psychology
    tok = train_bpe(["a b c"] * 10, 256 + len(trained_specials()) + 2)
    cfg = Config(name="x", data=DataConfig(tokenizer="parent"), eval=EvalConfig(),
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1,
                                   n_head=2, n_embd=16))
    work = tmp_path / "w"
    a = argparse.Namespace(workdir=str(work), rerun=False)
    scores = {"chat_tiny_base": 0.0, "chat_tiny_sft": 0.9, "chat_tiny_sft_noid": 0.1}
    for name, acc in scores.items():
        d = runs.save_run(str(work / "runs" / name / "20260101-000000"),
                          dataclasses.replace(cfg, name=name), tok)
        os.makedirs(f"{d}/checkpoints/1")
        row = {"eval/whoami_teacher": acc, "eval/whoami_teacher_n": 40}
        with open(f"{d}/summary.json", "w") as f:
            json.dump({"complete": True}, f)
        with open(f"{d}/metrics.jsonl", "w") as f:
            f.write(json.dumps({"step": 1, "final": True, **row}) + "\n")
        if name != "chat_tiny_sft_noid":
            step = "sft_as_self" if name == "chat_tiny_sft" else "base_as_chat"
            cmd = psychology.step_command(step, a)
            assert cmd[1:4] == ["-m", "lm.eval", "--run"] and cmd[4] == d
            with open(f"{d}/eval_self.json", "w") as f:
                json.dump({"chat": row}, f)
            assert psychology.step_command(step, a) is None             # reused
    assert psychology.main(["--parts", "self", "--tables", "--workdir", str(work)]) == 0
    t = json.load(open(work / "runs" / "psychology" / "self.json"))
    got = {r["label"].split(" ")[0]: r["eval"]["whoami_teacher"]["acc"] for r in t["rows"]}
    assert got == scores


def test_question_answer_pretraining_is_about_plain_sfts_read_people_only():
    kb = kn.knowledge_base()
    qa_people = {p.name: p for p in kb.qa_people()}
    docs = corpus.kb_qa_docs(copies=3)
    about = [d["person"] for d in docs]
    # mixed training: the probe's and the held-out people are read only as biographies
    assert set(about) == {n for n, p in qa_people.items() if p.frequency > 0}
    for name in set(about):
        assert about.count(name) == 3 * len(kn.ATTRIBUTES)
    for d in docs[:50]:
        p = qa_people[d["person"]]
        assert kn.judge(p, d["attribute"], d["messages"][-1]["content"]) == "correct"
        q = d["messages"][0]["content"]
        assert p.name in q and kn.normalise(q.replace(p.name, "{name}")) not in {
            kn.normalise(t) for t in kn.QUESTIONS[d["attribute"]]["test"]}


def test_knowledge_questions_train_on_a_grammar_and_test_on_held_out_phrasings():
    """Training asks in the grammar's many wordings and the fixed ones; the test split only in
    its own, which the grammar never generates; `kb_qa_seen_phrasings` asks the held-out people
    in training's fixed wordings."""
    import random
    task, seen = kn.KnowledgeQA(), tasks.get("kb_qa_seen_phrasings")
    test_forms = {kn.normalise(t) for a in kn.QUESTIONS.values() for t in a["test"]}
    fixed_train = {kn.normalise(t) for a in kn.QUESTIONS.values() for t in a["train"]}
    rng = random.Random(0)
    train_forms = set()
    for a in kn.ATTRIBUTES:
        for _ in range(300):
            f = kn.normalise(kn.grammar_question(a, rng))
            assert f not in test_forms
            train_forms.add(f)
    assert len(train_forms) > 20 * len(kn.ATTRIBUTES)
    n = task.size("train")
    asked = [task.example("train", i) for i in range(0, 3 * n, 7)]
    forms = {kn.normalise(c["messages"][0]["content"].replace(c["person"], "{name}"))
             for c in asked}
    assert forms & fixed_train and forms - fixed_train and not forms & test_forms
    for i in range(0, task.size("test"), 37):
        c, s = task.example("test", i), seen.example("test", i)
        assert c["person"] == s["person"] and c["attribute"] == s["attribute"]
        assert kn.normalise(c["messages"][0]["content"].replace(c["person"], "{name}")) \
            in test_forms
        assert kn.normalise(s["messages"][0]["content"].replace(s["person"], "{name}")) \
            in fixed_train


def test_knowledge_chain_variants_line_up_probe_and_probed_sft(tmp_path):
    import argparse
    import experiments
    from tools import psychology
    for kb, recipe, suffix in [("kb", "chain", ""), ("kb_qa", "chain", ""),
                               ("kb_qa", "light", "_light"), ("kb", "light", "_light")]:
        a = argparse.Namespace(workdir=str(tmp_path), rerun=False, kb=kb, recipe=recipe)
        names = psychology.steps("knowledge", a)
        assert names[0] == f"chat_tiny_base_{kb}" and "probe" in names
        # each run registered; every plain, probed and naive SFT also gives its every reply
        cfgs = {n: experiments.get(n) for n in names if n != "probe" and ":" not in n}
        assert {n[:-len(":items")] for n in names if n.endswith(":items")} == {
            n for n in cfgs if n.startswith("chat_tiny_sft") and not n.endswith("_search")}
        base_source = cfgs[f"chat_tiny_base_{kb}"].data.source
        assert base_source == {"kb": "chat_tiny_kb", "kb_qa": "chat_tiny_kb_qa"}[kb]
        sfts = {n: c for n, c in cfgs.items() if n != f"chat_tiny_base_{kb}"}
        assert len(sfts) == 4 and all(c.init_from == f"chat_tiny_base_{kb}"
                                      for c in sfts.values())
        # every SFT of a recipe trains at that recipe's learning rate
        assert len({c.optim.lr for c in sfts.values()}) == 1
        assert all(n.startswith(f"chat_tiny_sft_{kb}{suffix}") for n in sfts)
        cmd = psychology.step_command("probe", a)
        probed = cfgs[f"chat_tiny_sft_{kb}{suffix}_probed"].sft.files
        # the probe asks the recipe's plain SFT and writes where the same recipe's probed SFT reads
        assert cmd[cmd.index("--run") + 1] == f"chat_tiny_sft_{kb}{suffix}"
        assert probed == "kb_probed=" + os.path.relpath(
            os.path.join(cmd[cmd.index("--out") + 1], "fix.jsonl"), str(tmp_path))
    light = experiments.get("chat_tiny_sft_kb_qa_light_probed").optim.lr
    assert light < experiments.get("chat_tiny_sft_kb_qa_probed").optim.lr


def test_light_sft_is_plain_sft_at_a_lower_learning_rate():
    """The forgetting ablation changes one thing: the learning rate (its schedule's floor with it)."""
    import dataclasses
    import experiments
    for kb in ("kb", "kb_qa"):
        plain = experiments.get(f"chat_tiny_sft_{kb}")
        light = experiments.get(f"chat_tiny_sft_{kb}_light")
        assert light.optim.lr < plain.optim.lr and light.optim.min_lr < plain.optim.min_lr
        same = dataclasses.replace(light, optim=plain.optim, name=plain.name,
                                   description=plain.description)
        assert same.to_json() == plain.to_json()


def test_lm_eval_replies_get_the_runs_own_budget(tiny_chat, tmp_path, monkeypatch):
    """lm.eval answers with the budget the run's training evaluated with (a byte-level run's is
    3x the BPE-sized task budgets), unless --max_new_tokens says otherwise."""
    import dataclasses
    from lm import runs
    from lm.eval import suite
    from lm.eval.__main__ import main as eval_main
    cfg = dataclasses.replace(tiny_chat.config, eval=dataclasses.replace(tiny_chat.config.eval,
                                                                        max_new_tokens=7))
    run_dir = runs.save_run(str(tmp_path / "r"), cfg, tiny_chat.tokenizer)
    seen = []

    def fake(params, model_cfg, tok, names, **kw):
        seen.append(kw["max_new_tokens"])
        return {}, []
    monkeypatch.setattr(suite, "evaluate_tasks", fake)
    for flag, want in (([], 7), (["--max_new_tokens", "0"], 0), (["--max_new_tokens", "300"], 300)):
        assert eval_main(["--run", run_dir, "--tasks", "chat:recall", "--limit", "2",
                          "--no_progress", "--out", str(tmp_path / "e.json"), *flag]) == 0
        assert seen[-1] == want


def test_lm_eval_log_samples_keeps_every_item_with_its_fields_and_grades(tiny_chat, tmp_path):
    """--log_samples: one record per held-out item, whose grades average to the task's metrics
    (so two runs can be compared question by question); without it, three a task."""
    from lm.eval.__main__ import main as eval_main
    out, short = tmp_path / "items.json", tmp_path / "short.json"
    base = ["--run", tiny_chat.run_dir, "--tasks", "chat:kb_qa", "--limit", "12",
            "--max_new_tokens", "4", "--no_progress"]
    assert eval_main(base + ["--log_samples", "--out", str(out)]) == 0
    assert eval_main(base + ["--out", str(short)]) == 0
    res = json.load(open(out))
    items = res["chat_samples"]
    assert len(items) == 12 and len(json.load(open(short))["chat_samples"]) == 3
    keys = {(x["item"]["person"], x["item"]["attribute"]) for x in items}
    assert len(keys) == 12
    for v in ("correct", "hallucinated", "refused"):
        assert sum(x["grades"][v] for x in items) / 12 == \
            pytest.approx(res["chat"][f"eval/kb_qa_{v}"])
    assert all(sum(x["grades"][v] for v in ("correct", "hallucinated", "refused")) == 1
               for x in items)
    assert eval_main(base + ["--log_samples", "--pass_at", "1"]) == 2     # a clear error


def test_knowledge_report_pairs_runs_question_by_question(tmp_path):
    """Over-refusal question by question: of what the first run answered right about frequent
    people, the share another run refuses; runs without every reply are left out."""
    from tools import knowledge_report as kr

    def write(name, verdicts):
        d = tmp_path / name
        d.mkdir()
        samples = [{"task": "kb_qa", "item": {"person": p, "attribute": "city", "frequency": f},
                    "grades": {v: v == verdict for v in kr.VERDICTS}}
                   for p, f, verdict in verdicts]
        json.dump({"chat_samples": samples}, open(d / kr.ITEMS, "w"))
        return {"label": name, "run_dir": str(d)}
    plain = write("plain", [("a", 16, "correct"), ("b", 64, "correct"), ("c", 128, "correct"),
                            ("d", 128, "correct"), ("e", 0, "correct"), ("f", 32, "refused")])
    fixed = write("fixed", [("a", 16, "refused"), ("b", 64, "correct"), ("c", 128, "correct"),
                            ("d", 128, "hallucinated"), ("e", 0, "refused"), ("f", 32, "refused")])
    (tmp_path / "none").mkdir()
    got = kr.paired([plain, fixed, {"label": "none", "run_dir": str(tmp_path / "none")}])
    assert got == [{"label": "fixed", "known_before": 4, "refused_known": 0.25,
                    "kept_known": 0.5}]
    assert kr.paired([{"label": "none", "run_dir": str(tmp_path / "none")}, fixed]) == []
