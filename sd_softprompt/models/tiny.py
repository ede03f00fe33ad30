"""Tiny pipelines built from configs in code: random weights, tiny tokenizers, no download.

They have the real architectures' *shape of parts* (CLIP text encoders with the legacy `eos_token_id = 2`
that real SD/SDXL checkpoints carry, a T5 encoder, a UNet or Flux transformer, a VAE, the real schedulers)
at a width of a few dozen. They draw noise: they exist so that tests and the demo exercise the real
diffusers/transformers code paths offline in seconds. They say nothing about image quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

# The text side (also used by the toy world's model): re-exported so that `from .tiny import ...` keeps working.
from .tiny_text import WORDS, clip_text_config, clip_tokenizer, clip_vocab_and_merges, t5_tokenizer

__all__ = [
    "WORDS",
    "BUILDERS",
    "build_chroma",
    "build_flux",
    "build_hidream",
    "build_pixart_sigma",
    "build_sd",
    "build_sd3",
    "build_sd_diffusers_tests",
    "build_sdxl",
    "build_sdxl_diffusers_tests",
    "NOT_OURS",
    "clip_text_config",
    "clip_tokenizer",
    "clip_vocab_and_merges",
    "save_tiny",
    "t5_tokenizer",
]


def _vae(latent_channels: int = 4, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # four levels: the real 8x downsampling, so image sizes mean what they mean on real models
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=128,
        **kw,
    )


def _unet(cross_attention_dim: int, **kw):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,  # 64 px images
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        **kw,
    )


def _sd_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def build_sd(version: int = 1, seed: int = 0):
    """A tiny StableDiffusionPipeline. version=2 gives an SD 2.x-like one (gelu encoder, v-prediction)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    hidden = 32 if version == 1 else 40
    text_encoder = CLIPTextModel(clip_text_config(len(tokenizer), hidden, gelu=version == 2))
    return _eval(
        StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=_unet(hidden),
            scheduler=_sd_scheduler("epsilon" if version == 1 else "v_prediction"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    )


def build_sdxl(seed: int = 0):
    """A tiny StableDiffusionXLPipeline: CLIP-L-like encoder (32 wide) + bigG-like (48 wide, projection)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    tokenizer_2 = clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!"
    w1, w2, proj = 32, 48, 32
    text_encoder = CLIPTextModel(clip_text_config(len(tokenizer), w1))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(len(tokenizer_2), w2, gelu=True, projection=proj))
    time_dim = 8
    unet = _unet(
        w1 + w2,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + proj,
        transformer_layers_per_block=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return _eval(
        StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    )


def _t5(vocab_size: int, d_model: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=d_model,
            d_kv=12,
            d_ff=2 * d_model,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def build_sd3(seed: int = 0):
    """A tiny StableDiffusion3Pipeline: CLIP-L-like (32 wide) + bigG-like (48 wide), both with projections
    and the legacy eos id, + T5 (96 wide: SD3 pads the joined CLIP states to T5's width, so it is the widest)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(pad_token="!"), t5_tokenizer()
    w1, w2, w3, proj = 32, 48, 96, 16
    text_encoder = CLIPTextModelWithProjection(clip_text_config(len(tokenizer), w1, projection=proj))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(len(tokenizer_2), w2, gelu=True, projection=proj))
    transformer = SD3Transformer2DModel(
        sample_size=8,  # 64 px images
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=w3,
        caption_projection_dim=16,
        pooled_projection_dim=2 * proj,
        out_channels=4,
        pos_embed_max_size=16,
    )
    vae = _vae(
        latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305
    )
    return _eval(
        StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=_t5(len(tokenizer_3), w3),
            tokenizer_3=tokenizer_3,
        )
    )


