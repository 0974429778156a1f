"""Reading the context: facts stated earlier in a conversation, asked for later (`recall`), and
text to repeat exactly (`copy`). Both are answered only from what is in front of the model.

`recall`: the user states one to three facts about themselves (a pet's name, a number, a word, a
city, a colour, a food), possibly with other turns in between, and later asks for one of them.
Values, statement phrasings and question phrasings each have held-out pools: a `test`
conversation uses values and phrasings that no `train` one does, so it measures reading the
context, not remembering answers. Graded on the value appearing in the reply as a whole word.
Most training values are made up (`open_value`: pronounceable names and words, numbers of one
to five digits), so a fixed list of answers cannot be memorised and copying is the only way to
be right; the test values are ordinary ones from the small pools. Two in three training
conversations come from a grammar of phrasings (relations x keys x frames, below) rather than
FACTS' fixed frames; `recall_seen_phrasings` asks the test conversations in the fixed training
frames, so the gap to `recall` is what the held-out wording costs.

`copy`: "Repeat after me: ...", "Write this back exactly: ..." over random word strings, digit
strings and sentences; graded on the exact copy.
"""
from __future__ import annotations

import collections
import functools
import json
import random
import re
from typing import Optional

from lm.conversation import conversation
from lm.tasks.base import Generated, has_word, stable_hash
from lm.tasks.everyday import DATA as EVERYDAY_DATA

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


def _is_test_value(v: str) -> bool:
    return stable_hash(f"recall/{v}") % 4 == 0


def split_values(values: list[str], split: str) -> list[str]:
    """A quarter of `values` (by hash) for the test split; the rest for training, less any value
    that another pool holds out in any case ("olive" the colour trains nothing where "Olive" is
    a held-out pet name)."""
    if split == "test":
        return [v for v in values if _is_test_value(v)]
    held = held_out_values()
    return [v for v in values if not _is_test_value(v) and v.lower() not in held]


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


@functools.cache
def held_out_values() -> frozenset[str]:
    """Every test value of every pool, lowercased: training values, made up or pooled, avoid
    them."""
    pools = [p for p, _, _ in FACTS.values() if p is not None]
    return frozenset(v.lower() for p in pools for v in p if _is_test_value(v))


