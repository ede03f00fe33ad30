"""Shared fixtures: tiny pipelines built in code (random weights, no download)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: the tiny models gain nothing from more, and two busy-waiting threads per process
# slow down by 100x when another process holds a core (two-process accelerate test, parallel runs).
torch.set_num_threads(1)

from sd_softprompt.models import tiny  # noqa: E402


@pytest.fixture
def sd1():
    return tiny.build_sd(1)


@pytest.fixture
def sd2():
    return tiny.build_sd(2)


@pytest.fixture
def sdxl():
    return tiny.build_sdxl()


@pytest.fixture
def flux():
    return tiny.build_flux()


@pytest.fixture
def sd3():
    return tiny.build_sd3()


# T5-only families (Chroma, PixArt-Sigma) and HiDream
@pytest.fixture
def chroma():
    return tiny.build_chroma()


@pytest.fixture
def pixart_sigma():
    return tiny.build_pixart_sigma()


@pytest.fixture
def hidream():
    return tiny.build_hidream()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """Tiny pipelines saved with save_pretrained, built once per session, by family."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, str] = {}

    def get(family: str = "sd1") -> str:
        if family not in cache:
            cache[family] = str(tiny.save_tiny(family, root / family))
        return cache[family]

    return get


def _build_tiny_clip():
    """A tiny random CLIPModel (2 layers, width 32, 32x32 pictures) and its processor, seeded."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = tiny.clip_tokenizer()
    n = len(tokenizer)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=n,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=n - 2,
            eos_token_id=n - 1,
            pad_token_id=n - 1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    return CLIPModel(config), processor


@pytest.fixture
def tiny_clip():
    """Builds a tiny random (CLIPModel, CLIPProcessor) pair, the same each call."""
    return _build_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> str:
    """The tiny random CLIPModel and its processor saved with save_pretrained (a --clip-model folder)."""
    folder = tmp_path_factory.mktemp("tiny-clip")
    model, processor = _build_tiny_clip()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


# ---- decoder-only (LLM) text encoders ----------------------------------------------------------------------
@pytest.fixture
def sana():
    return tiny.build_sana()


@pytest.fixture
def lumina2():
    return tiny.build_lumina2()


# ---- Qwen encoders (Qwen-Image, Flux.2 Klein) ----------------------------------------------------------------
@pytest.fixture
def qwen_image():
    return tiny.build_qwen_image()


@pytest.fixture
def flux2_klein():
    return tiny.build_flux2_klein()


# ---- Mistral 3 (Flux.2 [dev]) --------------------------------------------------------------------------------
@pytest.fixture
def flux2():
    return tiny.build_flux2()


@pytest.fixture
def images_mode_fixed_batch(tmp_path):
    """Train images mode on two random 64 px pictures: returns the run's fixed-batch loss (before, after),
    having checked that every text encoder of the pipeline is left bit for bit as it was."""

    def run(pipe, family: str, steps: int = 20) -> dict:
        from PIL import Image

        from sd_softprompt.train import TrainConfig, train

        folder = tmp_path / "pics"
        folder.mkdir()
        g = torch.Generator().manual_seed(0)
        for i in range(2):
            Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()).save(
                folder / f"{i}.png"
            )
        cfg = TrainConfig(
            model=f"tiny-{family}",
            out=str(tmp_path / "ti.safetensors"),
            mode="images",
            images=str(folder),
            vectors=2,
            steps=steps,
            lr=5e-2,
            warmup=0,
            resolution=64,
            batch_size=4,
            init="random",
            progress=False,
            checkpoint_every=0,
        )
        encoders = {n: m for n, m in pipe.components.items() if n.startswith("text_encoder") and m is not None}
        before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in encoders.items()}
        fixed = train(cfg, pipe=pipe).metrics["fixed_batch_loss"]
        for n, m in encoders.items():
            assert all(torch.equal(v, m.state_dict()[k]) for k, v in before[n].items()), n
        return fixed

    return run
