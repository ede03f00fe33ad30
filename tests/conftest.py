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

from sd_softprompt import tiny  # noqa: E402


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