def build_flux(seed: int = 0):
    """A tiny FluxPipeline: CLIP-L-like (32 wide, pooled) + T5 encoder (48 wide), guidance-distilled like dev."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    text_encoder = CLIPTextModel(clip_text_config(len(tokenizer), 32))
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer_2),
            d_model=48,
            d_kv=12,
            d_ff=96,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    vae = _vae(
        latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    return _eval(
        FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=t5,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    )


# ---------------------------------------------------------------- T5-only families: Chroma, PixArt-Sigma
def build_chroma(seed: int = 0):
    """A tiny ChromaPipeline: a T5 encoder (48 wide) and a Flux-like transformer with Chroma's approximator in
    place of the pooled CLIP vector and the guidance embedding."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        axes_dims_rope=(4, 4, 8),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    vae = _vae(
        latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035
    )
    return _eval(
        ChromaPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
            vae=vae,
            text_encoder=_t5(len(tokenizer), 48),
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def build_pixart_sigma(seed: int = 0):
    """A tiny PixArtSigmaPipeline: a T5 encoder (40 wide) and a PixArt DiT (cross-attention, AdaLN-single,
    learned variance), with the DPM-Solver scheduler the real one ships with."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tokenizer = t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=8,  # 64 px images
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,  # epsilon and the learned variance
        cross_attention_dim=16,
        caption_channels=40,
        norm_num_groups=4,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon"
    )
    return _eval(
        PixArtSigmaPipeline(
            tokenizer=tokenizer,
            text_encoder=_t5(len(tokenizer), 40),
            vae=_vae(),
            transformer=transformer,
            scheduler=scheduler,
        )
    )


# ---------------------------------------------------------------- HiDream
def build_hidream(seed: int = 0):
    """A tiny HiDreamImagePipeline: CLIP-L-like (32 wide) and bigG-like (48 wide) with projections and the
    legacy eos id, at HiDream's 128 CLIP positions; T5 (40 wide); a Llama 3-like decoder (24 wide, 2 layers,
    byte-level BPE) whose every layer's states the transformer takes; a 1+1-block MoE transformer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HiDreamImagePipeline, HiDreamImageTransformer2DModel
    from transformers import CLIPTextModelWithProjection, LlamaConfig, LlamaForCausalLM

    from .tiny_text import llama_tokenizer

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = clip_tokenizer(), clip_tokenizer(pad_token="!"), t5_tokenizer()
    tokenizer_4 = llama_tokenizer()
    w1, w2, w3, w4, proj = 32, 48, 40, 24, 16
    clips = []
    for tok, width, gelu in ((tokenizer, w1, False), (tokenizer_2, w2, True)):
        config = clip_text_config(len(tok), width, gelu=gelu, projection=proj)
        config.max_position_embeddings = 128  # HiDream pads CLIP prompts to 128 (its CLIPs are long-context)
        clips.append(CLIPTextModelWithProjection(config))
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer_4),
            hidden_size=w4,
            intermediate_size=2 * w4,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer_4.bos_token_id,
            eos_token_id=tokenizer_4.eos_token_id,
            attn_implementation="eager",  # the pipeline asks for the attentions
        )
    )
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=[w3, w4],
        text_emb_dim=2 * proj,
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(4, 2, 2),
        max_resolution=(16, 16),
        llama_layers=[0, 1],  # one Llama layer's states per block (the real model: 48 picks of its 32 layers)
    )
    vae = _vae(
        latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305
    )
    pipe = _eval(
        HiDreamImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=clips[0],
            tokenizer=tokenizer,
            text_encoder_2=clips[1],
            tokenizer_2=tokenizer_2,
            text_encoder_3=_t5(len(tokenizer_3), w3),
            tokenizer_3=tokenizer_3,
            text_encoder_4=llama,
            tokenizer_4=tokenizer_4,
            transformer=transformer,
        )
    )
    # The pipeline draws every image at this area (the size asked sets only the aspect): 64 px, not 1024.
    # An instance attribute, as in diffusers: a saved and reloaded tiny HiDream draws at 1024 px again.
    pipe.default_sample_size = 8
    return pipe


BUILDERS = {
    "sd1": lambda seed=0: build_sd(1, seed),
    "sd2": lambda seed=0: build_sd(2, seed),
    "sdxl": build_sdxl,
    "flux": build_flux,
    "sd3": build_sd3,
}
BUILDERS |= {"chroma": build_chroma, "pixart_sigma": build_pixart_sigma}  # T5-only families
BUILDERS["hidream"] = build_hidream


def _eval(pipe):
    # Modules built from configs start in training mode (T5 dropout); loaded ones are in eval mode.
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def save_tiny(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build a tiny pipeline of `family` and `save_pretrained` it to `path` (loadable by from_pretrained)."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; tiny pipelines exist for {', '.join(BUILDERS)}")
    path = Path(path)
    BUILDERS[family](seed=seed).save_pretrained(path)
    return path


