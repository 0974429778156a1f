"""Speech tasks (issue 31; `lm.audio`): "what was said?" about words spoken by Debian's
`espeak-ng` (made here, offline) in many voices, speeds and pitches.

Clips: every word of `WORDS` (the ten digits and thirty other words) in every voice of `VOICES`
(espeak-ng's English voices × voice variants), at `TAKES` (speed, pitch) settings a voice, drawn
with a fixed seed; the waves are resampled to 16 kHz and cached under the work dir's cache. One
voice in four is held out (its clips are asked only in evaluation), so the test measures new
speakers, not new recordings of known ones. Noise: training clips get white noise at a random
level (`NOISE_DB`: none, 20 or 10 dB SNR); `speech_digits_noisy` evaluates at 10 dB.

Tasks: `speech_digits` (the digits only) and `speech_words` (all words): a user turn of the clip
and a question, the reply `You said "seven".`; right when the reply names the spoken word (or,
for a digit, its numeral) and no other word of the list.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import wave as wavelib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from lm import audio, paths
from lm.conversation import conversation
from lm.tasks.base import Generated, TaskDataError, held_out

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = DIGITS + ("yes", "no", "stop", "go", "left", "right", "up", "down", "on", "off", "cat",
                  "dog", "bird", "tree", "house", "water", "music", "happy", "green", "red",
                  "blue", "apple", "bread", "river", "window", "garden", "yellow", "morning",
                  "friend", "orange")
VOICES = tuple(f"{v}{x}" for v in ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp",
                                   "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
               for x in ("", "+m3", "+f2", "+f4"))
SPEEDS, PITCHES, TAKES = (130, 160, 190), (35, 50, 70), 2
NOISE_DB = (None, 20.0, 10.0)
QUESTIONS = {"train": ["What was said?", "What word is this?", "Which word did you hear?",
                       "Transcribe the recording."],
             "test": ["What does the speaker say?", "Tell me the word in this recording."]}


def voices(split: str) -> list[str]:
    return [v for v in VOICES if held_out(f"voice/{v}", 4) == (split == "test")]


def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of `word`, 16 kHz float samples, leading/trailing silence cut."""
    from scipy.signal import resample_poly    # scipy (a JAX dependency): speech data only
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TaskDataError("the speech tasks make their clips with espeak-ng: apt install "
                            "espeak-ng")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.wav")
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, word],
                       check=True, capture_output=True, timeout=60)
        with wavelib.open(path) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    y = resample_poly(x, audio.SAMPLE_RATE, rate).astype(np.float32)
    loud = np.flatnonzero(np.abs(y) > 0.02)
    return y[max(0, loud[0] - 800):loud[-1] + 800] if loud.size else y


@lru_cache(maxsize=2)
def clips(split: str) -> list[dict]:
    """The split's clips: [{"word", "voice", "speed", "pitch", "wave"}] (made once, cached)."""
    rng = random.Random(f"speech/{split}")
    specs = [(w, v, *rng.choice([(s, p) for s in SPEEDS for p in PITCHES]))
             for v in voices(split) for w in WORDS for _ in range(TAKES)]
    # named by what is in it: another word list, voice or setting makes another file
    key = hashlib.sha256(json.dumps(specs).encode()).hexdigest()[:12]
    path = paths.cache_dir(f"speech-{split}-{len(specs)}-{key}.npz")
    if os.path.exists(path):
        z = np.load(path)
        waves = np.split(z["samples"], z["ends"][:-1])
    else:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:    # espeak-ng runs one a core
            # kept as float16, as the cache keeps them: a fresh run and a cached one agree
            waves = [w.astype(np.float16) for w in pool.map(lambda s: speak(*s), specs)]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, samples=np.concatenate(waves).astype(np.float16),
                 ends=np.cumsum([len(w) for w in waves]))
        os.replace(tmp, path)
    return [{"word": w, "voice": v, "speed": s, "pitch": p, "wave": np.asarray(x, np.float32)}
            for (w, v, s, p), x in zip(specs, waves)]


def noisy(wave: np.ndarray, snr_db, rng: random.Random) -> np.ndarray:
    if snr_db is None:
        return wave
    power = float(np.mean(wave ** 2)) / (10 ** (snr_db / 10))
    noise = np.random.default_rng(rng.randrange(2 ** 32)).normal(0, np.sqrt(power), wave.shape)
    return (wave + noise).astype(np.float32)


def said(reply: str, words=WORDS) -> list[str]:
    """The list's words (and numerals, for digits) a reply names."""
    text = reply.lower()
    out = [w for w in words if re.search(rf"\b{w}\b", text)]
    out += [DIGITS[int(d)] for d in re.findall(r"(?<![\d.])(\d)(?!\d|\.\d)", text)
            if DIGITS[int(d)] in words and DIGITS[int(d)] not in out]
    return out


class Speech(Generated):
    kind = "generative"

    def __init__(self, name: str, words=WORDS, noise_db=None, seed: int = 0):
        self.name, self.words, self.noise_db, self.seed = name, tuple(words), noise_db, seed

    def pool(self, split: str) -> list[dict]:
        return [c for c in clips(split) if c["word"] in self.words]

    def size(self, split: str):
        self._check_split(split)
        return len(self.pool(split)) if split == "test" else None

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        pool, rng = self.pool(split), self.rng(split, i)
        clip = pool[i % len(pool)] if split == "test" else rng.choice(pool)
        level = self.noise_db if split == "test" else rng.choice(NOISE_DB)
        codes = audio.encode(noisy(clip["wave"], level, rng))
        q = rng.choice(QUESTIONS[split])
        return conversation([{"type": "audio", "codes": codes}, {"type": "text", "text": q}],
                            f'You said "{clip["word"]}".', task=self.name, answer=clip["word"],
                            voice=clip["voice"])

    def evaluate(self, conv: dict, reply: str) -> bool:
        return said(reply, self.words) == [conv["answer"]]

    def max_new_tokens(self) -> int:
        return 16
