"""The tasks that measure reading the context out of the generators' distribution (issue 23): their
held-out parts never reach any training use, their graders accept the references and refuse
near misses, and the base-model probes read the positions they claim to."""
import random
import re

import numpy as np
import pytest

from lm import tasks
from lm.conversation import reply_text
from lm.data import corpus
from lm.eval import probes
from lm.tasks import recall, recall_text, spelling, word_problems
from lm.tasks.base import has_word
from lm.tokenizer import train_bpe, trained_specials

TRAINING = ("train", "rl")


def reference(conv):
    a = conv["messages"][-1]["content"]
    return reply_text(a) if isinstance(a, list) else a


def user_text(conv):
    return " ".join(m["content"] for m in conv["messages"] if m["role"] == "user")


def test_word_problem_splits_are_disjoint_combinations_of_shared_parts():
    splits = {s: set(word_problems.combos(s)) for s in ("train", "rl", "test")}
    assert all(splits.values())
    assert not splits["train"] & splits["test"] and not splits["rl"] & splits["test"]
    assert not splits["train"] & splits["rl"]
    # every schema, statement and question of the test split also occurs in training combos
    seen = {(n, "f", f) for n, f, _ in splits["train"]} | {(n, "q", q) for n, _, q in
                                                           splits["train"]}
    for n, f, q in splits["test"]:
        assert (n, "f", f) in seen or (n, "q", q) in seen


def test_word_problem_operations_are_not_given_away_by_a_word():
    """The same cue words occur with different operations in the training split."""
    t = tasks.get("word_problems")
    ops_by_word: dict[str, set] = {}
    for i in range(600):
        c = t.example("train", i)
        calls = [p["text"] for p in c["messages"][-1]["content"] if p["type"] == "python"]
        op = re.search(r"[-+*/]", calls[0]).group(0)
        for w in ("each", "gets", "left", "more", "half", "all"):
            if re.search(rf"\b{w}\b", c["messages"][0]["content"].lower()):
                ops_by_word.setdefault(w, set()).add(op)
    assert all(len(ops) >= 2 for w, ops in ops_by_word.items() if w in ("each", "gets", "more"))


@pytest.mark.parametrize("name", ["word_problems", "recall", "copy"])
def test_references_are_graded_right_and_near_misses_wrong(name):
    t = tasks.get(name)
    for split in ("train", "test"):
        for i in range(40):
            c = t.example(split, i)
            assert t.evaluate(c, reference(c)), (name, split, i)
    c = t.example("test", 0)
    wrong = {"word_problems": "#### " + str(int(c["answer"]) + 1) if name == "word_problems"
             else "", "recall": "I don't know.", "copy": c["answer"] + " extra"}[name]
    assert not t.evaluate(c, wrong)


def test_recall_test_values_and_phrasings_never_train():
    t = tasks.get("recall")
    train = [t.example(s, i) for s in TRAINING[:1] for i in range(3000)]
    test = [t.example("test", i) for i in range(600)]
    train_values = {c["answer"] for c in train}
    assert not {c["answer"] for c in test} & train_values
    train_turns = {m["content"] for c in train for m in c["messages"] if m["role"] == "user"}
    questions = {c["messages"][-2]["content"] for c in test}
    assert not questions & train_turns
    # the answer is stated in the conversation, earlier
    assert all(c["answer"] in user_text(c) for c in test)
    # most training values are made up: no short list of answers to memorise instead of copying
    pooled = {v for pool, _, _ in recall.FACTS.values() if pool for v in pool}
    made_up = [c["answer"] for c in train if c["answer"] not in pooled and
               not c["answer"].isdigit()]
    assert len(set(made_up)) > 1000 and len(made_up) > len(train) / 3


def _abstracted(text: str, values) -> str:
    for v in sorted(values, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(v)}(?!\w)", "{v}", text, flags=re.I)
    return text


