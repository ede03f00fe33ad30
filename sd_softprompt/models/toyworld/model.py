"""The toy world's pipeline parts, built from configs in code; the trained weights ship in ``model/``.

scripts/train_toyworld.py trains these from scratch on rendered scenes; ``MODEL_DIR`` is the folder it
writes and `--model toyworld` names.
"""

from __future__ import annotations

from pathlib import Path

from ..tiny_text import WORDS, clip_text_config, clip_tokenizer, clip_vocab_and_merges
from .world import captions_vocabulary, prompts_vocabulary

MODEL_DIR = Path(__file__).parent / "model"
NAME = "toyworld"
SIZE = 64
TEXT_WIDTH = 64


def is_toyworld(pipe) -> bool:
    """Whether ``pipe`` was loaded from a folder that scripts/train_toyworld.py wrote (it leaves toyworld.json)."""
    folder = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return bool(folder) and (Path(folder) / "toyworld.json").is_file()


def vocabulary() -> list[str]:
    """Whole-word tokens: the short captions' words first, then the tiny models' filler words (baselines,
    contexts), then the written prompts' (synonyms, styles, quality tags). Appending keeps every earlier word's
    id, so a model trained on the shorter vocabulary goes on from its own embeddings (train_toyworld --init-from)."""
    words = captions_vocabulary()
    words += [w for w in WORDS if w not in words]
    return words + [w for w in prompts_vocabulary() if w not in words]


def merges() -> list[tuple[str, str]]:
    return clip_vocab_and_merges(vocabulary())[1]


def tokenizer():
    return clip_tokenizer(words=vocabulary())


def text_encoder(vocab_size: int):
    from transformers import CLIPTextModel

    config = clip_text_config(vocab_size, TEXT_WIDTH)
    config.intermediate_size = TEXT_WIDTH * 4
    config.num_hidden_layers = 2
    return CLIPTextModel(config)


def vae():
    from diffusers import AutoencoderKL

    # two levels: 64 px pictures -> 32x32x4 latents. (Three levels, 16x16x4, had learnt no colour
    # after 150 steps on this CPU; two reach a tenth of the error in half the steps.)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        mid_block_add_attention=False,  # all convolutions: it trains on 32 px crops and runs on 64 px
        sample_size=SIZE,
    )


def unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 2,
        in_channels=4,
        out_channels=4,
        # cross-attention at 16x16 and 8x8 only: time of day and objects are big regions, the text need
        # not reach every latent pixel directly, and a CPU trains it in under an hour
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, num_train_timesteps=1000
    )


def sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
