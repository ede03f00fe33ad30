"""Prompt encoding, as each family's pipelines do it: the pipeline's own `encode_prompt` for prompts that
fit the window, A1111 / ComfyUI's 75-token chunks for longer ones, and what guidance uses without a negative.

The family table (families.py) points at these functions; nothing else calls them by name.
"""

from __future__ import annotations

import re

import torch

Cond = dict[str, torch.Tensor]  # "states": [B, L, D] token states; "pooled": [B, P] when the family has one


# ---------------------------------------------------------------- prompt encoding, as the pipelines do it
def encode_sd(pipe, prompts: list[str]) -> Cond:
    states, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, False)
    return {"states": states}


def encode_sdxl(pipe, prompts: list[str]) -> Cond:
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts, device=pipe.text_encoder_2.device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    return {"states": states, "pooled": pooled}


# Flux's default is 512 T5 positions; the padding states after the prompt are what they are, so a
# shorter window gives the same prompt states for prompts that fit (and is what people use for speed).
FLUX_MAX_SEQUENCE_LENGTH = 512


def encode_flux(pipe, prompts: list[str]) -> Cond:
    msl = min(FLUX_MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length)
    states, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=pipe.text_encoder_2.device, max_sequence_length=msl
    )
    return {"states": states, "pooled": pooled}


# SD3's default T5 window; the tiny pipelines' T5 tokenizer is shorter, and the window follows it.
SD3_MAX_SEQUENCE_LENGTH = 256


def sd3_window(pipe) -> int:
    return min(SD3_MAX_SEQUENCE_LENGTH, pipe.tokenizer_3.model_max_length)


def encode_sd3(pipe, prompts: list[str]) -> Cond:
    # states: both CLIPs' penultimate states joined along the width (padded to T5's), then T5's along the
    # sequence; pooled: both CLIPs' pooled projections joined
    states, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        prompt_2=None,
        prompt_3=None,
        device=pipe.text_encoder.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=False,
        max_sequence_length=sd3_window(pipe),
    )
    return {"states": states, "pooled": pooled}


def no_negative_sd(pipe, batch: int) -> Cond:
    return encode_sd(pipe, [""] * batch)


def no_negative_sdxl(pipe, batch: int) -> Cond:
    empty = encode_sdxl(pipe, [""] * batch)
    if pipe.config.get("force_zeros_for_empty_prompt", False):  # the base model's default: zeros, not ""
        empty = {k: torch.zeros_like(v) for k, v in empty.items()}
    return empty


def no_negative_flux(pipe, batch: int) -> None:
    return None  # guidance-distilled: no classifier-free guidance, no negative prompt


def no_negative_sd3(pipe, batch: int) -> Cond:
    return encode_sd3(pipe, [""] * batch)


# ---------------------------------------------------------------- long prompts, as A1111 / ComfyUI encode them
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
    comma = tokenizer.get_vocab().get(",</w>")
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1
    for n, part in enumerate(_BREAK.split(prompt)):
        if n:  # a BREAK before this part ends the chunk, even an empty one
            chunks.append(chunk)
            chunk, last_comma = [], -1
        for token in tokenizer(part, add_special_tokens=False, truncation=False).input_ids if part else []:
            if token == comma:
                last_comma = len(chunk)
            elif len(chunk) == CHUNK and last_comma != -1 and len(chunk) - last_comma <= COMMA_BACKTRACK:
                # the words after the last comma move to the next chunk rather than being split
                chunks.append(chunk[: last_comma + 1])
                chunk, last_comma = chunk[last_comma + 1 :], -1
            if len(chunk) == CHUNK:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            chunk.append(token)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def chunk_inputs(pipe, tokenizer, prompts: list[str]) -> torch.Tensor:
    """[B, C, 77] ids: each chunk as the tokenizer pads one prompt (start, tokens, end, padding); prompts
    with fewer chunks get empty chunks, as A1111 pads a batch."""
    convert = getattr(pipe, "maybe_convert_prompt", None)  # expands multi-vector aliases, as the pipelines do
    per_prompt = [chunk_token_ids(tokenizer, convert(p, tokenizer) if convert else p) for p in prompts]
    count = max(len(c) for c in per_prompt)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [
        [[bos, *c, eos] + [pad] * (CHUNK - len(c)) for c in chunks + [[]] * (count - len(chunks))]
        for chunks in per_prompt
    ]
    return torch.tensor(rows)