def test_recall_training_never_uses_a_held_out_phrasing():
    """Neither the grammar nor the fixed training frames produce a test-split phrasing (any key in
    its key's place) or an everyday-set sentence, even inside a longer turn; the grammar's
    conversations ask for a fact that was stated, by a key or a type that names one fact."""
    t = tasks.get("recall")
    held = {recall.frame(x) for _, says, asks in recall.FACTS.values()
            for x in says["test"] + asks["test"]}
    everyday = tasks.get("everyday_recall")
    daily = {recall.frame(_abstracted(m["content"], [c["answer"]]), keys=False)
             for c in (everyday.example("test", i) for i in range(everyday.size("test")))
             for m in c["messages"] if m["role"] == "user"}
    assert len(held) >= 20 and len(daily) == 20
    grammar = 0
    for i in range(4000):
        c = t.example("train", i)
        assert c["answer"] in c["values"]
        grammar += any(m["content"] not in {x for _, says, _ in recall.FACTS.values()
                                            for x in says["train"]} for m in c["messages"][:1])
        for m in c["messages"]:
            if m["role"] != "user":
                continue
            text = _abstracted(m["content"], c["values"])
            with_keys, words = f" {recall.frame(text)} ", f" {recall.frame(text, keys=False)} "
            assert not [h for h in held if f" {h} " in with_keys], (i, m["content"])
            assert not [d for d in daily if f" {d} " in words], (i, m["content"])
        assert c["answer"] in user_text(c)
    assert grammar > 2000          # most training conversations come from the grammar


def test_recall_seen_phrasings_asks_held_out_values_in_training_frames():
    t, rc = tasks.get("recall_seen_phrasings"), tasks.get("recall")
    test_values = {rc.example("test", i)["answer"] for i in range(600)}
    train_values = {rc.example("train", i)["answer"] for i in range(3000)}
    frames = {q for kind in recall.FACTS for q in recall.fixed_train()[kind][1]}
    for i in range(300):
        c = t.example("test", i)
        assert c["answer"] not in train_values and c["answer"] in user_text(c)
        assert c["messages"][-2]["content"] in frames
    assert len({t.example("test", i)["answer"] for i in range(300)} & test_values) > 50


def test_seen_phrasing_variants_keep_the_held_out_items_and_training_wording(data_env):
    cp, cs = tasks.get("copy"), tasks.get("copy_seen_phrasings")
    train_texts = {cp.example("train", i)["answer"] for i in range(2000)}
    for i in range(200):
        c = cs.example("test", i)
        assert c["answer"] not in train_texts
        assert c["messages"][0]["content"] in {a.replace("{t}", c["answer"])
                                               for a in recall.COPY_ASKS["train"]}
    rc, rs = tasks.get("recall"), tasks.get("recall_seen_phrasings")
    for i in range(100):      # the same conversations, only the wording differs
        a, b = rc.example("test", i), rs.example("test", i)
        assert a["answer"] == b["answer"] and len(a["messages"]) == len(b["messages"])
        assert a["messages"][-2]["content"] != b["messages"][-2]["content"]
    assert cs.example("test", 7)["answer"] == cp.example("test", 7)["answer"]
    so, ss = tasks.get("spelling_ood"), tasks.get("spelling_ood_seen_phrasings")
    questions = {q.format(l=c["letter"], w=c["word"], u=c["letter"].upper(),
                          c=c["word"].capitalize()) for c in [ss.example("test", 0)]
                 for q in spelling.QUESTIONS}
    assert ss.example("test", 0)["messages"][0]["content"] in questions
    assert [ss.example("test", i)["word"] for i in range(200)] == \
        [so.example("test", i)["word"] for i in range(200)]


def test_recall_seen_statements_and_questions_swap_one_half_each():
    rc = tasks.get("recall")
    st, qu = tasks.get("recall_seen_statements"), tasks.get("recall_seen_questions")
    says = {x for kind in recall.FACTS for x in recall.fixed_train()[kind][0]}
    asks = {x for kind in recall.FACTS for x in recall.fixed_train()[kind][1]}
    held_asks = {x for _, (_, _, a) in recall.FACTS.items() for x in a["test"]}
    changed = 0
    for i in range(200):
        a, s, q = rc.example("test", i), st.example("test", i), qu.example("test", i)
        assert a["answer"] == s["answer"] == q["answer"]
        users = [[m["content"] for m in c["messages"][:-2] if m["role"] == "user"]
                 for c in (a, s, q)]
        assert users[2] == users[0] and q["messages"][-2]["content"] in asks
        assert s["messages"][-2]["content"] == a["messages"][-2]["content"] in held_asks
        fact = s["answer"]
        said = [u for u in users[1] if fact in u]
        assert any(f.format(v=fact) in u for u in said for f in says), (i, said)
        changed += users[1] != users[0]
    assert changed == 200


