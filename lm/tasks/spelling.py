"""Spelling and counting ("How many r are in strawberry?"): the reply spells the word letter by
letter, then counts with the calculator (`' strawberry'.count('r')`) and ends with `#### N`.

About one word in five, chosen by a stable hash of the word, is held out: no split that trains
ever spells it. `spelling` trains on the other words of TinyStories, the Gutenberg books and
WikiText (lower-case words of 2-15 letters), and its `test` split asks about held-out TinyStories
words (words seen at least twice there) in the training phrasings. `spelling_ood` asks about
held-out words of every length and corpus frequency (sampled evenly over length x frequency
buckets, rare ones included), in phrasings training never uses, and is graded on the spelled-out
letters as well as the count. Infinite and seeded.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from functools import cached_property

from lm.conversation import conversation
from lm.data import sources
from lm.tasks.base import Generated, final_number, held_out, read_text_file, same_number

# the word always follows a space, so its tokens in the question are the ones the reply copies
# into the calculator call (`' strawberry'.count('r')`)
QUESTIONS = [
    "How many {l} are in {w}?",
    "How many times does the letter {l} appear in the word {w}?",
    "Count the letter {l} in the word {w}.",
    "How many {l}'s does the word {w} have?",
    "In the word {w}, how many times do you see the letter {l}?",
    "Can you tell me how many '{l}' there are in {w}?",
    "how many {l} in {w}",
    "What is the number of {l}'s in the word {w}?",
]
# phrasings of spelling_ood only (no training conversation is worded like these)
OOD_QUESTIONS = [
    "Spell {w} and tell me how many times {l} occurs in it.",
    "I'm writing the word {w}. How often does the letter {l} show up?",
    "Quick question: number of {l} letters in {w}?",
    "Could you count the {l}s in \"{w}\" for me?",
    "If I write out {w}, how many {l} will I have written?",
    "{w}: how many {l}?",
]
# A grammar of training questions beside QUESTIONS: a core sentence x how the letter is written
# x how the word is written x an opener and an ending, lower-cased now and then, so that no
# fixed wording tells the model where the word and the letter are: it has to find them in the
# question and copy them (reading the context). None of spelling_ood's phrasings is generated
# (`Spelling.question` refuses one that normalises to them).
CORES = [  # {N}: the letter as a counted noun ("how many {N}"), {S}: named once ("the letter a")
    "how many {N} are in {W}", "how many {N} are there in {W}", "how many {N} does {W} have",
    "how many {N} does {W} contain", "how many times does {S} appear in {W}",
    "how many times is {S} in {W}", "count the {N} in {W}", "count how many {N} {W} has",
    "what is the count of {S} in {W}", "what's the number of {N} in {W}",
    "in {W}, how many {N} are there", "{W} has how many {N}", "tell me how many {N} {W} has",
    "find how many {N} are in {W}", "give me the number of {N} in {W}",
    "how many times do you see {S} in {W}", "what number of {N} is in {W}",
    "how many {N} can you find in {W}", "look at {W}. how many {N} are in it",
    "I need the number of {N} in {W}", "{W} - count the {N}", "count {S} in {W}",
]
COUNTED = ["{l}", "{l}s", "{l}'s", "'{l}'s", "{u}", "{u}'s", "{u}s"]
SINGLE = ["{l}", "the letter {l}", "letter {l}", "'{l}'", "the letter '{l}'", "{u}",
          "the letter {u}"]
WORD_FORMS = ["{w}", "{w}", "the word {w}", "'{w}'", "\"{w}\"", "the word '{w}'", "{c}"]
OPENERS = ["", "", "", "", "Hey, ", "Hi! ", "Question: ", "Please tell me: ", "I'd like to know: ",
           "OK so ", "Hmm, ", "Help me out: ", "Simple one: ", "Teacher asks: "]
ENDINGS = ["?", "?", "?", "", ".", "? thanks", " please?", "??", " :)"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
OTHER_TEXTS = ["wikitext2_valid"] + [f"gutenberg/{f}" for f in sources.GUTENBERG]
LENGTHS = ((2, 4), (5, 7), (8, 10), (11, 15))
FREQUENCIES = ((1, 1), (2, 9), (10, 99), (100, 10 ** 12))   # occurrences in the texts


# Beside CORES, half the grammar's questions are composed: the word named first and then asked
# about as "it" (LEADS x ABOUT_IT), or an asking verb x where the letters are (MORE_CORES), so
# that where the word stands and which verb asks are not cues either (issue 23)
LEADS = ["Take the word {W}.", "Here is a word: {W}.", "Think of {W}.", "Consider {W}.",
         "The word is {W}.", "My word is {W}.", "Word: {W}.", "Let's use {W}."]
ABOUT_IT = ["how many {N} does it have", "how many {N} are in it", "how many {N} are there",
            "how many times does {S} appear in it", "how often does {S} appear in it",
            "how many {N} can you count in it", "count the {N} in it",
            "what is the count of {S} in it", "how many times is {S} used in it",
            "how often is {S} written in it", "how many {N} does it contain"]
MORE_CORES = ["how often does {S} appear in {W}", "how often is {S} in {W}",
              "how many {N} would you count in {W}", "how many {N} are used in {W}",
              "how many {N} do I need to write {W}", "how many times is {S} written in {W}",
              "spell {W}, then count the {N}", "spell {W} and count the {N}",
              "spell out {W}. How many {N} are there", "what's the count of {N} for {W}",
              "tally the {N} in {W}", "{W} contains how many {N}",
              "how many {N} are in the spelling of {W}",
              "when you spell {W}, how many {N} are there"]


def grammar_question(rng: random.Random) -> str:
    """One question template of the grammar (CORES, or the composed forms above, x letter forms x
    WORD_FORMS, an opener and an ending, sometimes all lower case); {l}, {u} (upper case), {w},
    {c} (capitalised) remain."""
    r = rng.random()
    it = rng.choice(ABOUT_IT)
    core = rng.choice(CORES) if r < 0.5 else rng.choice(MORE_CORES) if r < 0.75 else \
        rng.choice(LEADS) + " " + it[0].upper() + it[1:]
    core = core.replace("{N}", rng.choice(COUNTED)).replace(
        "{S}", rng.choice(SINGLE)).replace("{W}", rng.choice(WORD_FORMS))
    q = rng.choice(OPENERS) + core + rng.choice(ENDINGS)
    return q[0].upper() + q[1:] if rng.random() < 0.7 else q


def normalise(template: str) -> str:
    """A question template compared by its words only (case, quotes and punctuation dropped)."""
    t = template.replace("{u}", "{l}").replace("{c}", "{w}").lower()
    return " ".join(re.findall(r"\{[lw]\}|[a-z']+", t.replace("'", " ")))


_OOD_NORMALISED = {normalise(q) for q in OOD_QUESTIONS}


def words_from_text(text: str, min_count: int = 2) -> list[str]:
    counts = Counter(re.findall(r"\b[a-z]{3,14}\b", text))
    return sorted(w for w, n in counts.items() if n >= min_count)


def word_counts(text: str) -> Counter:
    return Counter(re.findall(r"\b[a-z]{2,15}\b", text))


_SPELLING = re.compile(r"\b([a-zA-Z](?:-[a-zA-Z])+)\b")


def spellings(reply: str) -> list[str]:
    """The letters of every `x-y-z` spelling in a reply, in order, lower case."""
    return [m.replace("-", "").lower() for m in _SPELLING.findall(reply)]


def spelled(reply: str) -> str:
    """The letters of the first `x-y-z` spelling in a reply ('' if none)."""
    m = _SPELLING.search(reply)
    return m.group(1).replace("-", "").lower() if m else ""


def answer_parts(word: str, letter: str) -> tuple[list[dict], str]:
    n = str(word.count(letter))
    expr = f"' {word}'.count('{letter}')"          # the space keeps the word's own tokens
    return [
        {"type": "text", "text": f"Let me spell it: {'-'.join(word)}.\n"
                                 f"Now I count the letter {letter} with the calculator: "},
        {"type": "python", "text": expr},
        {"type": "output", "text": n},
        {"type": "text", "text": f"\nThere {'is' if n == '1' else 'are'} {n} {letter}'s in "
                                 f"the word {word}.\n#### {n}"},
    ], n


REPLY_FORMATS = ("tool", "spell", "direct")


def reply_in_format(word: str, letter: str, fmt: str) -> tuple[list[dict] | str, str]:
    """The reply in one of `REPLY_FORMATS` (issue 26, tokenization and spelling): `tool` spells
    the word and counts with the calculator (the chain's), `spell` spells it and counts by
    naming the positions, `direct` gives the count alone."""
    if fmt == "tool":
        return answer_parts(word, letter)
    n = word.count(letter)
    are = f"There {'is' if n == 1 else 'are'} {n} {letter}'s in the word {word}.\n#### {n}"
    if fmt == "direct":
        return are, str(n)
    if fmt != "spell":
        raise ValueError(f"unknown spelling reply format {fmt!r}; known: {list(REPLY_FORMATS)}")
    at = [str(k + 1) for k, c in enumerate(word) if c == letter]
    where = (f"The letter {letter} is at position{'s' if n > 1 else ''} {', '.join(at)}."
             if at else f"The letter {letter} does not occur.")
    return f"Let me spell it: {'-'.join(word)}.\n{where}\n{are}", str(n)


def _read(name: str) -> str:
    return read_text_file(name).lower()


class Spelling(Generated):
    """`fmt`: the reply format (`REPLY_FORMATS`; the same words, letters and questions in each,
    as `spelling`'s), e.g. `spelling_direct` answers with the count alone."""
    name = "spelling"
    kind = "generative"

    def __init__(self, seed: int = 0, words: list[str] | None = None, fmt: str = "tool"):
        self.seed = seed
        self._given = words
        self.fmt = fmt
        if fmt != "tool":
            self.name = f"spelling_{fmt}"

    @cached_property
    def counts(self) -> Counter:
        """Word frequencies over TinyStories, the Gutenberg books and WikiText (lower case)."""
        c = word_counts(_read("tinystories_train"))
        for name in OTHER_TEXTS:
            c.update(word_counts(_read(name)))
        return c

    @cached_property
    def words(self) -> dict[str, list[str]]:
        if self._given is not None:
            return {"train": [w for w in self._given if not held_out(w, 5)],
                    "test": [w for w in self._given if held_out(w, 5)]}
        stories = words_from_text(_read("tinystories_train"))
        return {"train": sorted(w for w in self.counts if not held_out(w, 5)),
                "test": [w for w in stories if held_out(w, 5)]}

    def question(self, split: str, rng: random.Random) -> str:
        """A question template ({l}, {w} to fill): the fixed QUESTIONS (the test split's
        wording), or for training, two times in three, one put together by the grammar."""
        if split == "test" or rng.random() < 1 / 3:
            return rng.choice(QUESTIONS)
        while True:
            q = grammar_question(rng)
            if normalise(q) not in _OOD_NORMALISED:
                return q

    def pick_word(self, split: str, rng: random.Random) -> str:
        return rng.choice(self.words[split])

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i, key=type(self).name)     # a format's items are spelling's
        word = self.pick_word(split, rng)
        present = sorted(set(word))
        letter = rng.choice(present) if rng.random() < 0.85 else rng.choice(
            [c for c in LETTERS if c not in word])
        parts, n = reply_in_format(word, letter, self.fmt)
        q = self.question(split, rng).format(l=letter, w=word, u=letter.upper(),
                                             c=word.capitalize())
        return conversation(q, parts, task=self.name, answer=n, word=word, letter=letter)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def grades(self, conv: dict, reply: str) -> dict[str, bool]:
        """The count, and (in the formats that spell) the spelled letters: the calculator
        counts the word copied from the question, so the count alone can be right while the
        spelling is not (the chain's SFT: 91.5% counts, 7.5% spellings, landing 47)."""
        out = {"count": same_number(final_number(reply), conv["answer"])}
        if self.fmt != "direct":
            out["letters"] = spelled(reply) == conv["word"]
        return out

    def max_new_tokens(self) -> int:
        return 128


class SpellingOOD(Spelling):
    """Held-out words of every length and frequency bucket, held-out phrasings; right when the
    spelled letters are the word's and the count is right. Evaluation only (its `train` split is
    `spelling`'s)."""
    name = "spelling_ood"

    @cached_property
    def buckets(self) -> list[list[str]]:
        return self.buckets_of(self.counts)

    @staticmethod
    def buckets_of(counts: Counter) -> list[list[str]]:
        """The held-out words by length x corpus frequency (`LENGTHS` x `FREQUENCIES`)."""
        held = [w for w in counts if held_out(w, 5)]
        out = []
        for lo, hi in LENGTHS:
            for flo, fhi in FREQUENCIES:
                b = sorted(w for w in held if lo <= len(w) <= hi and flo <= counts[w] <= fhi)
                if b:
                    out.append(b)
        return out

    def question(self, split: str, rng: random.Random) -> str:
        return rng.choice(OOD_QUESTIONS if split == "test" else QUESTIONS)

    def pick_word(self, split: str, rng: random.Random) -> str:
        if split != "test":
            return super().pick_word(split, rng)
        return rng.choice(rng.choice(self.buckets))

    def evaluate(self, conv: dict, reply: str) -> bool:
        return spelled(reply) == conv["word"] and super().evaluate(conv, reply)


# asks of the spelling drill (none of them counts a letter, so none is spelling_ood's wording)
DRILL_ASKS = ["Spell these words letter by letter: {ws}.", "Spell each of these words: {ws}.",
              "How do you spell {ws}?", "Please spell {ws}, one letter at a time.",
              "spell {ws}", "Can you spell out {ws} for me?", "Write out the letters of {ws}.",
              "What are the letters in {ws}?", "Letter by letter, please: {ws}."]
# the drill's words in other forms too (`spelling_drill_forms`, an ablation: no gain on
# spelling OOD and recall 7 points lower in two SFTs, landing 47)
DRILL_FORMS = ["{w}", "{w}", "{w}", "{w}", "\"{w}\"", "'{w}'", "{c}"]


class SpellingDrill(Spelling):
    """Several words spelled in one reply ("1. costume: c-o-s-t-u-m-e"), each after the word
    itself (with `forms`, written plain, in quotes or capitalised, as in the ask): the letters of
    each token, many words a conversation. The spelling question teaches finding the word and
    counting; one word a conversation is too few to learn the letters of 4,096 tokens (the
    chain's SFT spelled 13% of its own training words right, landing 47). Training words only;
    the `test` split asks held-out words of every length and frequency (spelling_ood's buckets)
    and is right when every word is."""
    name = "spelling_drill"

    def __init__(self, seed: int = 0, forms: bool = False):
        super().__init__(seed)
        self.with_forms = forms
        if forms:
            self.name = "spelling_drill_forms"

    @cached_property
    def held_buckets(self) -> list[list[str]]:
        return SpellingOOD.buckets_of(self.counts)

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        n = rng.randint(4, 12) if split == "train" else 3
        pick = ((lambda: rng.choice(rng.choice(self.held_buckets)))
                if split == "test" else (lambda: self.pick_word(split, rng)))
        words: list[str] = []
        while len(words) < n:
            w = pick()
            if w not in words:
                words.append(w)
        # how each word is written, in the ask and on its line alike: after a space (its tokens
        # in most questions), or with `forms` in quotes or capitalised (other tokens)
        forms = [rng.choice(DRILL_FORMS).format(w=w, c=w.capitalize()) for w in words] \
            if self.with_forms else list(words)     # (plain: no draw, landing 47's items exactly)
        ws = ", ".join(forms[:-1]) + " and " + forms[-1] if rng.random() < 0.5 else ", ".join(forms)
        reply = "\n".join(f"{k + 1}. {f}: {'-'.join(w)}" for k, (f, w) in
                           enumerate(zip(forms, words)))
        return conversation(rng.choice(DRILL_ASKS).format(ws=ws), reply, task=self.name,
                            words=words)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return spellings(reply) == conv["words"]

    def grades(self, conv: dict, reply: str) -> dict[str, float]:
        """The share of the words spelled right in their place."""
        got = spellings(reply)
        return {"words": sum(a == b for a, b in zip(got, conv["words"])) / len(conv["words"])}

    def max_new_tokens(self) -> int:
        return 128


class SpellingOODSeenPhrasings(SpellingOOD):
    """spelling_ood's test items (the same words and letters) asked in the fixed QUESTIONS
    (training's, and spelling's test split's; evaluation only): the words without the held-out
    wording."""
    splits = ("test",)

    def __init__(self, seed: int = 0):
        super().__init__(seed)
        # an instance name: items are drawn under the class's, so they are spelling_ood's
        self.name = "spelling_ood_seen_phrasings"

    def question(self, split: str, rng: random.Random) -> str:
        return rng.choice(QUESTIONS)
