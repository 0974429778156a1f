"""The synthetic knowledge base (issue 26): deterministic, its held-out people never in SFT data,
the judge, and the probe's reproducibility."""
import json

import pytest

from lm import tasks
from lm.tasks import knowledge as kn


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
