"""Speech as tokens (issue 31): a sound is cut into 40 ms frames of log-mel features (librosa),
each frame becomes the id of its nearest codebook vector, and those tokens stream through the same
transformer as text, between `<|audio_start|>` and `<|audio_end|>`.

    features(wave)      16 kHz mono float samples -> [T, FEATURES] normalised log-mel frames
    encode(wave)        -> codes (one per 40 ms: two 20 ms mel frames stacked)
    decode(codes)       -> the frames rebuilt from the codebook (what the tokens keep)
    read_wav(data) / to_wav(wave) / load_file(path) / from_base64(data, fmt)   at the edges

The tokens are the tokenizer's last 24 reserved special slots (`lm.tokenizer.AUDIO_SPECIALS`:
two markers and 22 codes), so the chain's base model needs no new vocabulary. The codebook file
(`CODEBOOK_FILE`: the features' mean and scale and 22 k-means centroids of the training voices'
frames, clean and with noise; each utterance's mean frame is taken out first) is written by
`tools/audio_codebook.py`. Bad input (not a 16-bit PCM WAV, another sample
rate, no samples, too long) raises `AudioError` with what was wrong.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
import wave as wavelib
from functools import lru_cache

import numpy as np

from lm.tokenizer import AUDIO_SPECIALS

SAMPLE_RATE = 16_000
N_MELS, WIN, HOP, STACK = 40, 400, 320, 2      # 25 ms windows every 20 ms; 2 frames a token
FEATURES = N_MELS * STACK
CODES = len(AUDIO_SPECIALS) - 2
MAX_SECONDS = 10.0
CODEBOOK_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks", "data",
                             "audio_codebook.json")


class AudioError(ValueError):
    """Sound that cannot be tokenized (the message says why)."""


@lru_cache(maxsize=1)
def codebook() -> dict[str, np.ndarray]:
    """{"mean", "scale": [FEATURES], "codebook": [CODES, FEATURES]} (float32)."""
    with open(CODEBOOK_FILE) as f:
        d = json.load(f)
    out = {k: np.asarray(d[k], np.float32) for k in ("mean", "scale", "codebook")}
    if out["codebook"].shape != (CODES, FEATURES):
        raise AudioError(f"{CODEBOOK_FILE}: codebook of shape {out['codebook'].shape}, "
                         f"expected ({CODES}, {FEATURES})")
    return out


def check(wave) -> np.ndarray:
    w = np.asarray(wave, np.float32)
    if w.ndim != 1 or w.size == 0:
        raise AudioError(f"sound is a non-empty 1-D array of samples; got shape {w.shape}")
    if w.size > MAX_SECONDS * SAMPLE_RATE:
        raise AudioError(f"sound of {w.size / SAMPLE_RATE:.1f} s: at most {MAX_SECONDS:g} s")
    return w


def raw_features(wave) -> np.ndarray:
    """[T, FEATURES] log-mel frames (two 20 ms frames per row), not normalised."""
    import librosa     # librosa (numba) takes seconds to import: speech only
    w = check(wave)
    mel = librosa.feature.melspectrogram(y=w, sr=SAMPLE_RATE, n_fft=512, win_length=WIN,
                                         hop_length=HOP, n_mels=N_MELS, center=True)
    logmel = np.log(mel + 1e-6).T.astype(np.float32)           # [frames, N_MELS]
    n = len(logmel) // STACK * STACK
    if n == 0:
        logmel, n = np.concatenate([logmel] * STACK), STACK
    return logmel[:n].reshape(n // STACK, FEATURES)


def features(wave) -> np.ndarray:
    """Normalised frames: each mel band's mean over the utterance taken out (cepstral mean
    normalisation: a steady noise floor or a louder microphone moves every frame alike), then the
    codebook's scale."""
    cb, raw = codebook(), raw_features(wave)
    return (raw - raw.mean(0, keepdims=True) - cb["mean"]) / cb["scale"]


def encode_features(f) -> list[int]:
    """Normalised frames -> their nearest codes."""
    cb = codebook()["codebook"]
    return ((np.asarray(f)[:, None, :] - cb[None]) ** 2).sum(-1).argmin(1).astype(int).tolist()


def encode(wave) -> list[int]:
    return encode_features(features(wave))


def decode(codes) -> np.ndarray:
    codes = np.asarray(list(codes), np.int64)
    if codes.size == 0 or codes.min() < 0 or codes.max() >= CODES:
        raise AudioError(f"audio codes: a non-empty list in 0-{CODES - 1}")
    return codebook()["codebook"][codes]


def read_wav(data: bytes) -> np.ndarray:
    """A 16-bit PCM WAV at 16 kHz (mono, or stereo averaged) as float samples in [-1, 1]."""
    try:
        with wavelib.open(io.BytesIO(data)) as w:
            rate, width, ch, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            raw = w.readframes(n)
    except (wavelib.Error, EOFError) as e:
        raise AudioError(f"not a readable WAV file ({e})") from None
    if width != 2:
        raise AudioError(f"a WAV of {8 * width}-bit samples: send 16-bit PCM")
    if rate != SAMPLE_RATE:
        raise AudioError(f"a WAV at {rate} Hz: send {SAMPLE_RATE} Hz (resample it first)")
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if x.size == 0:
        raise AudioError("the WAV has no samples")
    return check(x.reshape(-1, ch).mean(1))


def to_wav(wave) -> bytes:
    w = check(wave)
    buf = io.BytesIO()
    with wavelib.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes((np.clip(w, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def from_base64(data: str, fmt: str = "wav") -> np.ndarray:
    """OpenAI's input_audio part ({"data": base64, "format": "wav"}) -> samples."""
    if fmt != "wav":
        raise AudioError(f"input_audio format {fmt!r}: only 'wav' (16-bit PCM, 16 kHz)")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise AudioError("the input_audio data is not valid base64") from None
    return read_wav(raw)


def load_file(path: str) -> np.ndarray:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return read_wav(f.read())
    except OSError as e:
        raise AudioError(f"{path}: {e.strerror or e}") from None
