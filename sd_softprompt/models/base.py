"""What a built-in model (one that ships with the package) tells the rest of the package about itself.

The trainer and the CLI look a model up by name (`--model NAME`) or recognise it in a loaded pipeline
(builtin.py), and use what its entry supplies; none of them imports a built-in model by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Positives:
    """The positive prompts a negative prompt is trained under (`train`) and measured with (`eval`)."""

    train: list[str]
    eval: list[str]


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # what --model takes
    description: str  # one line: what it is and is not
    folder: Path  # the saved pipeline (model_index.json and its parts)
    recognises: Callable[[Any], bool]  # (pipe) -> whether a loaded pipeline is this model
    how_to_get: str = "reinstall sd-softprompt"  # said when the folder is missing
    # Its own positives for negative prompts (a model whose captions name every attribute leaves real-world
    # phrases no room); None: the trainer's defaults.
    positives: Positives | None = None
    # Prompt fidelity in pictures, where the model has a judge:
    # (pipe, soft_text, target, n_vectors, pictures) -> {row: {"alone"|"composed": F}}; `pictures` is filled
    # with the pictures judged, by prompt.
    fidelity: Callable[..., dict] | None = None
    # (pipe, soft_text, target, n_vectors, positives) -> {row: {"avoidance": ..., "F": ...}}, and its text
    negative_fidelity: Callable[..., dict] | None = None
    format_negative_fidelity: Callable[[dict], str] | None = None