# ---- decoder-only text encoders (Sana, Lumina 2, Qwen-Image, Flux.2 Klein, Flux.2) ---------------------------
def build_sana(seed: int = 0):
    """A tiny SanaPipeline: Gemma 2 (2 layers, 32 wide; its last normed states, as Sana takes them) with a
    tokenizer whose words include the complex human instruction, a linear-attention DiT, a DC-AE (8x here)."""
    import inspect

    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Model

    from .tiny_llm import gemma2_config, gemma_tokenizer

    torch.manual_seed(seed)
    chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    tokenizer = gemma_tokenizer(chi)
    text_encoder = Gemma2Model(gemma2_config(len(tokenizer), 32))
    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=32,
        sample_size=8,  # 64 px images
        patch_size=1,
    )
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock",) * 4,
        decoder_block_types=("ResBlock",) * 4,
        encoder_block_out_channels=(8, 8, 16, 16),
        decoder_block_out_channels=(8, 8, 16, 16),
        encoder_layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1),
        encoder_qkv_multiscales=((),) * 4,
        decoder_qkv_multiscales=((),) * 4,
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    )
    scheduler = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    return _eval(
        SanaPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )
    )


BUILDERS["sana"] = build_sana


def build_lumina2(seed: int = 0):
    """A tiny Lumina2Pipeline: Gemma 2 (2 layers, 32 wide; the pipeline reads its penultimate states) with a
    tokenizer whose words include the pipeline's system prompt, a Lumina 2 DiT, an 8x VAE."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel
    from transformers import Gemma2Model

    from .tiny_llm import LUMINA2_SYSTEM_WORDS, gemma2_config, gemma_tokenizer

    torch.manual_seed(seed)
    tokenizer = gemma_tokenizer([LUMINA2_SYSTEM_WORDS])
    text_encoder = Gemma2Model(gemma2_config(len(tokenizer), 32))
    transformer = Lumina2Transformer2DModel(
        sample_size=8,  # 64 px images
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 4, 8),
        axes_lens=(320, 64, 64),
        cap_feat_dim=32,
    )
    vae = _vae(
        latent_channels=4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False)
    return _eval(
        Lumina2Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer
        )
    )


BUILDERS["lumina2"] = build_lumina2


# ---- Qwen encoders (Qwen-Image, Flux.2 Klein) ----------------------------------------------------------------
def build_qwen_image(seed: int = 0):
    """A tiny QwenImagePipeline: Qwen2.5-VL (2 layers, 32 wide, a 1-block vision tower) with a byte-level
    tokenizer whose words include the pipeline's chat template (34 template tokens before the prompt, as on the
    real tokenizer), a Qwen-Image MMDiT, a one-frame video VAE (8x, per-channel latent mean and std)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .tiny_llm import QWEN_IMAGE_TEMPLATE_WORDS, qwen2_5_vl_config, qwen_tokenizer

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer([QWEN_IMAGE_TEMPLATE_WORDS])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text_encoder = Qwen2_5_VLForConditionalGeneration(qwen2_5_vl_config(len(tokenizer), tokenizer.pad_token_id, im_end))
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 latent channels packed 2x2
        out_channels=4,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[-0.76, -0.71, -0.91, 0.11],
        latents_std=[2.82, 1.45, 2.33, 2.66],
    )
    # Qwen-Image's scheduler: resolution-dependent (dynamic) exponential shift
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        use_dynamic_shifting=True,
        time_shift_type="exponential",
    )
    return _eval(
        QwenImagePipeline(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
        )
    )


