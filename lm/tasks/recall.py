"""Reading the context: facts stated earlier in a conversation, asked for later (`recall`), and
text to repeat exactly (`copy`). Both are answered only from what is in front of the model.

`recall`: the user states one to three facts about themselves (a pet's name, a number, a word, a
city, a colour, a food), possibly with other turns in between, and later asks for one of them.
Values, statement phrasings and question phrasings each have held-out pools: a `test`
conversation uses values and phrasings that no `train` one does, so it measures reading the
context, not remembering answers. Graded on the value appearing in the reply as a whole word.
Most training values are made up (`open_value`: pronounceable names and words, numbers of one
to five digits), so a fixed list of answers cannot be memorised and copying is the only way to
be right; the test values are ordinary ones from the small pools.

`copy`: "Repeat after me: ...", "Write this back exactly: ..." over random word strings, digit
strings and sentences; graded on the exact copy.
"""
from __future__ import annotations

import random
import re

from lm.conversation import conversation
from lm.tasks.base import Generated, stable_hash

# value pools: a value is held out (test only) by a stable hash of itself
PET_NAMES = ("Rex Max Bella Luna Charlie Lucy Cooper Daisy Milo Bailey Coco Rocky Buddy Rosie "
             "Teddy Bear Duke Zeus Ginger Pepper Oscar Leo Nala Simba Biscuit Maple Ziggy Pip "
             "Olive Mochi Waffles Pickles Rusty Sandy Shadow Smokey Tiger Willow Ruby Jasper "
             "Hazel Finn Juno Otis Remy Kiwi Loki Nova Penny Dot Sprout Noodle Fudge Peanut "
             "Clover Basil Pumpkin Acorn Marble Button Tango Domino Comet Pixel Nugget").split()
PEOPLE = ("Anna Ben Carla David Elena Farid Greta Hugo Iris Jonas Kira Lars Mona Nico Olga Pablo "
          "Quinn Rosa Stefan Tara Umar Vera Walter Xenia Yusuf Zara Amir Bianca Conor Dana Emil "
          "Fiona Gus Helga Ivan Jada Kofi Lena Marco Nadia Owen Priya Rafael Sofia Theo Una "
          "Viktor Wendy Yara Zoltan").split()
CITIES = ("Paris Berlin Madrid Rome Lisbon Vienna Prague Dublin Oslo Helsinki Warsaw Athens "
          "Cairo Nairobi Lagos Accra Lima Quito Bogota Santiago Toronto Denver Boston Chicago "
          "Seattle Austin Miami Tokyo Osaka Seoul Manila Jakarta Hanoi Delhi Mumbai Karachi "
          "Dhaka Tehran Istanbul Kyiv Riga Tallinn Zurich Geneva Lyon Porto Seville Naples "
          "Munich Hamburg Krakow Sofia Belgrade Tunis Dakar Havana Sydney Perth Auckland").split()
COLOURS = ("red blue green yellow purple orange pink brown black white grey silver gold teal "
           "violet maroon navy beige turquoise crimson lavender olive amber indigo").split()
FOODS = ("pizza pasta sushi tacos curry soup salad rice noodles pancakes waffles burgers "
         "dumplings falafel lasagna risotto ramen paella bagels muffins omelettes porridge "
         "hummus kebabs pies chili tofu").split()
WORDS = ("lantern pebble orbit velvet canyon meadow thunder harbor prism quartz saddle "
         "tundra vortex walnut zephyr ember fjord glacier hammock igloo jigsaw kettle lagoon "
         "mosaic nectar oasis paddle quiver riddle sapphire timber umbra vessel willow yonder "
         "anchor beacon cobalt dynamo falcon garnet hollow ivory juniper kernel").split()


def split_values(values: list[str], split: str) -> list[str]:
    test = [v for v in values if stable_hash(f"recall/{v}") % 4 == 0]
    return test if split == "test" else [v for v in values if v not in test]


def _numbers(split: str, rng: random.Random) -> str:
    # test numbers have 3 digits ending in 7, 8 or 9; train numbers never do (1 to 5 digits)
    while True:
        n = rng.randint(10, 999) if split == "test" else rng.randint(0, 10 ** rng.randint(1, 5) - 1)
        if (100 <= n <= 999 and n % 10 >= 7) == (split == "test"):
            return str(n)


ONSETS = ("b c d f g h j k l m n p r s t v w z br ch cl dr fl gr kr pl sh st tr th sk sp "
          "").split(" ")
