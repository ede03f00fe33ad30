"""PixArt-Sigma: T5-XXL alone in a 300-token window, with its attention mask passed on to the transformer
(a DiT with cross-attention and AdaLN-single), trained on epsilon with a learned variance; classifier-free
guidance with a negative prompt (default "")."""

from __future__ import annotations

from .base import Cond, Encoder, Family
from .sd import negative_call

PIXART_MAX_SEQUENCE_LENGTH = 300  # PixArtSigmaPipeline's window (PixArt-alpha: 120)
PIXART_T5 = Encoder("t5xxl", "tokenizer", "text_encoder", 4096)  # ComfyUI's key (comfy/text_encoders/pixart_t5.py)
# The transformer sample sizes for which the pipeline has resolution bins (256: 2048 px ... 32: 256 px)
_BINNED = (256, 128, 64, 32)


def _window(pipe) -> int:
    return min(PIXART_MAX_SEQUENCE_LENGTH, pipe.tokenizer.model_max_length)


def _encode(pipe, prompts: list[str], window: int) -> Cond:
    # The pipeline lowercases the prompt (its clean_caption=False path) before T5's tokenizer sees it.
    states, mask, _, _ = pipe.encode_prompt(
        prompts,
        do_classifier_free_guidance=False,
        device=pipe.text_encoder.device,
        clean_caption=False,
        max_sequence_length=window,
    )
    return {"states": states, "mask": mask}


def encode_pixart(pipe, prompts: list[str]) -> Cond:
    return _encode(pipe, prompts, _window(pipe))


def encode_pixart_long(pipe, prompts: list[str]) -> Cond:
    """T5 takes the whole prompt (relative positions; ComfyUI's PixArt tokenizer does not cut it either)."""
    longest = max(len(pipe.tokenizer(p.lower().strip()).input_ids) for p in prompts)
    return _encode(pipe, prompts, max(_window(pipe), longest))


def no_negative_pixart(pipe, batch: int) -> Cond:
    return encode_pixart(pipe, [""] * batch)


def _predict_pixart(pipe, x_t, t, cond: Cond):
    """x_t: latents [B, C, h, w]; t: integer timesteps. Returns the epsilon half of the (epsilon, variance)
    output, as the pipeline does."""
    out = pipe.transformer(
        x_t,
        encoder_hidden_states=cond["states"].to(x_t.dtype),
        encoder_attention_mask=cond["mask"].to(x_t.device),
        timestep=t.expand(x_t.shape[0]).to(x_t.device),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )[0]
    if pipe.transformer.config.out_channels // 2 == x_t.shape[1]:  # learned sigma
        out = out.chunk(2, dim=1)[0]
    return out


def _pixart_call(pipe, negative_prompt: str | None) -> dict:
    # clean_caption=False: the pipeline's default caption cleaning (with bs4 and ftfy installed) replaces
    # brackets with spaces and would take [v1] apart before the tokenizer sees it
    kwargs = negative_call(pipe, negative_prompt) | {"clean_caption": False}
    window = _window(pipe)
    if window != PIXART_MAX_SEQUENCE_LENGTH:
        kwargs["max_sequence_length"] = window
    if pipe.transformer.config.sample_size not in _BINNED:  # (the tiny pipelines): no bins to snap sizes to
        kwargs["use_resolution_binning"] = False
    return kwargs


def _pixart_size(pipe) -> int:
    return int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor  # 1024 px on the 1024 model


def _pixart_latent(pipe, height: int, width: int):
    f = pipe.vae_scale_factor
    return (pipe.transformer.config.in_channels, height // f, width // f)


PIXART_SIGMA = Family(
    "pixart_sigma",
    "PixArt-Sigma",
    (PIXART_T5,),
    encode_pixart,
    _predict_pixart,
    latent_shape=_pixart_latent,
    objective="scheduler",
    denoiser="transformer",
    latent_patch=2,  # the transformer's 2x2 patches
    native_size=_pixart_size,
    guidance=4.5,  # PixArtSigmaPipeline's default
    call_kwargs=_pixart_call,
    pipelines=("PixArtSigmaPipeline",),
    state_tokenizers=("tokenizer",),
    encode_long=encode_pixart_long,
    no_negative=no_negative_pixart,
    lowercases_prompts=True,
    # ComfyUI (native t5xxl key) and OneTrainer ("t5"); diffusers' PixArt pipelines have no loader
    formats=("native", "onetrainer", "comfyui"),  # ComfyUI asks for t5xxl
)
