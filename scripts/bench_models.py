"""Architectures for scripts/benchmark_train.py, built in code with random weights (nothing is downloaded).

The architecture, not the weights, sets the cost: SD 1.5, SDXL and Flux-dev are built from their configs at
full size (the tiny tokenizer: token ids stay small, the tables are full size); `sd1-mid` is the mid-size
SD1 architecture the speed issue (#11) compares on: a 256-wide 4-layer CLIP and a (64, 128, 256) UNet;
`sd1-tiny`, `sdxl-tiny`, `flux-tiny` are the test suite's tiny pipelines (scripts/gpu_report.py --tiny).
"""

from __future__ import annotations

from sd_softprompt.models import tiny

FAMILIES = ["sd1-mid", "sd1", "sdxl", "flux", "sd1-tiny", "sdxl-tiny", "flux-tiny"]


def clip(hidden: int, layers: int, heads: int, projection: int | None = None, gelu: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        hidden_act="gelu" if gelu else "quick_gelu",
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def sd_vae(channels=(128, 256, 512, 512), **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=channels,
        layers_per_block=2,
        latent_channels=kw.pop("latent_channels", 4),
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        **kw,
    )


def _sd_pipeline(vae, text_encoder, unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny.clip_tokenizer(),
        unet=unet,
        scheduler=tiny._sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build(family: str):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    if family.endswith("-tiny"):  # the test suite's tiny pipelines: for trying scripts out on a CPU
        return {"sd1-tiny": tiny.build_sd, "sdxl-tiny": tiny.build_sdxl, "flux-tiny": tiny.build_flux}[family]()
    if family == "sd1-mid":
        unet = UNet2DConditionModel(
            sample_size=16,
            block_out_channels=(64, 128, 256),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=256,
            attention_head_dim=8,
        )
        # a VAE scaled like the UNet (a quarter of SD's widths): only the diffusers-like recipe runs it per step
        return _sd_pipeline(sd_vae((32, 64, 128, 128)), clip(256, 4, 4), unet)
    if family == "sd1":
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
        return _sd_pipeline(sd_vae(), clip(768, 12, 12), unet)
    if family == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            use_linear_projection=True,
        )
        return StableDiffusionXLPipeline(
            vae=sd_vae(),
            text_encoder=clip(768, 12, 12),
            text_encoder_2=clip(1280, 32, 20, 1280, True),
            tokenizer=tiny.clip_tokenizer(),
            tokenizer_2=tiny.clip_tokenizer("!"),
            unet=unet,
            scheduler=tiny._sd_scheduler(),
        )
    if family == "flux":
        from transformers import T5Config, T5EncoderModel

        t5 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                is_encoder_decoder=False,
            )
        )
        tok2 = tiny.t5_tokenizer()
        tok2.model_max_length = 512
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=sd_vae(
                latent_channels=16,
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.1159,
                scaling_factor=0.3611,
            ),
            text_encoder=clip(768, 12, 12),
            tokenizer=tiny.clip_tokenizer(),
            text_encoder_2=t5,
            tokenizer_2=tok2,
            transformer=FluxTransformer2DModel(in_channels=64, guidance_embeds=True),
        )
    raise SystemExit(f"unknown family {family}")