def test_recall_text_finds_one_marker_and_puts_the_value_in_its_place():
    text = ("Lily had a red ball in the park. She liked the red ball and a blue hat. Tom ate "
            "soup with Lily at noon. Red was the colour of the door in Paris. "
            "\u201cHi,\u201d said Sue to Ben.")
    found = recall_text.find_carriers([text])
    assert ("Lily had a red ball in the park.", "red") in found["colour"]
    assert ("Lily had a red ball in the park. She liked the red ball and a blue hat.", "red") \
        not in found["colour"]                 # two colours: neither is "the" colour
    assert ("Tom ate soup with Lily at noon.", "soup") in found["food"]
    assert not any(t.startswith("Tom ate") for t, _ in found["friend"])   # two names
    assert ("Lily had a red ball in the park.", "Lily") in found["friend"]
    assert not any('"' in t for k in found for t, _ in found[k])
    said = recall_text.put_value("Red was the colour. I like red.", "red", "colour", "zorp")
    assert said == "Zorp was the colour. I like zorp."
    assert recall_text.sentences("I met Mr. Darcy there. He said \u201chi\u201d!") == [
        "I met Mr. Darcy there.", 'He said "hi"!']


def test_recall_text_splits_hold_out_values_questions_and_sentences():
    task = tasks.get("recall_text")
    held = recall.held_out_values()
    test_asks = {x for _, (_, _, a) in recall.FACTS.items() for x in a["test"]}
    kinds = set()
    for i in range(300):
        c = task.example("train", i)
        said, ask = c["messages"][0]["content"], c["messages"][-2]["content"]
        assert has_word(said, c["answer"]) and c["messages"][-1]["content"] in [
            a.format(v=c["answer"]) for a in recall.ANSWERS]
        words = set(re.findall(r"[a-z]+", user_text(c).lower()))
        assert not words & held, (i, words & held)
        assert ask not in test_asks and recall.allowed(ask)
        # the value is the only word of its kind in what was said
        rest = re.sub(re.escape(c["answer"]), " ", said, flags=re.IGNORECASE)
        pattern = recall_text._MARKER_RES[c["fact"]]
        assert not pattern.search(rest if c["fact"] in recall_text._CASED else rest.lower())
        kinds.add(c["fact"])
    assert kinds >= {"colour", "food", "friend", "number"}
    train_frames = {recall_text.put_value(t, m, k, "{v}")
                    for k, ts in recall_text.carriers("train").items() for t, m in ts}
    for i in range(100):
        c = task.example("test", i)
        assert c["messages"][-2]["content"] in test_asks
        assert c["answer"].lower() in held or c["fact"] == "number"
        said = c["messages"][0]["content"]
        assert recall_text.put_value(said, c["answer"], c["fact"], "{v}") not in train_frames
        assert task.evaluate(c, f"You said {c['answer']}.")
        assert not task.evaluate(c, said)


def test_recall_grammar_questions_name_one_fact():
    rng = random.Random(0)
    for _ in range(3000):
        msgs, ask, facts = recall.grammar_conversation(rng)
        same = [f for f in facts if f["type"] == ask["type"]]
        assert len({f["value"] for f in facts}) == len(facts)
        if len(same) > 1:   # two facts of a type: their keys differ and neither is generic
            assert len({f["key"] for f in same}) == len(same)
            assert all(f["key"] and f["key"] not in recall.GENERIC_KEYS for f in same)
            assert ask["key"].lower() in msgs[-1]["content"].lower()


