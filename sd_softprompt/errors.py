"""Typed errors. Each message is one line that says what is wrong and how to fix it."""

from __future__ import annotations


class SoftPromptError(Exception):
    """Base class: a user-facing problem (bad file, bad input). The CLI prints it and exits 2."""


class FormatError(SoftPromptError):
    """A file that cannot be read as a soft prompt: unknown layout, truncated, corrupt."""


class UnsafeFileError(FormatError):
    """A pickle that tries to import or call code. Nothing from it was run."""


class InvalidVectorsError(FormatError):
    """Tensors that are not usable vectors: wrong rank, not floating, non-finite, all zero, too many."""


class WidthMismatchError(SoftPromptError):
    """A vector width that does not match the text encoder it is meant for."""


class TokenCollisionError(SoftPromptError):
    """Placeholder tokens already present in a tokenizer."""


class UnsupportedPipelineError(SoftPromptError):
    """A pipeline of a family this package does not know."""


class ConfigError(SoftPromptError):
    """Bad training or generation settings (missing target, empty image folder, unwritable output...)."""


class TrainingDiverged(SoftPromptError):
    """The loss became NaN/inf; the run stopped and its last good checkpoint is kept."""


class MixError(SoftPromptError):
    """Soft prompts that cannot be combined: different families, widths or vector counts, bad weights."""


class WriteError(SoftPromptError):
    """An output could not be written (full disk, no permission, read-only folder); nothing half-written is left."""


# ---- message helpers: a message stays one short line whatever the input holds


def listed(items, limit: int = 5, width: int = 40) -> str:
    """``a, b, c, d, e and 2995 more``: the first few items (each shortened), then a count."""
    items = [shorten(repr(item) if not isinstance(item, str) else item, width) for item in items]
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def shorten(text: str, limit: int = 60) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
