"""The built-in models, by name: one registration line each. The rest of the package asks here."""

from __future__ import annotations

from .base import BuiltinModel
from .toyworld import TOYWORLD

BUILTIN_MODELS: dict[str, BuiltinModel] = {m.name: m for m in (TOYWORLD,)}


def builtin_of(pipe) -> BuiltinModel | None:
    """The built-in model a loaded pipeline is, or None for any other pipeline."""
    return next((m for m in BUILTIN_MODELS.values() if m.recognises(pipe)), None)