def test_recall_type_questions_are_composed_and_never_a_held_out_frame():
    """A question by type ("Tell me the town I brought up earlier.") is asked only when one fact
    has that type; the composed ones are many, and none is worded as a test split's question."""
    rng, composed = random.Random(1), set()
    for _ in range(3000):
        msgs, ask, facts = recall.grammar_conversation(rng)
        q = msgs[-1]["content"]
        assert recall.allowed(q), q
        nouns = [n for n in recall.TYPE_NOUNS.get(ask["type"], []) if n in q.lower()]
        if nouns and ask["key"].lower() not in q.lower():
            assert sum(f["type"] == ask["type"] for f in facts) == 1, q
            composed.add(recall.frame(q))
    assert len(composed) > 300
    # a value said apart from its type ("If I get to pick a colour, I'd choose amber.") is asked
    # for by its type, and the type noun's neighbours are other words
    apart = 0
    for _ in range(2000):
        msgs, ask, facts = recall.grammar_conversation(rng)
        if ask.get("apart"):
            apart += 1
            noun = ask["type"]
            said = next(m["content"] for m in msgs
                        if ask["value"] in re.findall(r"[\w']+", m["content"]))
            words = re.findall(r"[\w']+", said)
            i, j = words.index(ask["value"].split()[0]), words.index(noun)
            assert abs(i - j) > 1, said
            assert any(n in msgs[-1]["content"].lower() for n in recall.TYPE_NOUNS[ask["type"]])
    assert apart > 50
    test_frames = {recall.frame(x) for _, _, asks in recall.FACTS.values() for x in asks["test"]}
    assert not composed & test_frames


def test_copy_training_asks_never_use_the_test_asks_or_their_parts():
    t = tasks.get("copy")
    test_asks = {a.replace("{t}", "").strip().lower() for a in recall.COPY_ASKS["test"]}
    for i in range(3000):
        c = t.example("train", i)
        q = c["messages"][0]["content"]
        assert c["answer"] in q
        ask = q.replace(c["answer"], "").lower()
        assert not any(p in ask for p in recall.COPY_HELD_OUT_PARTS), q
        assert not any(a in ask for a in test_asks), q
    assert any(recall.copy_grammar_ask(random.Random(i)) not in recall.COPY_ASKS["train"]
               for i in range(10))


def test_no_training_value_is_held_out_in_another_pool_or_case():
    # "Olive" was a held-out pet name while "olive" trained as a colour (also waffles, willow)
    pools = [p for p, _, _ in recall.FACTS.values() if p is not None]
    assert len(pools) == 6
    held = {v.lower() for p in pools for v in recall.split_values(list(p), "test")}
    assert held == set(recall.held_out_values()) and len(held) > 40
    for p in pools + [recall.WORDS + recall.COLOURS + recall.FOODS + recall.CITIES,
                      recall.PET_NAMES + recall.PEOPLE]:
        train, test = recall.split_values(list(p), "train"), recall.split_values(list(p), "test")
        assert not {v.lower() for v in train} & held
        assert not set(train) & set(test) and len(train) + len(test) <= len(p)
        assert len(test) >= len(p) // 8 and len(train) >= len(p) // 2


def test_copy_docs_use_training_values_only():
    held = set(recall.held_out_values())
    words = {w for d in corpus.copy_docs(500) for w in re.findall(r"[a-z]+", d)}
    assert held and not held & words
    docs = corpus.open_copy_docs(500)
    words = {w for d in docs for w in re.findall(r"[A-Za-z]+", d)}
    held |= set(recall.split_values(recall.PET_NAMES + recall.PEOPLE, "test"))
    assert not held & words
    # most values are made up (only copying predicts them), and facts are asked about later
    pooled = set(recall.WORDS + recall.COLOURS + recall.FOODS + recall.CITIES + recall.PET_NAMES
                 + recall.PEOPLE)
    answers = [a for d in docs for a in re.findall(r"Answer: ([A-Za-z]+)\.", d)]
    assert len(answers) > 200 and sum(a not in pooled for a in answers) > len(answers) / 3


def test_gsm8k_easy_is_held_out_and_easy(data_env):
    t, full = tasks.get("gsm8k_easy"), tasks.get("gsm8k")
    test_q = {t.example("test", i)["messages"][0]["content"] for i in range(t.size("test"))}
    train_q = {full.example("train", i)["messages"][0]["content"]
               for i in range(full.size("train"))}
    assert t.size("test") >= 150 and not test_q & train_q
    for i in range(0, t.size("test"), 7):
        calls = [p for p in t.example("test", i)["messages"][-1]["content"]
                 if p["type"] == "python"]
        assert 1 <= len(calls) <= 2


