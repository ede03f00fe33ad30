"""Checks a soft prompt's token names and vectors pass before anything in a pipeline changes: no whitespace,
no word a tokenizer already has (it would be replaced in every prompt), values and norms the encoder's dtype
and arithmetic can hold."""

from __future__ import annotations

import math

import torch

from ..errors import InvalidVectorsError, TokenCollisionError, listed, shorten
from ..families import Encoder, Family, tokenizer_of


def present_tokens(tokenizer, tokens: list[str]) -> list[str]:
    """The tokens a tokenizer already has (its vocabulary or added tokens)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if callable(getattr(backend, "token_to_id", None)):
        # The Rust backend answers per token; get_vocab() would build a 49k-entry dict (~0.1 s) per call.
        return [t for t in tokens if backend.token_to_id(t) is not None]
    vocab = tokenizer.get_vocab()
    return [t for t in tokens if t in vocab]


def check_token_names(tokens: list[str], source: str = "soft prompt") -> None:
    """Refuse token names with whitespace: such a token also claims the words on either side of its space,
    and tools that split prompts at spaces (A1111, ComfyUI) can never match it."""
    for i, token in enumerate(tokens):
        if any(ch.isspace() for ch in token):
            raise TokenCollisionError(
                f"{source}: token {shorten(repr(token), 40)} contains whitespace; it would claim the words around "
                f"the space and other tools cannot match it: use one word such as <{_word_chars(token)}> or [v{i + 1}]"
            )


def check_lowercase(family: Family, tokens: list[str], source: str = "soft prompt") -> None:
    """Refuse tokens with capitals where the pipeline lowercases every prompt: they could never match."""
    upper = [t for t in tokens if t != t.lower()]
    if family.lowercases_prompts and upper:
        raise TokenCollisionError(
            f"{source}: tokens {listed(upper)} have capitals, but the {family.title} pipeline lowercases every "
            f"prompt, so they would never match; use lowercase names such as {listed([t.lower() for t in upper])}"
        )


def _word_chars(token: str) -> str:
    return "_".join(token.strip("<>[] ").split())[:30] or "name"


# How a tokenizer writes a whole word: CLIP's BPE marks its end with "</w>", sentencepiece (T5) its start
# with "▁"; CLIP lowercases prompts, so "Lake" in a prompt is the word "lake".
_WORD_FORMS = ("{}", "{}</w>", "▁{}")


def shadowed_word(tokenizer, token: str) -> str | None:
    """The vocabulary entry that ``token`` would shadow in ``tokenizer`` (added tokens aside), or None."""
    return _shadow_finder(tokenizer)(token)


def _shadow_finder(tokenizer):
    added = set(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else set()
    backend = getattr(tokenizer, "_tokenizer", None)
    if callable(getattr(backend, "token_to_id", None)):
        known = lambda entry: backend.token_to_id(entry) is not None  # noqa: E731 (see present_tokens: no 49k dict)
    else:
        known = tokenizer.get_vocab().__contains__

    def find(token: str) -> str | None:
        for text in dict.fromkeys((token, token.lower())):
            for form in _WORD_FORMS:
                entry = form.format(text)
                if entry not in added and known(entry):
                    return entry
        return None

    return find


def check_shadowing(pipe, family: Family, tokens: list[str], source: str) -> None:
    for encoder in family.encoders:  # every tokenizer of the pipeline, not only those the file has vectors for
        find = _shadow_finder(tokenizer_of(pipe, encoder.tokenizer))
        for i, token in enumerate(tokens):
            entry = find(token)
            if entry is not None:
                word = entry.replace("</w>", "").replace("▁", "")
                raise TokenCollisionError(
                    f"{source}: token {shorten(repr(token), 40)} is already the word {word!r} of {encoder.tokenizer}; "
                    f"loaded, it would replace that word in every prompt: rename it (e.g. <{_word_chars(token)}> "
                    f"or [v{i + 1}]) or allow it with --allow-shadowing (allow_shadowing=True)"
                )


# The encoder's layer norm squares its inputs in float32 at best (half precision accumulates in float32):
# a vector with a norm beyond this turns every prompt it is in to NaN, whatever the table's dtype.
_MAX_NORM = math.sqrt(torch.finfo(torch.float32).max)


def check_fits_dtype(pipe, encoder: Encoder, vectors: torch.Tensor, source: str) -> None:
    """Refuse vectors the encoder cannot use: values its dtype cannot hold (they would become inf) or norms
    its arithmetic cannot square; either way the images would be NaN."""
    dtype = getattr(pipe, encoder.text_encoder).get_input_embeddings().weight.dtype
    fits = not dtype.is_floating_point or bool(torch.isfinite(vectors.to(dtype)).all())
    norm = float(vectors.double().norm(dim=1).max())
    if fits and norm <= _MAX_NORM:
        return
    where = f"this pipeline's {encoder.text_encoder}"
    if not fits:
        name = str(dtype).replace("torch.", "")
        biggest = float(vectors.double().abs().max())
        problem = f"values up to {biggest:.3g}, beyond the range of {where} ({name}, ±{torch.finfo(dtype).max:.3g})"
        fix = "load the pipeline in float32 (--dtype fp32) or rescale the vectors"
        if torch.finfo(dtype).max >= torch.finfo(torch.float32).max:
            fix = "rescale the vectors"
    else:
        problem = f"a vector norm of {norm:.3g}, more than {where} can square in float32 ({_MAX_NORM:.3g})"
        fix = "rescale them to the vocabulary's norms (inspect FILE --model MODEL shows those)"
    raise InvalidVectorsError(f"{source}: {encoder.key} has {problem}: the images would be NaN; {fix}")
