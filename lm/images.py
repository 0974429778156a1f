"""Images as tokens (issue 31): a picture is cut into 2×2-pixel patches, each patch becomes the id
of its nearest codebook vector, and those tokens stream through the same transformer as text,
between `<|image_start|>` and `<|image_end|>`.

    encode(img)        an RGB image (H×W×3 uint8, square, even side, at most MAX_SIDE) -> codes
    decode(codes)      codes (a square number of them) -> the image rebuilt from the codebook
    from_png(data) / to_png(img) / from_data_url(url) / load_file(path)   at the edges

The tokens are reserved special slots (`lm.tokenizer.NAMED_SPECIALS`): every tokenizer trained
here since the reserve was made already has them, so the chain's base model needs no new
vocabulary (their embeddings are learned in SFT). The codebook (`CODEBOOK_FILE`, 32 vectors of
2×2×3 values in [0, 1]) is the palette's solid colours (the drawn pictures of
`lm.tasks.vision`, made of 2×2 blocks) plus k-means centroids (scikit-learn) of the handwritten
digits' training patches; `tools/image_codebook.py` learns it and the tests check it is the one
that tool makes. Bad input (another size or mode, a corrupt PNG, a data URL that is not an
image) raises `ImageError` with what was wrong.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import os
from functools import lru_cache

import numpy as np
from PIL import Image, UnidentifiedImageError

from lm.tokenizer import IMAGE_SPECIALS

PATCH = 2
CODES = 32
MAX_SIDE = 32
CODEBOOK_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks", "data",
                             "image_codebook.json")
IMAGE_START, IMAGE_END = IMAGE_SPECIALS[:2]
CODE_TOKENS = IMAGE_SPECIALS[2:]
assert len(CODE_TOKENS) == CODES, "one reserved special per code"


class ImageError(ValueError):
    """An image that cannot be tokenized (the message says why)."""


@lru_cache(maxsize=1)
def codebook() -> np.ndarray:
    """[CODES, PATCH*PATCH*3] float32 in [0, 1]."""
    with open(CODEBOOK_FILE) as f:
        cb = np.asarray(json.load(f)["codebook"], np.float32)
    if cb.shape != (CODES, PATCH * PATCH * 3):
        raise ImageError(f"{CODEBOOK_FILE}: codebook of shape {cb.shape}, expected "
                         f"({CODES}, {PATCH * PATCH * 3})")
    return cb


def check(img) -> np.ndarray:
    """The image as H×W×3 uint8, or ImageError naming what is wrong."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ImageError(f"an image is H×W×3 uint8 (RGB); got shape {a.shape}, {a.dtype}")
    h, w = a.shape[:2]
    if h != w or h % PATCH or not PATCH <= h <= MAX_SIDE:
        raise ImageError(f"an image must be square with an even side of {PATCH}-{MAX_SIDE} "
                         f"pixels; got {w}×{h}")
    return a


def patches(img) -> np.ndarray:
    """[N, PATCH*PATCH*3] float32 in [0, 1], row-major over the patch grid."""
    a = check(img).astype(np.float32) / 255.0
    s = a.shape[0] // PATCH
    p = a.reshape(s, PATCH, s, PATCH, 3).transpose(0, 2, 1, 3, 4)
    return p.reshape(s * s, PATCH * PATCH * 3)


def encode(img) -> list[int]:
    """Each patch's nearest codebook vector (squared distance), row-major."""
    p, cb = patches(img), codebook()
    d = ((p[:, None, :] - cb[None, :, :]) ** 2).sum(-1)
    return d.argmin(1).astype(int).tolist()


def decode(codes) -> np.ndarray:
    """The image rebuilt from `codes` (a square number of code indices)."""
    codes = np.asarray(list(codes), np.int64)
    s = int(round(np.sqrt(len(codes))))
    if len(codes) == 0 or s * s != len(codes):
        raise ImageError(f"{len(codes)} image tokens do not make a square grid of patches")
    if codes.min() < 0 or codes.max() >= CODES:
        raise ImageError(f"image codes must be in 0-{CODES - 1}")
    p = codebook()[codes].reshape(s, s, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4)
    return np.clip(np.rint(p.reshape(s * PATCH, s * PATCH, 3) * 255), 0, 255).astype(np.uint8)


def to_png(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(check(img), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes) -> np.ndarray:
    """A PNG (or any Pillow-readable image in mode L or RGB) as H×W×3 uint8."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"not a readable image ({type(e).__name__}: {e})") from None
    if im.mode not in ("L", "RGB"):
        raise ImageError(f"image mode {im.mode!r}: send an RGB or greyscale (L) image")
    return check(np.asarray(im.convert("RGB"), np.uint8))


def from_data_url(url: str) -> np.ndarray:
    """`data:image/png;base64,...` (OpenAI's image_url with a data URL) -> the image."""
    head, sep, body = url.partition(",")
    if not sep or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise ImageError("an image_url must be a base64 data URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the image data URL is not valid base64") from None
    return from_png(data)


def data_url(img) -> str:
    return "data:image/png;base64," + base64.b64encode(to_png(img)).decode("ascii")


def load_file(path: str) -> np.ndarray:
    try:
        with open(os.path.expanduser(path), "rb") as f:
            return from_png(f.read())
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror or e}") from None
