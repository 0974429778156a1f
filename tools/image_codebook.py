"""Learn the image codebook of `lm.images` (issue 31) and write `lm/tasks/data/image_codebook.json`.

  python -m tools.image_codebook            # writes the file (and prints the reconstruction error)
  python -m tools.image_codebook --check    # exit 1 if the file is not what this would write

The codebook's 32 vectors (2×2×3 values in [0, 1]): black and the palette's five solid colours
(the generated pictures are drawn in 2×2 blocks of one colour, so they tokenize exactly), then
k-means centroids (scikit-learn, fixed seed) of the handwritten digits' *training* patches that
are not black. Reports the mean squared error (pixels in [0, 1]) of encode -> decode on the
held-out digits and pictures, and the held-out accuracy of a logistic regression on the digits'
raw pixels (the reference for the `digits` task).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json

import numpy as np
from sklearn.cluster import KMeans

from lm import images
from lm.tasks import vision


def learn(seed: int = 0) -> np.ndarray:
    fixed = [np.zeros(12, np.float32)] + [np.tile(np.array(c, np.float32) / 255.0, 4)
                                          for c in vision.PALETTE.values()]
    p = np.concatenate([images.patches(img) for img, _ in vision.digits()["train"]])
    p = p[p.max(1) > 0.05]
    k = images.CODES - len(fixed)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(p.astype(np.float64))
    cb = np.concatenate([np.stack(fixed), km.cluster_centers_.astype(np.float32)])
    return np.round(cb, 4)


def errors() -> dict:
    """encode -> decode mean squared error on held-out images (pixels in [0, 1])."""
    out = {}
    digits = [img for img, _ in vision.digits()["test"]]
    pics = [vision.picture(*c) for c in vision.combinations("test")]
    for name, imgs in (("digits", digits), ("pictures", pics)):
        err = [float(np.mean((images.decode(images.encode(x)).astype(np.float32) -
                              x.astype(np.float32)) ** 2) / 255.0 ** 2) for x in imgs]
        out[name] = {"images": len(imgs), "mse": float(np.mean(err))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.image_codebook",
                                description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cb = learn(a.seed)
    if a.check:
        same = np.allclose(cb, images.codebook(), atol=2e-4)
        print("codebook matches" if same else f"{images.CODEBOOK_FILE} differs from a fresh "
              f"learn: run python -m tools.image_codebook")
        return 0 if same else 1
    with open(images.CODEBOOK_FILE, "w") as f:
        json.dump({"patch": images.PATCH, "seed": a.seed, "fixed": 6,
                   "codebook": cb.tolist()}, f)
    images.codebook.cache_clear()
    print(json.dumps({**errors(), "digits_pixel_logistic_regression": vision.pixel_baseline(),
                      "digits_token_logistic_regression": vision.token_baseline()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