VOWELS = "a e i o u a e i o ai ea ou io".split()
CODAS = ("", "", "", "n", "r", "l", "s", "m", "t", "x", "nd", "rk", "st")
OPEN_SHAPES = {"pet": "name", "friend": "name", "city": "name", "colour": "word",
               "food": "word", "word": "word"}


def held_out_values() -> set[str]:
    """Every test value of every pool, lowercased: made-up training values avoid them."""
    pools = [p for p, _, _ in FACTS.values() if p is not None]
    return {v.lower() for p in pools for v in split_values(list(p), "test")}


def open_value(shape: str, rng: random.Random) -> str:
    """A made-up pronounceable word ("word") or capitalised name ("name") of 2-3 syllables,
    never one of the held-out test values: unlimited training values that only copying gets
    right."""
    held = _HELD_OUT
    while True:
        w = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                    for _ in range(rng.choice([2, 2, 3])))
        if 4 <= len(w) <= 11 and w not in held:
            return w.capitalize() if shape == "name" else w


# fact kinds: (value pool or generator, statements per split, questions per split)
FACTS = {
    "pet": (PET_NAMES, {
        "train": ["My dog is called {v}.", "I have a cat named {v}.", "Our puppy's name is {v}.",
                  "My pet's name is {v}.", "I just adopted a kitten and named it {v}.",
                  "We call our dog {v}."],
        "test": ["The name of my dog is {v}.", "I've got a little terrier, {v} is his name.",
                 "Meet my cat, {v}."]},
     {"train": ["What is my dog called?", "What's my pet's name?", "Do you remember my pet's "
                "name?", "What did I name my pet?"],
      "test": ["Which name did I give my dog?", "Remind me, what's my pet called?"]}),
    "friend": (PEOPLE, {
        "train": ["My best friend is {v}.", "My sister's name is {v}.", "I work with someone "
                  "called {v}.", "My neighbour is named {v}."],
        "test": ["I'm going to the cinema with {v} tonight, my oldest friend.",
                 "{v} is my brother."]},
     {"train": ["Who is my best friend?", "What is my sister's name?", "What's the name of the "
                "person I told you about?", "Who did I mention?"],
      "test": ["What was the name of the person I mentioned?", "Who did I say I know?"]}),
    "number": (None, {
        "train": ["My locker number is {v}.", "I live at number {v}.", "My lucky number is {v}.",
                  "The code for the door is {v}.", "I am {v} minutes from home."],
        "test": ["Please note my room number: {v}.", "The number on my ticket is {v}."]},
     {"train": ["What is my locker number?", "What number did I tell you?", "Which number did "
                "I mention?", "What was the number?"],
      "test": ["Can you repeat the number I gave you?", "What number was it again?"]}),
    "city": (CITIES, {
        "train": ["I live in {v}.", "I grew up in {v}.", "My hometown is {v}.",
                  "Next week I'm flying to {v}.", "I was born in {v}."],
        "test": ["These days I'm based in {v}.", "My family moved to {v} last year."]},
     {"train": ["Which city do I live in?", "Where did I grow up?", "What city did I mention?",
                "Where am I from?"],
      "test": ["Remind me which city I talked about.", "What's the name of the city I said?"]}),
    "colour": (COLOURS, {
        "train": ["My favourite colour is {v}.", "I painted my room {v}.", "My car is {v}."],
        "test": ["I always pick {v} when I can choose a colour."]},
     {"train": ["What is my favourite colour?", "What colour did I mention?"],
      "test": ["Which colour was it that I said?"]}),
    "food": (FOODS, {
        "train": ["I love eating {v}.", "My favourite food is {v}.", "For dinner I had {v}."],
        "test": ["Nothing beats {v} on a cold evening, in my opinion."]},
     {"train": ["What is my favourite food?", "What food did I mention?"],
      "test": ["Which dish did I tell you about?"]}),
    "word": (WORDS, {
        "train": ["The password is {v}.", "Remember this word: {v}.", "My secret word is {v}."],
        "test": ["Keep this word in mind for later: {v}."]},
     {"train": ["What is the password?", "What word did I ask you to remember?"],
      "test": ["Tell me the word I gave you earlier."]}),
}
_HELD_OUT = held_out_values()
OPEN_SHARE = 0.6   # training values that are made up rather than drawn from the small pools
ACKS = ["Got it.", "Okay, I will remember that.", "Noted!", "Thanks for telling me.",
        "I'll keep that in mind.", "Nice!"]
