"""The experiment registry: named, full configs for pretraining, SFT and RL runs.

Add an experiment by writing a function that returns a `Config` in a module here and decorating
it with `@register("name", "one-line description")`; import the module below.
"""
from __future__ import annotations

from typing import Callable

from lm.config import Config

_REGISTRY: dict[str, tuple[str, Callable[[], Config]]] = {}


def register(name: str, description: str):
    def deco(fn: Callable[[], Config]):
        if name in _REGISTRY:
            raise ValueError(f"experiment {name!r} registered twice")
        _REGISTRY[name] = (description, fn)
        return fn
    return deco


def get(name: str) -> Config:
    """A fresh, validated copy of the named experiment's config."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; known: {sorted(_REGISTRY)}")
    cfg = _REGISTRY[name][1]()
    cfg.name = name
    cfg.description = _REGISTRY[name][0]
    return cfg.validate()


def list_experiments() -> list[tuple[str, str]]:
    return sorted((n, d) for n, (d, _) in _REGISTRY.items())


from experiments import pretrain  # noqa: E402,F401  (registers)
from experiments import web  # noqa: E402,F401
from experiments import chat  # noqa: E402,F401
from experiments import reasoning  # noqa: E402,F401
from experiments import preference  # noqa: E402,F401
from experiments import psychology  # noqa: E402,F401
from experiments import multimodal  # noqa: E402,F401
