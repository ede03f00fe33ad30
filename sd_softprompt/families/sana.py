"""Sana: Gemma 2 2B (its last, normed states) read through the pipeline's complex human instruction, a
linear-attention DiT on a 32x deep-compression autoencoder's latents, flow matching.

The pipeline prepends the instruction to the prompt, pads to instruction + window - 2 tokens and keeps
position 0 (<bos>) and the last window - 1 positions: the states are <bos>, the instruction's last token, the
prompt, padding, with the attention mask the transformer's cross-attention reads. A soft token's vectors sit
where the prompt's words do, after the instruction; the instruction's tokens are Gemma's own.

Key: "gemma2_2b", ComfyUI's key for this encoder (its Lumina 2 text encoder; ComfyUI has no Sana); OneTrainer
writes Sana embeddings under "gemma" (read as an alias). diffusers has no textual-inversion loader for Sana and
A1111 / kohya no Sana, so files are written native only."""

from __future__ import annotations

import inspect

from .base import Cond, Encoder, Family
from .llm import prompt_span
from .sd import negative_call

SANA_MAX_SEQUENCE_LENGTH = 300  # the pipeline's default window
BINNED_SAMPLE_SIZES = (16, 32, 64, 128)  # transformer sample sizes the pipeline has resolution bins for

GEMMA2_2B = Encoder("gemma2_2b", "tokenizer", "text_encoder", 2304)


def instruction(pipe) -> list[str]:
    """The complex human instruction the pipeline's call prepends by default (read from its signature)."""
    return list(inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default)


def _window(pipe) -> int:
    return min(SANA_MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    states, mask, _, _ = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        device=pipe.text_encoder.device,
        max_sequence_length=window,
        complex_human_instruction=instruction(pipe),
    )
    return {"states": states, "mask": mask}


def encode_sana(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def encode_sana_long(pipe, prompts: list[str]) -> Cond:
    """The whole prompt: a window wide enough for the longest (Gemma has rotary positions)."""
    longest = max(sana_state_ids_len(pipe, p) for p in prompts)
    return _encode(pipe, prompts, max(_window(pipe), longest))


def sana_state_ids(pipe, prompt: str, window: int | None = None) -> list[int]:
    """The ids the states stand on, unpadded: the pipeline's tokenization of instruction + prompt, cut to
    instruction + window - 2 tokens, of which it keeps <bos> and the positions from the instruction's last."""
    window = window or _window(pipe)
    chi = "\n".join(instruction(pipe))
    n_chi = len(pipe.tokenizer.encode(chi))
    ids = pipe.tokenizer(chi + prompt, add_special_tokens=True).input_ids[: n_chi + window - 2]
    return ids[:1] + ids[n_chi - 1 :]


def sana_state_ids_len(pipe, prompt: str) -> int:
    """Prompt tokens of `prompt` uncut, plus the two positions the states hold besides them."""
    return prompt_span(lambda p, text: sana_state_ids(p, text, window=1 << 20))(pipe, prompt)[1] + 2


def no_negative_sana(pipe, batch: int) -> Cond:
    # the pipeline's negative: "" without the instruction
    states, mask = pipe._get_gemma_prompt_embeds(
        [""] * batch,
        device=pipe.text_encoder.device,
        dtype=pipe.text_encoder.dtype,
        max_sequence_length=_window(pipe),
        complex_human_instruction=False,
    )
    return {"states": states, "mask": mask}


def _predict_sana(pipe, x_t, t, cond: Cond):
    """x_t: latents [B, C, h, w]; t: sigmas in [0, 1] (the transformer takes them x 1000 x timestep_scale, as
    the pipeline's flow-sigma scheduler gives them). Returns the velocity (flow_prediction)."""
    config = pipe.transformer.config
    out = pipe.transformer(
        x_t,
        encoder_hidden_states=cond["states"].to(x_t.dtype),
        encoder_attention_mask=cond["mask"],
        timestep=(t * pipe.scheduler.config.num_train_timesteps * config.timestep_scale).to(x_t.dtype),
        return_dict=False,
    )[0]
    if config.out_channels // 2 == config.in_channels:  # learned sigma: the first half is the prediction
        out = out.chunk(2, dim=1)[0]
    return out


def _sana_call(pipe, negative_prompt: str | None) -> dict:
    kwargs = negative_call(pipe, negative_prompt)
    if _window(pipe) != SANA_MAX_SEQUENCE_LENGTH:
        kwargs["max_sequence_length"] = _window(pipe)
    if pipe.transformer.config.sample_size not in BINNED_SAMPLE_SIZES:
        kwargs["use_resolution_binning"] = False  # the pipeline has no bins for this size (it would raise)
    return kwargs


def _sana_size(pipe) -> int:
    return int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor  # 1024 px on Sana 1024


def _sana_latent(pipe, height: int, width: int):
    f = pipe.vae_scale_factor
    return (pipe.transformer.config.in_channels, height // f, width // f)


SANA = Family(
    "sana",
    "Sana",
    (GEMMA2_2B,),
    encode_sana,
    _predict_sana,
    latent_shape=_sana_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=1,
    native_size=_sana_size,
    guidance=4.5,
    call_kwargs=_sana_call,
    pipelines=("SanaPipeline", "SanaPAGPipeline"),
    state_tokenizers=("tokenizer",),
    encode_long=encode_sana_long,
    no_negative=no_negative_sana,
    prefers_bf16=True,  # Gemma 2 overflows in fp16
    formats=("native",),
    prompt_span=prompt_span(sana_state_ids),
    prompt_window=lambda pipe: _window(pipe) - 2,
    size_multiple=32,  # SanaPipeline.check_inputs: sides divisible by 32, whatever the VAE's factor
)
