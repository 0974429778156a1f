"""Learn the speech codebook of `lm.audio` (issue 31) and write `lm/tasks/data/audio_codebook.json`.

  python -m tools.audio_codebook            # writes the file, prints the reconstruction error
  python -m tools.audio_codebook --check    # exit 1 if the file is not what this would write

From the training voices' clips (`lm.tasks.speech`, made with espeak-ng), clean and at each
training noise level, each utterance's mean frame taken out: the frames' per-dimension mean and
scale, then 22 k-means centroids (scikit-learn, fixed seed) of the normalised frames. Reports, on
the held-out voices and per noise level, the mean squared error of encode -> decode in normalised
units, as a share of the features' variance (1.0 = no better than the mean frame), and how many
codes the clips use.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import random

import numpy as np
from sklearn.cluster import KMeans

from lm import audio
from lm.tasks import speech


def cmn(wave) -> np.ndarray:
    """Log-mel frames less their utterance mean (as `audio.features`, before the scale)."""
    raw = audio.raw_features(wave)
    return raw - raw.mean(0, keepdims=True)


def learn(seed: int = 0) -> dict:
    """From every training clip clean and at each of `speech.NOISE_DB`'s levels: the frames the
    training tasks show (a codebook learned on clean speech alone maps noisy frames to one
    code)."""
    rng = random.Random(f"audio_codebook/{seed}")
    f = np.concatenate([cmn(speech.noisy(c["wave"], level, rng)) for c in speech.clips("train")
                        for level in speech.NOISE_DB])
    mean, scale = f.mean(0), f.std(0) + 1e-3
    km = KMeans(n_clusters=audio.CODES, n_init=4, random_state=seed).fit(
        ((f - mean) / scale).astype(np.float64))
    return {"mean": np.round(mean, 4).tolist(), "scale": np.round(scale, 4).tolist(),
            "codebook": np.round(km.cluster_centers_, 4).tolist(), "seed": seed}


def errors() -> dict:
    """Per noise level, on the held-out voices."""
    out = {}
    for level in speech.NOISE_DB:
        rng = random.Random("audio_codebook/errors")
        f = [audio.features(speech.noisy(c["wave"], level, rng)) for c in speech.clips("test")]
        err = float(np.mean(np.concatenate([(x - audio.decode(audio.encode_features(x))) ** 2
                                            for x in f])))
        var = float(np.concatenate(f).var(0).mean())
        codes = {c for x in f for c in audio.encode_features(x)}
        out["clean" if level is None else f"{level:g}dB"] = {
            "clips": len(f), "mse": err, "share_of_variance": err / var, "codes_used": len(codes)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.audio_codebook",
                                description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cb = learn(a.seed)
    if a.check:
        same = all(np.allclose(cb[k], audio.codebook()[k], atol=2e-3)
                   for k in ("mean", "scale", "codebook"))
        print("codebook matches" if same else f"{audio.CODEBOOK_FILE} differs from a fresh "
              f"learn: run python -m tools.audio_codebook")
        return 0 if same else 1
    with open(audio.CODEBOOK_FILE, "w") as f:
        json.dump(cb, f)
    audio.codebook.cache_clear()
    print(json.dumps(errors()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
