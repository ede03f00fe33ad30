"""Flux.2 [dev]: Mistral Small 3 (24B, Mistral3ForConditionalGeneration; its language model) read through its
chat template with the pipeline's system message, three of its intermediate layers' states (10, 20, 30) side
by side, the Flux.2 transformer of Klein (flux2_klein.py: the same step, VAE latents and sizes) with a guidance
embedding. Guidance-distilled: no classifier-free guidance, no negative prompt (the pipeline takes none).

The pipeline's `tokenizer` is a PixtralProcessor; its chat template writes "<s>[SYSTEM_PROMPT]<system message>
[/SYSTEM_PROMPT][INST]<prompt>[/INST]" and its inner tokenizer (where soft tokens are added: `tokenizer_of`)
pads it on the left to 512 tokens. The encoder sees the mask; the transformer gets every position unmasked (the
padding's states count, as Klein's do). A soft token's vectors sit where the prompt's words do, between [INST]
and [/INST]; the template's tokens are Mistral's own. Left padding puts the prompt at a place that depends on its
length: `flux2_state_ids` are the states' ids, padding included, and the prompt's span is counted in them.

Key: "mistral3_24b" (5120 wide), ComfyUI's key for this encoder (comfy/text_encoders/flux.py: its Mistral 3
tokenizer reads embedding files under it, at 5120). OneTrainer has no Flux.2 embeddings and diffusers no
textual-inversion loader for the pipeline, so files are written native and for ComfyUI."""

from __future__ import annotations

import logging
from contextlib import contextmanager

from ..errors import ConfigError
from .base import Cond, Encoder, Family, tokenizer_of
from .flux2_klein import FLUX2_DENOISER
from .llm import span

FLUX2_MAX_SEQUENCE_LENGTH = 512  # the pipeline's default window
FLUX2_GUIDANCE = 4.0  # the pipeline's default guidance_scale (embedded guidance)

MISTRAL3_24B = Encoder("mistral3_24b", "tokenizer", "text_encoder", 5120)


def _window(pipe) -> int:
    return min(FLUX2_MAX_SEQUENCE_LENGTH, tokenizer_of(pipe, "tokenizer").model_max_length)


def _chat_ids(pipe, prompt: str, window: int) -> list[int]:
    """The template's ids around the prompt, unpadded, cut to the window as the pipeline's truncation cuts."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    messages = format_input([prompt], system_message=pipe.system_message)
    ids = pipe.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    return list(ids[0])[:window]


def flux2_state_ids(pipe, prompt: str, window: int | None = None) -> list[int]:
    """The ids the states stand on: the template around the prompt after the pipeline's padding on the left."""
    window = window or _window(pipe)
    ids = _chat_ids(pipe, prompt, window)
    return [tokenizer_of(pipe, "tokenizer").pad_token_id] * (window - len(ids)) + ids


def _prompt_span(pipe, prompt: str) -> tuple[int, int]:
    """(first position, token count) of the prompt in the states: after the padding and the template's head. The
    count is the whole prompt's, past the window too (the states then hold its first part)."""
    ids = _chat_ids(pipe, prompt, 1 << 20)
    start, n = span(ids, _chat_ids(pipe, "", 1 << 20))
    return max(_window(pipe) - len(ids), 0) + start, n


@contextmanager
def _quiet_processor():
    """Without transformers' warning that the pipeline passes padding and truncation to the processor as plain
    keyword arguments (diffusers 0.42.1 with transformers 5.24): logged at every call, every training step."""
    logger = logging.getLogger("transformers.processing_utils")
    quiet = _LegacyKwargs()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _LegacyKwargs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "have to be in `processor_kwargs`" not in record.getMessage()


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    with _quiet_processor():
        states, _ = pipe.encode_prompt(prompts, device=pipe.text_encoder.device, max_sequence_length=window)
    return {"states": states}


def encode_flux2(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def encode_flux2_long(pipe, prompts: list[str]) -> Cond:
    """The whole prompt: a window wide enough for the longest (Mistral has rotary positions)."""
    longest = max(len(_chat_ids(pipe, p, 1 << 20)) for p in prompts)
    return _encode(pipe, prompts, max(_window(pipe), longest))


def no_negative_flux2(pipe, batch: int) -> None:
    return None  # guidance-distilled: no classifier-free guidance


def _flux2_call(pipe, negative_prompt: str | None) -> dict:
    if negative_prompt:
        raise ConfigError(
            "Flux.2 [dev] is guidance-distilled and takes no negative prompt; leave --negative-prompt out"
        )
    window = _window(pipe)
    return {} if window == FLUX2_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}


def _prompt_window(pipe) -> int:
    return _window(pipe) - len(_chat_ids(pipe, "", _window(pipe)))


FLUX2 = Family(
    "flux2",
    "Flux.2 [dev]",
    (MISTRAL3_24B,),
    encode=encode_flux2,
    guidance=FLUX2_GUIDANCE,  # its guidance embedding gets 4.0, the pipeline's default
    call_kwargs=_flux2_call,
    pipelines=("Flux2Pipeline",),
    state_tokenizers=("tokenizer",),
    encode_long=encode_flux2_long,
    no_negative=no_negative_flux2,
    formats=("native", "comfyui"),  # ComfyUI: mistral3_24b
    prompt_span=_prompt_span,
    prompt_window=_prompt_window,
    **FLUX2_DENOISER,
)
