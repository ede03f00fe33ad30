"""What the CLIP families share: their encoders, and long prompts cut in 75-token chunks as A1111 / ComfyUI do."""

from __future__ import annotations

import re

import torch

from .base import Encoder, Segments

CLIP_L = Encoder("clip_l", "tokenizer", "text_encoder", 768)
CLIP_G = Encoder("clip_g", "tokenizer_2", "text_encoder_2", 1280)


# The pipelines cut a prompt at the encoder's window (CLIP: 77 positions, 75 prompt tokens). A1111
# (modules/sd_hijack_clip.py) and ComfyUI (comfy/sd1_clip.py) instead split it into 75-token chunks, wrap
# each in start/end-of-text padded to 77, encode the chunks separately and concatenate their states along
# the sequence; the pooled vector comes from the first chunk. A1111's boundaries are followed here: a
# chunk that fills up within COMMA_BACKTRACK tokens of a comma ends at the comma, and "BREAK" ends a chunk.
CHUNK = 75
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def chunk_token_ids(tokenizer, prompt: str) -> list[list[int]]:
    """The prompt's token ids in chunks of at most CHUNK, split where A1111 splits them (no special tokens)."""
    return [[token for token, _ in chunk] for chunk in chunk_weighted_ids(tokenizer, [(prompt, 1.0)])]


def chunk_weighted_ids(tokenizer, segments: Segments) -> list[list[tuple[int, float]]]:
    """(token id, weight) chunks of a weighted prompt: each segment tokenized on its own (as A1111 does), the
    chunks cut as `chunk_token_ids` cuts them."""
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[list[tuple[int, float]]] = []
    chunk: list[tuple[int, float]] = []
    last_comma = -1
    for item in _weighted_tokens(tokenizer, segments):
        if item is None:  # a BREAK ends the chunk, even an empty one
            chunks.append(chunk)
            chunk, last_comma = [], -1
            continue
        if item[0] == comma:
            last_comma = len(chunk)
        elif len(chunk) == CHUNK and last_comma != -1 and len(chunk) - last_comma <= COMMA_BACKTRACK:
            # the words after the last comma move to the next chunk rather than being split
            chunks.append(chunk[: last_comma + 1])
            chunk, last_comma = chunk[last_comma + 1 :], -1
        if len(chunk) == CHUNK:
            chunks.append(chunk)
            chunk, last_comma = [], -1
        chunk.append(item)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def _weighted_tokens(tokenizer, segments: Segments):
    """(token id, weight) for each token of each segment, and None where a BREAK stands."""
    for text, weight in segments:
        for n, part in enumerate(_BREAK.split(text)):
            if n:
                yield None
            if part:
                for token in tokenizer(part, add_special_tokens=False, truncation=False).input_ids:
                    yield token, weight


def chunk_inputs(pipe, tokenizer, prompts: list[str]) -> torch.Tensor:
    """[B, C, 77] ids: each chunk as the tokenizer pads one prompt (start, tokens, end, padding); prompts
    with fewer chunks get empty chunks, as A1111 pads a batch."""
    return chunk_weighted_inputs(pipe, tokenizer, [[(p, 1.0)] for p in prompts])[0]


def chunk_weighted_inputs(pipe, tokenizer, prompts: list[Segments]) -> tuple[torch.Tensor, torch.Tensor]:
    """`chunk_inputs` of weighted prompts: the [B, C, 77] ids and each position's weight (1 for the start,
    end and padding tokens)."""
    convert = getattr(pipe, "maybe_convert_prompt", None)  # expands multi-vector aliases, as the pipelines do
    per_prompt = [
        chunk_weighted_ids(tokenizer, [(convert(text, tokenizer) if convert else text, w) for text, w in segments])
        for segments in prompts
    ]
    count = max(len(c) for c in per_prompt)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, weights = [], []
    for chunks in per_prompt:
        chunks = chunks + [[]] * (count - len(chunks))
        ids.append([[bos, *(t for t, _ in c), eos] + [pad] * (CHUNK - len(c)) for c in chunks])
        weights.append([[1.0, *(w for _, w in c), 1.0] + [1.0] * (CHUNK - len(c)) for c in chunks])
    return torch.tensor(ids), torch.tensor(weights)


def clip_chunks(text_encoder, ids: torch.Tensor, **kw):
    """Run a CLIP encoder on [B, C, 77] chunk ids as B*C prompts."""
    b, c, n = ids.shape
    return text_encoder(ids.view(b * c, n).to(text_encoder.device), **kw), (b, c)