def clip_chunks(text_encoder, ids: torch.Tensor, **kw):
    """Run a CLIP encoder on [B, C, 77] chunk ids as B*C prompts."""
    b, c, n = ids.shape
    return text_encoder(ids.view(b * c, n).to(text_encoder.device), **kw), (b, c)


def encode_sd_long(pipe, prompts: list[str]) -> Cond:
    ids = chunk_inputs(pipe, pipe.tokenizer, prompts)
    mask = None
    if getattr(pipe.text_encoder.config, "use_attention_mask", False):  # as the pipeline does
        mask = (ids != pipe.tokenizer.pad_token_id) | (ids == pipe.tokenizer.eos_token_id)
        mask = mask.view(-1, ids.shape[-1]).long().to(pipe.text_encoder.device)
    out, (b, c) = clip_chunks(pipe.text_encoder, ids, attention_mask=mask)
    states = out[0]
    return {"states": states.reshape(b, c * states.shape[1], states.shape[2])}


def encode_sdxl_long(pipe, prompts: list[str]) -> Cond:
    states, pooled = [], None
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = chunk_inputs(pipe, tokenizer, prompts)
        if states and ids.shape[1] != states[0].shape[1]:
            raise ValueError("the two SDXL tokenizers split this prompt into different numbers of chunks")
        out, (b, c) = clip_chunks(text_encoder, ids, output_hidden_states=True)
        if out[0].ndim == 2:  # the projected pooled output of encoder 2, from the first chunk
            pooled = out[0].view(b, c, -1)[:, 0]
        states.append(out.hidden_states[-2].reshape(b, c, ids.shape[-1], -1))
    states = torch.cat(states, dim=-1)
    return {"states": states.flatten(1, 2), "pooled": pooled}


def encode_flux_long(pipe, prompts: list[str]) -> Cond:
    """T5 takes the whole prompt (relative positions; ComfyUI does not cut it either); CLIP gives only the
    pooled vector, which every tool takes from the first 77 positions."""
    window = min(FLUX_MAX_SEQUENCE_LENGTH, pipe.tokenizer_2.model_max_length)
    longest = max(len(pipe.tokenizer_2(p).input_ids) for p in prompts)
    states, pooled, _ = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, device=pipe.text_encoder_2.device, max_sequence_length=max(window, longest)
    )
    return {"states": states, "pooled": pooled}


def encode_sd3_long(pipe, prompts: list[str]) -> Cond:
    """Both CLIPs chunked (penultimate states joined along the width, padded to T5's), T5 uncut after them;
    pooled: both CLIPs' from the first chunk. ComfyUI's long SD3 prompts, with A1111's chunk boundaries."""
    clip, pooled = [], []
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = chunk_inputs(pipe, tokenizer, prompts)
        out, (b, c) = clip_chunks(text_encoder, ids, output_hidden_states=True)
        pooled.append(out[0].view(b, c, -1)[:, 0])
        clip.append(out.hidden_states[-2].reshape(b, c * ids.shape[-1], -1))
    window = sd3_window(pipe)
    longest = max(len(pipe.tokenizer_3(p).input_ids) for p in prompts)
    t5 = pipe._get_t5_prompt_embeds(prompt=prompts, max_sequence_length=max(window, longest), device=clip[0].device)
    clip_states = torch.cat(clip, dim=-1).to(t5.dtype)
    clip_states = torch.nn.functional.pad(clip_states, (0, t5.shape[-1] - clip_states.shape[-1]))
    return {"states": torch.cat([clip_states, t5], dim=-2), "pooled": torch.cat(pooled, dim=-1)}