def _flux2_parts(guidance_embeds: bool):
    """The Flux.2 transformer (reading three 32-wide layers' states), its VAE with batch-norm latent statistics
    (8x, 2x2 patches) and scheduler, as Klein and Flux.2 [dev] share them."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels in 2x2 patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=96,  # three 32-wide layers' states
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        mid_block_add_attention=False,
        sample_size=64,
    )
    with torch.no_grad():  # latent statistics as a trained VAE carries them (a fresh one has 0 and 1)
        vae.bn.running_mean.copy_(torch.linspace(-0.3, 0.3, vae.bn.num_features))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.num_features))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")
    return dict(transformer=transformer, vae=vae, scheduler=scheduler)


def build_flux2_klein(seed: int = 0, is_distilled: bool = False):
    """A tiny Flux2KleinPipeline (a base model: guidance against the empty prompt): Qwen3 (28 layers, 32 wide,
    so that the pipeline's layers 9, 18 and 27 exist) with Qwen3's chat template and a 48-token window, a Flux.2
    transformer, a VAE with batch-norm latent statistics (8x, 2x2 patches)."""
    from diffusers import Flux2KleinPipeline
    from transformers import Qwen3ForCausalLM

    from .tiny_llm import QWEN3_CHAT_TEMPLATE, QWEN3_CHAT_WORDS, qwen3_config, qwen_tokenizer

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer([QWEN3_CHAT_WORDS], model_max_length=48, chat_template=QWEN3_CHAT_TEMPLATE)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text_encoder = Qwen3ForCausalLM(qwen3_config(len(tokenizer), 32, layers=28, eos_token_id=im_end))
    return _eval(
        Flux2KleinPipeline(
            text_encoder=text_encoder, tokenizer=tokenizer, is_distilled=is_distilled, **_flux2_parts(False)
        )
    )


BUILDERS |= {"qwen_image": build_qwen_image, "flux2_klein": build_flux2_klein}


def build_flux2(seed: int = 0):
    """A tiny Flux2Pipeline (Flux.2 [dev]: guidance-distilled, a guidance embedding): Mistral 3 (31 layers, 32
    wide, so that the pipeline's layers 10, 20 and 30 exist, a 1-layer vision tower) behind a text-only stand-in
    for its PixtralProcessor, with Mistral Small 3's chat template, the pipeline's system message in the
    vocabulary and a 64-token window padded on the left, as Flux.2's tokenizer pads; the Flux.2 transformer,
    VAE and scheduler of the tiny Klein."""
    from diffusers import Flux2Pipeline
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import Mistral3ForConditionalGeneration

    from .tiny_llm import MISTRAL3_CHAT_TEMPLATE, mistral3_config, mistral_tokenizer, text_processor

    torch.manual_seed(seed)
    tokenizer = mistral_tokenizer([SYSTEM_MESSAGE], model_max_length=64)
    text_encoder = Mistral3ForConditionalGeneration(mistral3_config(len(tokenizer), 32, layers=31))
    processor = text_processor(tokenizer, MISTRAL3_CHAT_TEMPLATE)
    return _eval(Flux2Pipeline(text_encoder=text_encoder, tokenizer=processor, **_flux2_parts(True)))


BUILDERS["flux2"] = build_flux2


# ---- configs this project did not choose: diffusers' own pipeline tests ------------------------------------
# Our tiny pipelines were shaped by us, and figures on them flatter what we tuned on them. These take the
# component configs of diffusers' fast tests (tests/pipelines/stable_diffusion/test_stable_diffusion.py and
# stable_diffusion_xl/test_stable_diffusion_xl.py, get_dummy_components, at diffusers 58eb52c0803e): an 8-wide
# CLIP of 2 layers for SD, two 32-wide CLIPs of 5 layers for SDXL, their UNets and VAEs. Only the tokenizer is
# ours (theirs, hf-internal-testing/tiny-random-clip, is a download): its vocabulary fits their 1000 ids.
def build_sd_diffusers_tests(seed: int = 0):
    """The StableDiffusionPipeline of diffusers' fast tests, random weights (seeded as they seed them)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    text_config = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_hidden_layers=2)
    text_encoder = CLIPTextModel(_diffusers_tests_clip(**text_config))
    return _eval(
        StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(),
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    )


def build_sdxl_diffusers_tests(seed: int = 0):
    """The StableDiffusionXLPipeline of diffusers' fast tests, random weights (seeded as they seed them)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(2, 4),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=128,
    )
    torch.manual_seed(seed)
    text_config = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, hidden_act="gelu"
    )
    text_encoder = CLIPTextModel(_diffusers_tests_clip(**text_config, projection_dim=32))
    text_encoder_2 = CLIPTextModelWithProjection(_diffusers_tests_clip(**text_config, projection_dim=32))
    return _eval(
        StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    )


def _diffusers_tests_clip(**kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5, pad_token_id=1, vocab_size=1000, **kw)


# Not in BUILDERS (one per family, ours): measured beside them by scripts/measure_long_negative.py --not-ours.
NOT_OURS = {"sd1": build_sd_diffusers_tests, "sdxl": build_sdxl_diffusers_tests}
