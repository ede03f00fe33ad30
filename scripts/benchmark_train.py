"""Training speed and memory at real architecture size, with random weights (nothing is downloaded).

The architecture, not the weights, sets the cost: this builds SD 1.5, SDXL or Flux-dev sized pipelines from
their configs in code (random weights, the tiny tokenizer: token ids stay small, the tables are full size)
and times `train()` on them. Prints steps/s, wall time and peak memory; --json writes them.

    python scripts/benchmark_train.py --family sd1 --mode text --steps 20                  # CPU is fine
    python scripts/benchmark_train.py --family sdxl --mode images --device cuda --dtype bf16
    python scripts/benchmark_train.py --family flux --mode text --device cuda --dtype bf16  # ~40 GB
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from sd_softprompt import tiny
from sd_softprompt.train import TrainConfig, train


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


def sd_vae(**kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=kw.pop("latent_channels", 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **kw,
    )


def build(family: str):
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    if family == "sd1":
        return StableDiffusionPipeline(
            vae=sd_vae(),
            text_encoder=clip(768, 12, 12),
            tokenizer=tiny.clip_tokenizer(),
            unet=UNet2DConditionModel(cross_attention_dim=768, sample_size=64),
            scheduler=tiny._sd_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["sd1", "sdxl", "flux"], default="sd1")
    p.add_argument("--mode", choices=["text", "images"], default="text")
    p.add_argument("--loss", default="sequence")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--json")
    args = p.parse_args()

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    torch.set_default_dtype(dtype)  # build the frozen models directly in the training dtype, on the device
    with torch.device(args.device):
        pipe = build(args.family)
    torch.set_default_dtype(torch.float32)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    built = time.perf_counter() - t0
    params = {
        k: sum(p.numel() for p in m.parameters()) / 1e6
        for k, m in pipe.components.items()
        if isinstance(m, torch.nn.Module)
    }

    with tempfile.TemporaryDirectory() as tmp:
        images = None
        if args.mode == "images":
            images = Path(tmp) / "pics"
            images.mkdir()
            for i in range(4):
                Image.fromarray((torch.rand(args.resolution, args.resolution, 3) * 255).to(torch.uint8).numpy()).save(
                    images / f"{i}.png"
                )
        cfg = TrainConfig(
            model=f"random-{args.family}",
            out=str(Path(tmp) / "bench.safetensors"),
            mode=args.mode,
            target="image of serene landscape at sunrise with trees mountains and lake",
            images=str(images) if images else None,
            vectors=4,
            steps=args.steps,
            batch_size=args.batch_size,
            resolution=args.resolution,
            loss=args.loss,
            mixed_precision={"fp32": "no"}.get(args.dtype, args.dtype),
            checkpoint_every=0,
            eval_samples=2,
            probe_size=256,
            device=args.device,
            init="random",
            warmup=0,
        )
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        m = train(cfg, pipe=pipe).metrics
    out = {
        "family": args.family,
        "mode": args.mode,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "resolution": args.resolution if args.mode == "images" else None,
        "params_millions": params,
        "build_s": built,
        "steps": args.steps,
        "setup_s": m["setup_time_s"],
        "steps_per_s": m["steps_per_s"],
        "train_wall_s": m["wall_time_s"],
        "peak_memory_mb": m["peak_memory_mb"],
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