def open_value(shape: str, rng: random.Random) -> str:
    """A made-up pronounceable word ("word") or capitalised name ("name") of 2-3 syllables,
    never one of the held-out test values: unlimited training values that only copying gets
    right."""
    held = held_out_values()
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
        "train": ["I grew up in {v}.", "My hometown is {v}.",
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


# ---- a grammar of training conversations (issue 23) -------------------------------------------
# FACTS' fixed templates give each kind 2-6 frames. The SFT model copies a value it never saw
# from a frame it was trained on (`recall_seen_phrasings` 0.795) and not from one it was not
# (`recall` 0.21): it learned the templates, not the lookup (docs/context.md, "Copying or
# phrasing?"). Relations x keys x frames x openers, endings and chit-chat around the fact, so
# that no fixed wording says where the value is: the question's key has to be matched against
# what was said. Frames are
# held out against the test split's and the everyday set's phrasings (`frame`: keys and value
# abstracted), and the test split's own keys (terrier, brother, dish, ticket, room number, ...)
# are never keys here.
PET_KEYS = ["dog", "cat", "puppy", "kitten", "parrot", "hamster", "rabbit", "goldfish", "horse",
            "tortoise", "budgie", "pony", "guinea pig", "lizard", "ferret", "pet", "canary",
            "goat", "turtle"]
PERSON_KEYS = ["best friend", "sister", "neighbour", "boss", "cousin", "teacher", "roommate",
               "colleague", "partner", "son", "daughter", "uncle", "aunt", "coach", "doctor",
               "landlord", "husband", "wife", "grandmother", "grandfather", "mother", "father",
               "nephew", "niece", "classmate", "manager", "dentist", "friend"]
NUMBER_KEYS = ["locker number", "lucky number", "house number", "PIN", "door code", "bus number",
               "seat number", "order number", "flat number", "parking spot", "table number",
               "gate number", "favourite number", "badge number", "account number",
               "bike lock code", "shoe size", "score", "platform number", "student number"]
EVENT_KEYS = ["appointment", "party", "exam", "interview", "concert", "flight", "dentist visit",
              "match", "wedding", "haircut", "piano lesson", "birthday dinner", "trip"]
WORD_KEYS = ["password", "secret word", "magic word", "keyword", "passphrase", "safe word",
             "codeword", "word of the day"]
WEAR_KEYS = ["shirt", "hat", "jacket", "dress", "scarf", "coat", "sweater", "umbrella", "bag"]
PAINT_KEYS = ["room", "door", "fence", "kitchen", "bedroom", "bike", "boat", "front door"]
MEALS = ["breakfast", "lunch", "dinner", "a snack", "dessert"]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
JOBS = ("nurse teacher baker pilot plumber lawyer farmer chef painter dentist engineer "
        "librarian carpenter pharmacist firefighter architect journalist electrician "
        "mechanic gardener accountant designer photographer waiter tailor").split()
# (type, keys, statements, questions): {K} a key, {v} the value; "" where a relation has no key
RELATIONS = [
    ("pet", PET_KEYS,
     ["My {K} is called {v}.", "My {K}'s name is {v}.", "I have a {K} called {v}.",
      "I have a {K} named {v}.", "We named our {K} {v}.", "Our {K} is called {v}.",
      "I call my {K} {v}.", "{v} is the name of my {K}.", "My {K} goes by {v}.",
      "I just got a {K}. I named it {v}.", "Say hi to {v}, my {K}.", "My {K}, {v}, is asleep."],
     ["What's my {K}'s name?", "What did I call my {K}?", "What is the name of my {K}?",
      "Do you remember my {K}'s name?", "What's my {K} called?", "How is my {K} called?",
      "What name does my {K} have?", "Tell me my {K}'s name.", "What did I name my {K}?"]),
    ("friend", PERSON_KEYS,
     ["My {K} is {v}.", "My {K} is called {v}.", "My {K}'s name is {v}.",
      "I have a {K} named {v}.", "{v} is the name of my {K}.", "My {K}, {v}, called me today.",
      "I had lunch with my {K} {v}.", "My {K} goes by {v}.", "I'm visiting my {K}, {v}."],
     ["Who is my {K}?", "What's my {K}'s name?", "What is the name of my {K}?",
      "Do you remember who my {K} is?", "What did I say my {K} is called?",
      "Tell me my {K}'s name.", "Who did I say my {K} was?", "What's my {K} called?"]),
    ("name", [""],
     ["I'm {v}.", "Call me {v}.", "People call me {v}.", "I am called {v}.",
      "Hi, I'm {v}.", "Hello! My name's {v}.", "Everyone calls me {v}."],
     ["What's my name?", "Do you remember my name?", "What did I say my name was?",
      "What am I called?", "Tell me my name.", "What name did I tell you I have?"]),
    ("number", NUMBER_KEYS,
     ["My {K} is {v}.", "The {K} is {v}.", "My {K}: {v}.",
      "Write down my {K}, it's {v}.", "Remember my {K}, {v}.", "I got {K} {v} today.",
      "Today my {K} is {v}."],
     ["What is my {K}?", "What's my {K}?", "What was my {K}?", "Do you remember my {K}?",
      "Tell me my {K}.", "Which {K} did I give you?", "What did I say my {K} is?"]),
    ("number", [""],
     ["I am {v} years old.", "I'm {v}.", "I turned {v} last month."],
     ["How old am I?", "What age did I say I am?", "How old did I say I was?"]),
    ("city", [""],
     ["I grew up in {v}.", "I'm from {v}.", "My hometown is {v}.",
      "I come from {v}.", "Home for me is {v}."],
     ["Where do I live?", "Where did I grow up?", "Where am I from?", "What's my hometown?",
      "Where do I come from?", "Where is home for me?"]),
    ("city", [""],
     ["I work in {v}.", "My office is in {v}.", "My job is in {v}."],
     ["Where do I work?", "Where is my office?", "In which city do I work?"]),
    ("city", [""],
     ["I'm flying to {v} tomorrow.", "Next week I'm travelling to {v}.",
      "I'm going to {v} on holiday.", "My next trip is to {v}."],
     ["Where am I flying to?", "Where am I travelling?", "Where am I going on holiday?",
      "Where is my next trip?", "Which city am I going to?"]),
    ("city", [""],
     ["I studied in {v}.", "I went to university in {v}.", "My parents live in {v}."],
     ["Where did I study?", "In which city did I go to university?",
      "Where do my parents live?"]),
    ("colour", [""],
     ["My favourite colour is {v}.", "I like the colour {v} best.", "{v} is my favourite colour.",
      "The colour I love most is {v}."],
     ["What is my favourite colour?", "What's my favourite colour?",
      "Which colour do I like best?", "What colour do I love most?"]),
    ("colour", ["car", "house", "bike", "phone", "front door"],
     ["My {K} is {v}.", "I have a {v} {K}.", "My {K} is painted {v}."],
     ["What colour is my {K}?", "Which colour is my {K}?", "What colour did I say my {K} is?"]),
    ("colour", PAINT_KEYS,
     ["I painted my {K} {v}.", "We painted the {K} {v} last weekend."],
     ["What colour did I paint my {K}?", "Which colour is the {K} now?"]),
    ("colour", WEAR_KEYS,
     ["I'm wearing a {v} {K} today.", "I bought a {v} {K}."],
     ["What colour is my {K}?", "Which colour was the {K} I mentioned?"]),
    ("food", [""],
     ["My favourite food is {v}.", "I really love {v}.", "{v} is my favourite food.",
      "I could eat {v} every day.", "I'm cooking {v} tonight.", "I ordered {v}."],
     ["What is my favourite food?", "What food do I love?", "What could I eat every day?",
      "What am I cooking tonight?", "What did I order?", "What's my favourite food?"]),
    ("food", MEALS,
     ["I had {v} for {K}.", "For {K} I ate {v}.", "{v} was my {K} today."],
     ["What did I have for {K}?", "What did I eat for {K}?", "What was my {K}?"]),
    ("word", WORD_KEYS,
     ["The {K} is {v}.", "My {K} is {v}.", "Remember this {K}: {v}.", "Our {K} is {v}.",
      "Please remember the {K} {v}.", "Here is the {K}: {v}."],
     ["What is the {K}?", "What's my {K}?", "Tell me the {K}.", "Do you remember the {K}?",
      "What did I say the {K} is?", "Which {K} did I give you?"]),
    ("day", EVENT_KEYS,
     ["My {K} is on {v}.", "I have my {K} on {v}.", "The {K} is on {v} this week.",
      "We moved my {K} to {v}.", "On {v} I have my {K}."],
     ["When is my {K}?", "What day is my {K}?", "Which day is my {K} on?",
      "On what day do I have my {K}?", "When did I say my {K} is?"]),
    ("year", [""],
     ["I moved here in {v}.", "I started my job in {v}.", "We got married in {v}.",
      "I finished school in {v}.", "I bought my house in {v}."],
     ["When did I move here?", "In which year did I start my job?", "When did we get married?",
      "What year did I finish school?", "When did I buy my house?"]),
    ("job", PERSON_KEYS,
     ["My {K} is a {v}.", "My {K} has been a {v} for years.", "My {K} works as a {v} now.",
      "My {K} just started as a {v}."],
     ["What is my {K}'s job?", "What does my {K} do for a living?", "What's my {K}'s job?",
      "What is my {K}'s profession?", "What work does my {K} do?"]),
]
TYPE_ASKS = {  # when one fact of the type was stated, a question that names no key
    "pet": ["What's the name of the animal I told you about?", "Which pet name did I mention?",
            "What animal name did I give you?"],
    "friend": ["Who did I mention?", "Who did I tell you about?", "Which person did I mention?",
               "What's the name of the person I told you about?", "Whose name did I say?"],
    "number": ["What number did I tell you?", "Which number did I mention?",
               "What was the number I said?", "Tell me the number I mentioned.",
               "What number did I give you?"],
    "city": ["Which city did I mention?", "What city did I talk about?",
             "Which place did I mention?", "Name the city I told you about.",
             "What place did I say?"],
    "colour": ["What colour did I mention?", "What colour did I say?",
               "Name the colour I mentioned."],
    "food": ["What food did I mention?", "Which food did I talk about?",
             "Name the food I told you about.", "What food did I say?"],
    "word": ["What word did I give you?", "Which word did I ask you to remember?",
             "What was the word?", "Say the word I told you."],
    "day": ["Which day did I mention?", "What day did I say?"],
    "year": ["Which year did I mention?", "What year did I say?"],
    "job": ["Which job did I mention?", "What job did I talk about?"],
    "name": [],
}
# Questions that name the fact by its type, composed: a frame x the type's noun x how it was
# said x when, so that no fixed wording of a type question ("Which city did I mention?") is all
# the model learns to answer (issue 23: the held-out questions are mostly worded by type). The
# test split's frames are refused by `allowed`; its own type nouns ("dish") are never used.
TYPE_NOUNS = {"pet": ["pet name", "pet's name", "animal's name", "name of my pet"],
              "friend": ["person", "person's name", "name of the person"],
              "number": ["number", "figure", "digits"],
              "city": ["city", "place", "town"],
              "colour": ["colour", "color", "shade"],
              "food": ["food", "meal", "thing to eat"],
              "word": ["word", "term"],
              "day": ["day", "weekday"],
              "year": ["year"],
              "job": ["job", "profession", "occupation", "line of work"]}
ASKED = ["I mentioned", "I said", "I told you", "I told you about", "I gave you", "I talked about",
         "I brought up", "I shared", "I named", "I wrote", "I spoke of", "you heard from me",
         "I shared with you", "I used"]
ASKED_Q = ["did I mention", "did I say", "did I tell you", "did I tell you about", "did I give you",
           "did I talk about", "did I bring up", "did I share", "did I name", "did I write",
           "did I use"]
ASKED_WHEN = ["", "", "", "", " earlier", " before", " a moment ago", " just now",
              " at the start", " in this chat", " a few messages back", " first", " today"]
TYPE_FRAMES = ["Which {T} {Q}{W}?", "What {T} {Q}{W}?", "What was the {T} {A}{W}?",
               "What is the {T} {A}{W}?", "What's the {T} {A}{W}?", "Tell me the {T} {A}{W}.",
               "Name the {T} {A}{W}.", "Say the {T} {A}{W}.", "Repeat the {T} {A}{W}.",
               "Give me the {T} {A}{W}.", "Do you remember the {T} {A}{W}?",
               "Do you recall the {T} {A}{W}?", "Can you tell me the {T} {A}{W}?",
               "Could you say the {T} {A}{W} once more?", "I need the {T} {A}{W}.",
               "The {T} {A}{W}: what was it?", "What was that {T} {A}{W}?",
               "Which one was the {T} {A}{W}?", "Recall the {T} {A}{W}, please."]
TYPE_ASK_SHARE = 0.4   # of grammar questions whose fact is the only one of its type


def type_ask(kind: str, rng: random.Random) -> str:
    """A question for the one fact of type `kind`: a third of the time one of TYPE_ASKS, else
    composed from TYPE_FRAMES and the parts above (held-out frames not yet refused)."""
    if TYPE_ASKS[kind] and rng.random() < 1 / 3:
        return rng.choice(TYPE_ASKS[kind])
    f = rng.choice(TYPE_FRAMES)
    return f.format(T=rng.choice(TYPE_NOUNS[kind]), Q=rng.choice(ASKED_Q),
                    A=rng.choice(ASKED), W=rng.choice(ASKED_WHEN))


# Statements that say the value in one clause and its type in another, in either order ("I'm
# sticking with amber if I get to pick a colour."): in the fixed and relation frames the value
# always stands beside its key, and the SFT model learned to answer with the key's neighbour
# (docs/context.md, "Where the value stands"). Such a fact is asked about by its type only.
APART_VALUE = ["I always go with {v}", "{v} is what I pick", "I keep coming back to {v}",
               "I'd choose {v}", "I'm sticking with {v}", "it has to be {v}", "my answer is {v}",
               "I settled on {v}", "I went for {v}", "nothing tops {v}", "I'll say {v}"]
APART_TYPE = ["when it comes to a {T}", "if I get to pick a {T}", "whenever I need a {T}",
              "as far as the {T} goes", "if you ask me for a {T}", "when I think of a {T}",
              "for this {T}", "if I had to name a {T}", "whenever someone wants a {T}"]
APART_TYPES = ("colour", "food", "word", "number", "city", "job", "day", "year")  # also nouns
APART_SHARE = 0.25   # of facts alone of such a type


def apart_statement(kind: str, rng: random.Random) -> str:
    """A statement ({v} for the value) with the value and its type in different clauses."""
    t = rng.choice(APART_TYPE).format(T=kind)
    if rng.random() < 0.5:
        s = f"{rng.choice(APART_VALUE)} {t}."
    else:       # the type first: the value clause does not start with the value
        s = f"{t}, {rng.choice([v for v in APART_VALUE if not v.startswith('{v}')])}."
    return s[0].upper() + s[1:]


SAY_OPENERS = ["", "", "", "", "By the way, ", "Oh, and ", "Just so you know, ", "Fun fact: ",
               "Quick note: ", "So, ", "Hey! ", "Okay. ", "Listen, ", "Hi. ", "Well, "]
SAY_ENDINGS = ["", "", "", "", " Just so you know.", " Please remember that.", " Don't forget it.",
               " It's a long story.", " Anyway.", " That's all."]
ASK_OPENERS = ["", "", "", "", "Quick question: ", "Hey, ", "So, ", "Sorry, ", "Okay, ",
               "One more thing: ", "Now, ", "Question: ", "Wait, "]
ASK_ENDINGS = ["", "", "", "", " Do you remember?", " I forgot.", " I can't remember.",
               " Thanks!"]
# the test split's own keys (never grammar keys) and type nouns (some are grammar keys too, e.g.
# "pet"): abstracted as {k} with the grammar's keys when frames are compared
_TEST_KEYS = ["terrier", "brother", "cinema", "oldest friend", "room number", "ticket", "dish",
              "evening", "family", "colour", "person", "number", "city", "word", "name", "pet"]


def _key_pattern() -> re.Pattern:
    keys = {k.lower() for _, ks, _, _ in RELATIONS for k in ks if k} | set(_TEST_KEYS)
    alts = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(rf"\b({alts})s?\b")


_KEY_RE = _key_pattern()


def frame(sentence: str, value: Optional[str] = None, keys: bool = True) -> str:
    """A phrasing compared by its words only (case and punctuation dropped), the value as {v}
    and, with `keys`, every key noun as {k}: two sentences with the same frame differ only in
    which pet, which number, which value."""
    t = sentence.replace("{K}", "{k}").lower()
    if value is not None:
        t = re.sub(rf"(?<!\w){re.escape(value.lower())}(?!\w)", "{v}", t)
    if keys:
        t = _KEY_RE.sub("{k}", t)
    return " ".join(re.findall(r"\{[kv]\}|[a-z0-9]+", t.replace("'", " ")))


@functools.cache        # read on first use, not at import
def _held_out() -> tuple[set[str], set[str]]:
    """(frames, sentences) no training phrasing may have: the frame of every test-split statement
    and question (keys abstracted: "Meet my cat, {v}." holds out "Meet my dog, {v}." too), and
    each sentence of the everyday set (lm/tasks/data/everyday.json), its value abstracted."""
    frames = set()
    for _, says, asks in FACTS.values():
        frames |= {frame(x) for x in says["test"] + asks["test"]}
    with open(EVERYDAY_DATA, encoding="utf-8") as f:
        items = json.load(f)["recall"]
    sentences = {frame(x, value, keys=False) for (said, asked), value in items
                 for x in (said, asked)}
    return frames, sentences


def allowed(template: str) -> bool:
    """A training phrasing ({v} for the value) that contains no test split's frame and none of
    the everyday set's sentences (as a run of whole words)."""
    frames, sentences = _held_out()
    f, w = f" {frame(template)} ", f" {frame(template, keys=False)} "
    return not any(f" {h} " in f for h in frames) and not any(f" {e} " in w for e in sentences)


def _sentence(template: str, key: str, openers: list, endings: list,
              rng: random.Random) -> Optional[str]:
    """The template with its key, an opener and an ending, now and then all lower case; None
    where the result is a held-out phrasing."""
    core = template.replace("{K}", key)
    o = rng.choice(openers)
    s = core[0].lower() + core[1:] if o.endswith((", ", ": ")) and core[:2] not in (
        "I ", "I'") and not core.startswith("{v}") else core
    s = o + s + rng.choice(endings)
    s = s if rng.random() < 0.85 or s.startswith("{v}") else s.lower()
    return s if allowed(core) and allowed(s) else None


def _grammar_value(kind: str, rng: random.Random) -> str:
    if kind in FACTS:
        return _value(kind, "train", rng)
    if kind == "name":
        return _value("friend", "train", rng)
    if kind == "day":
        return rng.choice(DAYS)
    if kind == "year":
        return str(rng.randint(1950, 2025))
    return rng.choice(JOBS)


def _phrase(options: list, key: str, openers: list, endings: list, rng: random.Random) -> str:
    while True:
        s = _sentence(rng.choice(options), key, openers, endings, rng)
        if s is not None:
            return s


GENERIC_KEYS = ("pet", "friend")     # keys that would name any fact of their type


def grammar_facts(rng: random.Random, n: int) -> list[dict]:
    """`n` facts of the grammar: {'type', 'relation', 'key', 'value'}; two facts of one type only
    with distinct, specific keys (a question then needs the key), values distinct."""
    facts: list[dict] = []
    while len(facts) < n:
        r = rng.randrange(len(RELATIONS))
        kind, keys = RELATIONS[r][0], RELATIONS[r][1]
        key = rng.choice(keys)
        same = [f for f in facts if f["type"] == kind]
        if any(f["relation"] == r and f["key"] == key for f in facts) or (same and (
                len(same) > 1 or key in GENERIC_KEYS or not key or key == same[0]["key"] or
                same[0]["key"] in GENERIC_KEYS or not same[0]["key"])):
            continue
        value = _grammar_value(kind, rng)
        if all(value.lower() != f["value"].lower() for f in facts):
            facts.append({"type": kind, "relation": r, "key": key, "value": value})
    return facts


def grammar_conversation(rng: random.Random) -> tuple[list[dict], dict, list[dict]]:
    """A training conversation of the grammar: (messages without the answer turn, the fact
    asked for, every fact stated). Facts are stated one turn each or together, now and then
    beside a small-talk question that is answered instead of acknowledged; small talk between;
    then a question that names the fact by its key or, when one fact has that type, by the
    type (always by the type for a fact said apart from it, `apart_statement`)."""
    facts = grammar_facts(rng, rng.choice([1, 1, 2, 3]))
    of_type = collections.Counter(f["type"] for f in facts)
    said = []
    for f in facts:
        f["apart"] = f["type"] in APART_TYPES and of_type[f["type"]] == 1 and \
            rng.random() < APART_SHARE
        options = [apart_statement(f["type"], rng)] if f["apart"] else \
            RELATIONS[f["relation"]][2]
        said.append(_phrase(options, f["key"], SAY_OPENERS, SAY_ENDINGS, rng)
                    .replace("{v}", f["value"]))
    turns = [" ".join(said)] if len(said) > 1 and rng.random() < 0.5 else said
    msgs: list[dict] = []
    for t in turns:
        reply = rng.choice(ACKS)
        if rng.random() < 0.2:
            u, reply = rng.choice(FILLER)
            t = f"{t} {u}"
        msgs += [{"role": "user", "content": t}, {"role": "assistant", "content": reply}]
    for _ in range(rng.choice([0, 0, 1, 2])):
        u, a = rng.choice(FILLER)
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    ask = rng.choice(facts)
    alone = ask["type"] in TYPE_NOUNS and of_type[ask["type"]] == 1
    if alone and (ask["apart"] or rng.random() < TYPE_ASK_SHARE):
        q = None
        while q is None:
            q = _sentence(type_ask(ask["type"], rng), "", ASK_OPENERS, ASK_ENDINGS, rng)
    else:
        q = _phrase(RELATIONS[ask["relation"]][3], ask["key"], ASK_OPENERS, ASK_ENDINGS, rng)
    msgs.append({"role": "user", "content": q})
    return msgs, ask, facts


@functools.cache
def fixed_train() -> dict:
    """FACTS' fixed training phrasings per kind, (statements, questions), less those with a
    held-out frame or sentence."""
    out = {}
    for kind, (_, says, asks) in FACTS.items():
        out[kind] = ([x for x in says["train"] if allowed(x)],
                     [x for x in asks["train"] if allowed(x)])
        assert all(out[kind]), f"recall: no training phrasing left for {kind}"
    return out


# training conversations from the grammar, the rest from FACTS' frames. Pretraining's recall
# conversations keep the frames (`lm.data.corpus.chat_tiny`; with the grammar there too, the SFT
# figures were the same: docs/context.md, "Copying or phrasing?")
GRAMMAR_SHARE = 2 / 3
ANSWERS = ["It's {v}.", "You told me it is {v}.", "That is {v}.", "You said {v}."]


def _phrasing(kind: str, part: int, split: str, rng: random.Random,
              swap: Optional[random.Random] = None) -> str:
    """A statement (`part` 1) or question (2) of FACTS' frames for `kind`: the test split's, or
    the allowed training ones; with `swap`, a training one drawn from `swap` instead of the one
    drawn from `rng` (which is still drawn, so `rng`'s later draws do not change)."""
    drawn = _pick(FACTS[kind][part], split, rng) if split == "test" else \
        rng.choice(fixed_train()[kind][part - 1])
    return swap.choice(fixed_train()[kind][part - 1]) if swap else drawn


class Recall(Generated):
    name = "recall"
    kind = "generative"
    splits = ("train", "test")

    def __init__(self, seed: int = 0, grammar_share: float = GRAMMAR_SHARE):
        self.seed = seed
        self.grammar_share = grammar_share

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        if split != "test" and rng.random() < self.grammar_share:
            msgs, fact, facts = grammar_conversation(rng)
            msgs.append({"role": "assistant",
                         "content": rng.choice(ANSWERS).format(v=fact["value"])})
            return {"messages": msgs, "task": self.name, "answer": fact["value"],
                    "fact": fact["type"], "values": [f["value"] for f in facts]}
        return self._fixed(rng, split)

    def _fixed(self, rng: random.Random, split: str,
               swap: Optional[random.Random] = None, parts: tuple = (1, 2)) -> dict:
        """A conversation in FACTS' fixed frames of `split` (training frames: those `allowed`);
        with `swap`, each phrasing drawn of `parts` (1 the statements, 2 the question) is
        replaced by a training frame drawn from `swap`, so every other draw (kinds, values,
        turns) stays the split's."""
        swap1, swap2 = (swap if p in parts else None for p in (1, 2))
        kinds = rng.sample(sorted(FACTS), rng.choice([1, 1, 2, 3]))
        facts = {k: _value(k, split, rng) for k in kinds}
        msgs = []
        statements = [_phrasing(k, 1, split, rng, swap1).format(v=facts[k]) for k in kinds]
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
        msgs.append({"role": "user", "content": _phrasing(ask, 2, split, rng, swap2)})
        # the value after a space, as the user wrote it: " Berlin" and "Berlin" are different
        # tokens (" B"+"er"+"lin" against "B"+...), and a reply that starts with the value must
        # map the first one instead of copying it (docs/context.md, "The first token")
        msgs.append({"role": "assistant", "content": rng.choice(ANSWERS).format(v=value)})
        return {"messages": msgs, "task": self.name, "answer": value, "fact": ask,
                "values": list(facts.values())}

    def evaluate(self, conv: dict, reply: str) -> bool:
        others = [m["content"] for m in conv["messages"] if m["role"] == "user"]
        return has_word(reply, conv["answer"]) and len(reply) < 200 and not any(
            reply.strip() == o for o in others)

    def max_new_tokens(self) -> int:
        return 48


class RecallSeenPhrasings(Recall):
    """`recall`'s test conversations (the same values, kinds and turns) in the fixed training
    frames (evaluation only): copying a value never seen from a phrasing that was. The gap to
    `recall` is what the new wording costs (docs/context.md, "Copying or phrasing?")."""
    name = "recall_seen_phrasings"
    splits = ("test",)
    parts = (1, 2)

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        return self._fixed(self.rng(split, i, key=Recall.name), "test",
                           swap=self.rng(split, i), parts=self.parts)


class RecallSeenStatements(RecallSeenPhrasings):
    """`recall`'s test conversations with only the statements in training frames, the held-out
    question kept: with `recall_seen_questions`, which half of a held-out wording is unread
    (docs/context.md, "Four times the SFT steps")."""
    name = "recall_seen_statements"
    parts = (1,)


class RecallSeenQuestions(RecallSeenPhrasings):
    """`recall`'s test conversations with the held-out statements and a training question."""
    name = "recall_seen_questions"
    parts = (2,)


COPY_ASKS = {
    "train": ["Repeat after me: {t}", "Please repeat exactly: {t}", "Say this back to me: {t}",
              "Copy this text: {t}", "Echo: {t}"],
    "test": ["Write this back exactly as it is: {t}", "Can you repeat the following? {t}"],
}
# A grammar of training asks beside COPY_ASKS' five (the same reason as the recall grammar's):
# who asks x verb x object x manner x where the text goes. The test asks' own parts ("write
# back", "the following", "as it is") are never used, so both stay held-out phrasings.
COPY_VERBS = ["repeat", "copy", "echo", "say back", "type out", "type back", "reproduce",
              "give me back", "repeat back", "copy out", "send back", "return", "say", "mirror"]
COPY_OBJECTS = ["this", "these words", "this text", "this line", "what I type", "my words",
                "the text", "exactly this", "the next line", "this sequence", "the words below",
                "this string", "this message"]
COPY_AFTER = ["that", "it", "the line above", "those words", "this", "that text"]
COPY_MANNERS = ["", "", "", " exactly", " word for word", " verbatim", " without changing anything",
                " as written", " letter for letter", " precisely", " with no changes"]
COPY_POLITE = ["", "", "", "Please ", "Kindly ", "I need you to ", "Just ", "Now ", "Your task: "]
COPY_ASKING = ["Can you ", "Could you ", "Would you ", "Will you "]
COPY_HELD_OUT_PARTS = ("write", "following", "as it is")


def copy_grammar_ask(rng: random.Random) -> str:
    """A training ask of the grammar, `{t}` where the text goes."""
    verb, manner = rng.choice(COPY_VERBS), rng.choice(COPY_MANNERS)
    if rng.random() < 0.75:                          # instruction, then the text
        obj = rng.choice(COPY_OBJECTS)
        asking = rng.random() < 0.3
        lead = rng.choice(COPY_ASKING) if asking else rng.choice(COPY_POLITE)
        instr = f"{lead}{verb} {obj}{manner}"
        sep = rng.choice(["? ", "?\n"]) if asking else rng.choice(
            [": ", ":\n", ". ", " - ", ":  "])
        text = rng.choice(["{t}", "{t}", "{t}", '"{t}"', "'{t}'"])
        ask = instr + sep + text
    else:                                            # the text, then the instruction
        instr = f"{rng.choice(COPY_POLITE)}{verb} {rng.choice(COPY_AFTER)}{manner}"
        ask = rng.choice(['{t}\n', '"{t}" - ', '{t} - ', '"{t}"\n']) + instr[0].upper() + \
            instr[1:] + rng.choice([".", "!", "", " please."])
    ask = ask[0].upper() + ask[1:]
    return ask if rng.random() < 0.85 else ask.lower()


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
        ask = copy_grammar_ask(rng) if split != "test" and rng.random() < GRAMMAR_SHARE else \
            _pick(COPY_ASKS, split, rng)
        q = ask.replace("{t}", text)
        return conversation(q, text, task=self.name, answer=text)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return " ".join(reply.split()) == conv["answer"]

    def max_new_tokens(self) -> int:
        return 48


class CopySeenPhrasings(Copy):
    """`copy`'s test texts (the same ones) asked for in COPY_ASKS' fixed training asks
    (evaluation only): the texts without the held-out wording."""
    name = "copy_seen_phrasings"
    splits = ("test",)

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i, key=Copy.name)
        text = _copy_text("test", rng)
        return conversation(rng.choice(COPY_ASKS["train"]).replace("{t}", text), text,
                            task=self.name, answer=text)