def test_spelling_ood_words_never_spelled_in_training_and_graded_on_letters(data_env):
    ood, sp = tasks.get("spelling_ood"), tasks.get("spelling")
    words = {ood.example("test", i)["word"] for i in range(2000)}
    assert not words & set(sp.words["train"])
    lengths = {len(w) for w in words}
    assert min(lengths) <= 3 and max(lengths) >= 11          # every length bucket is asked
    c = ood.example("test", 0)
    ref = reference(c)
    assert ood.evaluate(c, ref)
    w = c["word"]
    misspelled = ref.replace("-".join(w), "-".join(w[:-1] + ("x" if w[-1] != "x" else "y")))
    assert not ood.evaluate(c, misspelled) and sp.evaluate(c, misspelled)
    assert sp.grades(c, misspelled) == {"count": True, "letters": False}
    assert sp.grades(c, ref) == {"count": True, "letters": True}
    train_q = {sp.example("train", i)["messages"][0]["content"].replace(
        sp.example("train", i)["word"], "W") for i in range(200)}
    assert not {c2["messages"][0]["content"].replace(c2["word"], "W")
                for c2 in (ood.example("test", i) for i in range(200))} & train_q


def test_spelling_drill_spells_training_words_only_and_grades_every_word(data_env):
    """The drill's training replies spell many words each, never a held-out one (spelling_ood's
    or spelling's test words); its test split asks held-out words and is right only when every
    word's letters are."""
    drill, sp = tasks.get("spelling_drill"), tasks.get("spelling")
    train = set(sp.words["train"])
    for name, want in (("spelling_drill", {""}), ("spelling_drill_forms", {"", '"', "'"})):
        seen, forms = [], set()
        for i in range(300):
            c = tasks.get(name).example("train", i)
            assert 4 <= len(c["words"]) <= 12 and set(c["words"]) <= train
            for w in c["words"]:
                assert w in c["messages"][0]["content"].lower()
                assert re.search(rf"""\d\. ["']?{w}["']?: {'-'.join(w)}(\n|$)""",
                                 reference(c).lower())
            seen += c["words"]
            forms.update(re.findall(r"\d\. (\W?)\w", reference(c)))
        assert len(set(seen)) > 0.9 * len(seen)      # the words vary
        assert forms == want                         # plain; or in quotes (and capitalised)
    c = drill.example("test", 0)
    assert not set(c["words"]) & train
    ref = reference(c)
    assert drill.evaluate(c, ref)
    w = c["words"][1]
    wrong = w[:-1] + ("x" if w[-1] != "x" else "y")
    assert not drill.evaluate(c, ref.replace("-".join(w), "-".join(wrong)))
    assert not drill.evaluate(c, ref.rsplit("\n", 1)[0])         # a word left out
    assert drill.grades(c, ref.rsplit("\n", 1)[0]) == {"words": 2 / 3}


def test_spelling_training_questions_vary_and_never_word_an_ood_question(data_env):
    """Training questions come from a grammar (many wordings, the word and the letter written in
    several ways) whose templates never normalise to one of spelling_ood's held-out phrasings;
    the test split keeps the fixed QUESTIONS; every question holds its word and its letter."""
    sp = tasks.get("spelling")
    ood = {spelling.normalise(q) for q in spelling.OOD_QUESTIONS}
    r = random.Random(0)
    assert not any(spelling.normalise(spelling.grammar_question(r)) in ood for _ in range(20000))
    shapes = set()
    for i in range(3000):
        c = sp.example("train", i)
        q, w, l = c["messages"][0]["content"], c["word"], c["letter"]
        assert w in q.lower() and (l in q or l.upper() in q), q
        shapes.add(q.lower().replace(w, "{w}"))
    assert len(shapes) > 1000                         # a grammar, not a handful of templates
    for i in range(200):
        c = sp.example("test", i)
        asked = {q.format(l=c["letter"], w=c["word"]) for q in spelling.QUESTIONS}
        assert c["messages"][0]["content"] in asked


def test_copy_probe_scores_the_second_copy(monkeypatch):
    tok = train_bpe(["abc def ghi jkl " * 50], 256 + len(trained_specials()) + 10)

    def fake_losses(params, cfg, toks):           # loss = the position index, to read slices
        B, T = toks.shape
        return np.broadcast_to(np.arange(T - 1, dtype=np.float32), (B, T - 1))
    monkeypatch.setattr(probes, "_losses", fake_losses)

    class Cfg:
        block_size = 33
    out = probes.copy_probe(None, Cfg, tok, rows=2)
    L = 16                                          # (33 - 1) // 2
    assert out["probe/copy"] == pytest.approx(np.arange(L, 2 * L).mean())
    assert out["probe/copy_first"] == pytest.approx(np.arange(1, L).mean())
    with pytest.raises(ValueError, match="unknown probe"):
        probes.run(None, Cfg, tok, ["nope"])


