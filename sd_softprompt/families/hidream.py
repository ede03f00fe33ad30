"""HiDream-I1: four text encoders. CLIP-L and CLIP-G give only the pooled vector (their projections, joined);
T5-XXL gives states; Llama 3.1 gives the states of every layer, of which each transformer block takes one.
A sparse-MoE transformer trained by flow matching (its output is the negative velocity); classifier-free
guidance with a negative prompt (default "")."""

from __future__ import annotations

from .base import Cond, Encoder, Family
from .sd import negative_call

HIDREAM_MAX_SEQUENCE_LENGTH = 128  # HiDreamImagePipeline's window for T5 and Llama (CLIP: padded to 128 too)

# ComfyUI's keys (comfy/text_encoders/hidream.py); OneTrainer writes t5xxl as "t5", the others as these.
HIDREAM_ENCODERS = (
    Encoder("clip_l", "tokenizer", "text_encoder", 768),
    Encoder("clip_g", "tokenizer_2", "text_encoder_2", 1280),
    Encoder("t5xxl", "tokenizer_3", "text_encoder_3", 4096),
    Encoder("llama", "tokenizer_4", "text_encoder_4", 4096),
)


def _window(pipe) -> int:
    # the tiny pipelines' T5 tokenizer is shorter (64): every encoder's window follows it, in training and calls
    return min(HIDREAM_MAX_SEQUENCE_LENGTH, pipe.tokenizer_3.model_max_length)


def encode_hidream(pipe, prompts: list[str]) -> Cond:
    """states: T5's [B, L, D]; llama: every Llama layer's states, batch first [B, layers, L, D] (the pipeline
    stacks them layer first); pooled: both CLIPs' projections joined."""
    t5, _, llama, _, pooled, _ = pipe.encode_prompt(
        prompt=prompts,
        device=pipe.text_encoder_3.device,
        do_classifier_free_guidance=False,
        max_sequence_length=_window(pipe),
    )
    return {"states": t5, "llama": llama.transpose(0, 1), "pooled": pooled}


def encode_hidream_long(pipe, prompts: list[str]) -> Cond:
    """As ComfyUI encodes a long HiDream prompt: T5 cut at the window (ComfyUI keeps its first 128 tokens),
    Llama uncut; the pooled vector from the window's CLIP positions."""
    cond = encode_hidream(pipe, prompts)
    longest = max(len(pipe.tokenizer_4(p).input_ids) for p in prompts)
    if longest > _window(pipe):
        llama = pipe._get_llama3_prompt_embeds(prompts, longest, pipe.text_encoder_4.device)
        cond["llama"] = llama.transpose(0, 1)
    return cond


def no_negative_hidream(pipe, batch: int) -> Cond:
    return encode_hidream(pipe, [""] * batch)


def _predict_hidream(pipe, x_t, t, cond: Cond):
    """x_t: latents [B, C, h, w] (square: the transformer patchifies them); t: sigmas in [0, 1] (it takes them
    x 1000, as the scheduler's timesteps). Returns the velocity (the pipeline negates the output)."""
    out = pipe.transformer(
        hidden_states=x_t,
        timesteps=(t * pipe.scheduler.config.num_train_timesteps).to(x_t.dtype),
        encoder_hidden_states_t5=cond["states"].to(x_t.dtype),
        encoder_hidden_states_llama3=cond["llama"].transpose(0, 1).to(x_t.dtype),
        pooled_embeds=cond["pooled"].to(x_t.dtype),
        return_dict=False,
    )[0]
    return -out


def _hidream_call(pipe, negative_prompt: str | None) -> dict:
    window = _window(pipe)
    return negative_call(pipe, negative_prompt) | (
        {} if window == HIDREAM_MAX_SEQUENCE_LENGTH else {"max_sequence_length": window}
    )


def _hidream_size(pipe) -> int:
    # The pipeline draws every image at this area; a height and width set only the aspect ratio.
    return pipe.default_sample_size * pipe.vae_scale_factor  # 1024 px on the real model


def _hidream_latent(pipe, height: int, width: int):
    f = pipe.vae_scale_factor
    return (pipe.transformer.config.in_channels, height // f, width // f)


HIDREAM = Family(
    "hidream",
    "HiDream-I1",
    HIDREAM_ENCODERS,
    encode_hidream,
    _predict_hidream,
    latent_shape=_hidream_latent,
    objective="flow",
    denoiser="transformer",
    latent_patch=2,  # the transformer's 2x2 patches
    native_size=_hidream_size,
    guidance=5.0,  # HiDreamImagePipeline's default (Full; Dev and Fast are distilled: 0)
    call_kwargs=_hidream_call,
    pipelines=("HiDreamImagePipeline",),
    state_tokenizers=("tokenizer_3",),  # "states" are T5's; Llama's go apart ("llama"), CLIP gives the pooled
    encode_long=encode_hidream_long,
    no_negative=no_negative_hidream,
    prefers_bf16=True,
    # ComfyUI (native keys) and OneTrainer; diffusers' HiDream pipeline has no textual-inversion loader
    formats=("native", "onetrainer", "comfyui"),  # ComfyUI: clip_l, clip_g, t5xxl, llama
)
