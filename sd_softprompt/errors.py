"""Typed errors. Each message is one line that says what is wrong and how to fix it."""

from __future__ import annotations

import json
import unicodedata


class SoftPromptError(Exception):
    """Base class: a user-facing problem (bad file, bad input). The CLI prints it and exits 2."""


class FormatError(SoftPromptError):
    """A file that cannot be read as a soft prompt: unknown layout, truncated, corrupt."""


class UnsafeFileError(FormatError):
    """A pickle that tries to import or call code. Nothing from it was run."""


class InvalidVectorsError(FormatError):
    """Tensors that are not usable vectors: wrong rank, not floating, non-finite, all zero, too many."""


class SourceError(SoftPromptError, TypeError):
    """Something given where a soft prompt is read from that is none: not a path, a pair of paths or a SoftPrompt."""


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
    """One line of at most ``limit`` characters, control characters escaped (see `printable`)."""
    return printable(" ".join(str(text)[: limit * 8].split()), limit)


# Unicode categories a terminal may act on rather than show: C0/C1 controls (ESC, CR, BEL, CSI), format
# characters (bidi overrides, zero-width joiners), surrogates, private use, unassigned, line/paragraph separators.
_UNSAFE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escaped(text: str, keep: str = "") -> str:
    """``text`` with every character a terminal could act on written as its JSON escape (``\\u001b``,
    ``\\u202e``), except those in ``keep`` (``"\\n"`` for text of several lines)."""
    text = str(text)
    if text.isprintable():  # the common case, in C
        return text
    return "".join(json.dumps(c)[1:-1] if c not in keep and unicodedata.category(c) in _UNSAFE else c for c in text)


def printable(text: str, limit: int = 200) -> str:
    """What a file supplies (metadata, token names, keys), safe to print: escaped, at most ``limit`` characters."""
    text = escaped(str(text)[: limit * 8])  # a 100 KB value costs no more than its first part
    return text if len(text) <= limit else text[: limit - 3] + "..."