def test_copy_lengths_and_text_copy_read_their_slices(monkeypatch):
    tok = train_bpe(["abc def ghi jkl " * 50], 256 + len(trained_specials()) + 10)
    seen = []

    def fake_losses(params, cfg, toks):           # loss = the position index, to read slices
        B, T = toks.shape
        seen.append(np.asarray(toks))
        return np.broadcast_to(np.arange(T - 1, dtype=np.float32), (B, T - 1))
    monkeypatch.setattr(probes, "_losses", fake_losses)
    monkeypatch.setattr(probes.bpb, "documents", lambda name: ["abc def ghi jkl " * 40])

    class Cfg:
        block_size = 100                          # runs of 8-48 fit (2n + 1 <= 100), 64 does not
    out = probes.run(None, Cfg, tok, ["copy_lengths", "text_copy"])
    assert sorted(k for k in out if k.startswith("probe/copy_") and "first" not in k) == sorted(
        f"probe/copy_{n}" for n in (8, 16, 32, 48))
    for n in (8, 16, 32, 48):
        assert out[f"probe/copy_{n}"] == pytest.approx(np.arange(n, 2 * n).mean())
        assert out[f"probe/copy_first_{n}"] == pytest.approx(np.arange(1, n).mean())
    assert out["probe/text_copy_40"] == pytest.approx(np.arange(50, 80).mean())
    assert out["probe/text_first_40"] == pytest.approx(np.arange(10, 40).mean())
    assert "probe/text_copy_100" not in out
    text = seen[-1][0]                             # [BOS] s s: the passage written twice
    assert text[0] == tok.bos_id and list(text[1:41]) == list(text[41:81])


def test_a_task_mixture_draws_by_weight_and_grades_by_origin():
    mix = tasks.get("arithmetic_easy:1,word_problems:3")
    assert mix.splits == ("train", "rl", "test")
    convs = [mix.example("rl", i) for i in range(400)]
    share = sum(c["task"] == "word_problems" for c in convs) / len(convs)
    assert 0.65 < share < 0.85
    assert all(mix.evaluate(c, reference(c)) for c in convs[:50])
    assert mix.example("rl", 7) == mix.example("rl", 7)              # seeded
    with pytest.raises(KeyError):
        tasks.get("arithmetic_easy:1,nope:1")


def test_everyday_questions_load_and_grade():
    for part, n in (("math", 40), ("letters", 30), ("recall", 10)):
        t = tasks.get(f"everyday_{part}")
        assert t.size("test") == n and t.splits == ("test",)
        for i in range(n):
            c = t.example("test", i)
            ok = f"So the answer is {c['answer']}.\n#### {c['answer']}" if part != "recall" \
                else f"It is {c['answer']}."
            assert t.evaluate(c, ok) and not t.evaluate(c, "#### 99999 nothing")
    with pytest.raises(ValueError):
        tasks.get("everyday_math").example("train", 0)       # evaluation only


def test_induction_docs_repeat_their_run_and_never_hold_out_words(data_env):
    docs = corpus.induction_docs(300)
    assert len(set(docs)) == 300
    held = {ood for ood in (tasks.get("spelling_ood").example("test", i)["word"]
                            for i in range(2000))}
    for d in docs:
        copies = d.split("\n\n")
        assert len(copies) in (2, 3) and len(set(copies)) == 1 and copies[0]
        assert not {w.lower() for w in re.findall(r"[A-Za-z]+", d)} & held


def test_recall_answers_copy_the_value_token_for_token():
    """The reply writes the value after a space, as statements do, so its tokens are the same as
    the ones in the context (a value at the start of a reply tokenizes differently)."""
    rc = tasks.get("recall")
    for i in range(300):
        c = rc.example("train", i)
        reply, v = c["messages"][-1]["content"], c["answer"]
        assert f" {v}" in reply and not reply.startswith(v), reply