# turns in between: (user, assistant) pairs that need no tools
FILLER = [("How are you today?", "I'm doing well, thank you. How can I help?"),
          ("Can you help me with something?", "Of course. What do you need?"),
          ("Tell me a fun fact.", "Octopuses have three hearts."),
          ("What day comes after Monday?", "Tuesday comes after Monday."),
          ("Say something nice.", "You are doing a great job today."),
          ("What is the opposite of hot?", "The opposite of hot is cold.")]


def _value(kind: str, split: str, rng: random.Random) -> str:
    pool = FACTS[kind][0]
    if pool is None:
        return _numbers(split, rng)
    if split != "test" and rng.random() < OPEN_SHARE:
        return open_value(OPEN_SHAPES[kind], rng)
    return rng.choice(split_values(list(pool), split))


def _pick(options: dict, split: str, rng: random.Random) -> str:
    return rng.choice(options["test" if split == "test" else "train"])


def has_word(reply: str, value: str) -> bool:
    return re.search(rf"(?<![\w]){re.escape(value.lower())}(?![\w])", reply.lower()) is not None


class Recall(Generated):
    name = "recall"
    kind = "generative"
    splits = ("train", "test")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        kinds = rng.sample(sorted(FACTS), rng.choice([1, 1, 2, 3]))
        facts = {k: _value(k, split, rng) for k in kinds}
        msgs = []
        statements = [_pick(FACTS[k][1], split, rng).format(v=facts[k]) for k in kinds]
        if len(statements) > 1 and rng.random() < 0.5:       # several facts in one turn
            msgs += [{"role": "user", "content": " ".join(statements)},
                     {"role": "assistant", "content": rng.choice(ACKS)}]
        else:
            for st in statements:
                msgs += [{"role": "user", "content": st},
                         {"role": "assistant", "content": rng.choice(ACKS)}]
        for _ in range(rng.choice([0, 0, 1, 2])):
            u, a = rng.choice(FILLER)
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        ask = rng.choice(kinds)
        value = facts[ask]
        msgs.append({"role": "user", "content": _pick(FACTS[ask][2], split, rng)})
        # the value after a space, as the user wrote it: " Berlin" and "Berlin" are different
        # tokens (" B"+"er"+"lin" against "B"+...), and a reply that starts with the value must
        # map the first one instead of copying it (docs/context.md, "The first token")
        answers = ["It's {v}.", "You told me it is {v}.", "That is {v}.", "You said {v}."]
        msgs.append({"role": "assistant", "content": rng.choice(answers).format(v=value)})
        return {"messages": msgs, "task": self.name, "answer": value, "fact": ask}

    def evaluate(self, conv: dict, reply: str) -> bool:
        others = [m["content"] for m in conv["messages"] if m["role"] == "user"]
        return has_word(reply, conv["answer"]) and len(reply) < 200 and not any(
            reply.strip() == o for o in others)

    def max_new_tokens(self) -> int:
        return 48


COPY_ASKS = {
    "train": ["Repeat after me: {t}", "Please repeat exactly: {t}", "Say this back to me: {t}",
              "Copy this text: {t}", "Echo: {t}"],
    "test": ["Write this back exactly as it is: {t}", "Can you repeat the following? {t}"],
}


def _copy_text(split: str, rng: random.Random) -> str:
    kind = rng.choice(["words", "digits", "mixed"])
    pools = {"train": split_values(WORDS + COLOURS + FOODS, "train"),
             "test": split_values(WORDS + COLOURS + FOODS, "test")}
    if kind == "digits":
        return " ".join(str(rng.randint(0, 99)) for _ in range(rng.randint(2, 6)))
    words = [open_value("word", rng) if split != "test" and rng.random() < OPEN_SHARE
             else rng.choice(pools["test" if split == "test" else "train"])
             for _ in range(rng.randint(2, 7))]
    if kind == "mixed":
        words.insert(rng.randint(0, len(words)), str(rng.randint(1, 999)))
    return " ".join(words)


class Copy(Generated):
    name = "copy"
    kind = "generative"
    splits = ("train", "test")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        text = _copy_text(split, rng)
        q = _pick(COPY_ASKS, split, rng).format(t=text)
        return conversation(q, text, task=self.name, answer=text)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return " ".join(reply.split()) == conv["answer"]

    def max_new_tokens(self) -> int:
        return 48
