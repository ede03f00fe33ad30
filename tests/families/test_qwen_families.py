"""What the Qwen-encoder families (Qwen-Image, Flux.2 Klein) do beyond the shared LLM-family tests
(tests/families/test_llm_families.py): the template positions the pipelines drop or keep, the fixed window,
one denoising step of the pipeline itself against the family's `predict`, the VAE latents, the guidance and
negative-prompt arguments, and the two Klein widths' keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sd_softprompt.errors import ConfigError
from sd_softprompt.families import FAMILIES, detect_family
from sd_softprompt.families.flux2_klein import klein_state_ids
from sd_softprompt.families.qwen_image import qwen_image_state_ids
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.inject.loader import load_soft_prompt
from sd_softprompt.models import tiny


def _one_step(pipe, latents, **kwargs) -> torch.Tensor:
    """The pipeline's latents after its first of two denoising steps (Qwen-Image's terminal shift needs two), as
    its callback sees them."""
    seen = []

    def keep(p, i, t, tensors):
        seen.append(tensors["latents"].clone())
        return {}

    pipe(latents=latents, num_inference_steps=2, height=64, width=64, output_type="latent", callback_on_step_end=keep,
         **kwargs)  # fmt: skip
    return seen[0]


def test_qwen_image_drops_the_34_template_tokens_and_pads_to_a_fixed_window(qwen_image):
    pipe, family = qwen_image, FAMILIES["qwen_image"]
    template = pipe.prompt_template_encode
    head = template.split("{}")[0]
    # the tiny tokenizer splits the system turn and the user header as Qwen's does: 34 tokens, all dropped
    assert len(pipe.tokenizer(head).input_ids) == pipe.prompt_template_encode_start_idx == 34
    ids = qwen_image_state_ids(pipe, "lake at sunrise")
    words = pipe.tokenizer("lake at sunrise", add_special_tokens=False).input_ids
    assert ids[: len(words)] == words and family.prompt_span(pipe, "lake at sunrise") == (0, len(words))
    assert pipe.tokenizer.convert_ids_to_tokens(ids[len(words) :]) == [
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
        "assistant",
        "Ċ",
    ]
    with torch.no_grad():
        cond = family.encode(pipe, ["lake", "lake at sunrise with trees and mountains"])
        states, mask = pipe.encode_prompt(["lake"], device="cpu")
    assert cond["states"].shape[1] == cond["mask"].shape[1] == 64  # the tiny window, whatever the batch
    assert cond["mask"][0].sum() == states.shape[1] and mask is None  # the pipeline drops an all-ones mask
    torch.testing.assert_close(cond["states"][0, : states.shape[1]], states[0], rtol=1e-5, atol=1e-5)
    assert not cond["states"][0, states.shape[1] :].any()
    assert family.prompt_window(pipe) == 64 - 5


@pytest.mark.parametrize("name", ["qwen_image", "flux2_klein"])
def test_predict_is_the_pipelines_own_denoising_step(name, request):
    """An Euler step of the unmodified pipeline, with soft tokens in the prompt, is x + dsigma * predict."""
    pipe = request.getfixturevalue(name)
    family = detect_family(pipe)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    load_soft_prompt(
        pipe, SoftPrompt({family.keys[0]: torch.randn(2, width, generator=torch.Generator().manual_seed(1))})
    )
    prompt = "[v1][v2] lake at sunrise"
    x = torch.randn(1, *family.latent_shape(pipe, 64, 64), generator=torch.Generator().manual_seed(0))
    b, c, h, w = x.shape
    if name == "qwen_image":
        after = _one_step(pipe, pipe._pack_latents(x, b, c, h, w), prompt=prompt, max_sequence_length=64)
        after = pipe._unpack_latents(after, 64, 64, pipe.vae_scale_factor)[:, :, 0]
    else:  # guidance 1: no classifier-free pass
        after = _one_step(pipe, x, prompt=prompt, guidance_scale=1.0, max_sequence_length=48)
        after = after.permute(0, 2, 1).reshape(b, c, h, w)
    sigma, sigma_next = pipe.scheduler.sigmas[:2]
    with torch.no_grad():
        v = family.predict(pipe, x, sigma.reshape(1), family.encode(pipe, [prompt]))
    torch.testing.assert_close(after, x + (sigma_next - sigma) * v, rtol=1e-4, atol=1e-5)


def test_klein_latents_are_the_pipelines_reference_image_latents(flux2_klein):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours = FAMILIES["flux2_klein"].vae_latents(flux2_klein, image)
        theirs = flux2_klein._encode_vae_image(image, generator=None)
    torch.testing.assert_close(ours, theirs)
    assert ours.shape[1:] == FAMILIES["flux2_klein"].latent_shape(flux2_klein, 64, 64)


def test_qwen_image_latents_are_normalised_per_channel(qwen_image):
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae = qwen_image.vae
    with torch.no_grad():
        ours = FAMILIES["qwen_image"].vae_latents(qwen_image, image)
        raw = vae.encode(image[:, :, None]).latent_dist.mode()[:, :, 0]
    # the pipeline's decoding undoes it: latents / (1 / std) + mean
    std, mean = (torch.tensor(vae.config[k]).view(1, -1, 1, 1) for k in ("latents_std", "latents_mean"))
    torch.testing.assert_close(ours * std + mean, raw)
    assert ours.shape[1:] == FAMILIES["qwen_image"].latent_shape(qwen_image, 64, 64)


def test_guidance_and_negative_prompts(qwen_image, flux2_klein):
    qwen, klein = FAMILIES["qwen_image"], FAMILIES["flux2_klein"]
    # Qwen-Image guides (true_cfg_scale) only with a negative prompt, which it takes as text
    assert qwen.guidance_arg == "true_cfg_scale" and qwen.no_negative(qwen_image, 1) is None
    assert qwen.call_kwargs(qwen_image, "blurry") == {"negative_prompt": "blurry", "max_sequence_length": 64}
    # Klein base: guidance_scale against the empty prompt; a negative prompt goes in as the pipeline's embeddings
    assert klein.guidance_arg == "guidance_scale"
    with torch.no_grad():
        torch.testing.assert_close(
            klein.no_negative(flux2_klein, 2)["states"], klein.encode(flux2_klein, ["", ""])["states"]
        )
        kwargs = klein.call_kwargs(flux2_klein, "blurry")
        torch.testing.assert_close(kwargs["negative_prompt_embeds"], klein.encode(flux2_klein, ["blurry"])["states"])
    assert kwargs["max_sequence_length"] == 48 and klein.call_kwargs(flux2_klein, None) == {"max_sequence_length": 48}
    distilled = tiny.build_flux2_klein(is_distilled=True)
    assert klein.no_negative(distilled, 1) is None
    with pytest.raises(ConfigError, match="guidance-distilled"):
        klein.call_kwargs(distilled, "blurry")


def test_klein_template_and_its_two_widths_keys(flux2_klein):
    from sd_softprompt.files.keys import FAMILY_BY_KEYS, WIDTH_TO_KEY

    ids = klein_state_ids(flux2_klein, "lake")
    tokens = flux2_klein.tokenizer.convert_ids_to_tokens(ids)
    # the user header, the prompt, the closed turn and the empty think block of thinking-off Qwen3
    assert tokens == ["<|im_start|>", "user", "Ċ", "lake", "<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ",
                      "<think>", "ĊĊ", "</think>", "ĊĊ"]  # fmt: skip
    assert FAMILIES["flux2_klein"].prompt_span(flux2_klein, "lake") == (3, 1)

    def fake(width):  # the two Klein sizes differ only in the encoder's width
        table = SimpleNamespace(weight=torch.empty(0, width))
        return SimpleNamespace(text_encoder=SimpleNamespace(get_input_embeddings=lambda: table))

    assert FAMILIES["flux2_klein_9b"].matches(fake(4096)) and not FAMILIES["flux2_klein"].matches(fake(4096))
    assert FAMILIES["flux2_klein"].matches(fake(2560)) and not FAMILIES["flux2_klein_9b"].matches(fake(2560))
    assert FAMILY_BY_KEYS[frozenset({"qwen3_4b"})] == "flux2_klein"
    assert FAMILY_BY_KEYS[frozenset({"qwen3_8b"})] == "flux2_klein_9b"
    assert FAMILY_BY_KEYS[frozenset({"qwen25_7b"})] == "qwen_image"
    # a bare tensor's key from its width: Qwen3 8B shares T5-XXL's 4096 and leaves it T5's
    assert WIDTH_TO_KEY[2560] == "qwen3_4b" and WIDTH_TO_KEY[3584] == "qwen25_7b" and WIDTH_TO_KEY[4096] == "t5xxl"


def test_hub_ids_get_bf16_where_the_gpu_has_it():
    from sd_softprompt.models.pipeline import _pipeline_class, resolve_dtype

    # a hub id's family from its name, spelt with dashes or dots (both families prefer bf16)
    assert _pipeline_class("Qwen/Qwen-Image", None) == "QwenImagePipeline"
    assert resolve_dtype(None, "mps", _pipeline_class("Qwen/Qwen-Image", None)) == torch.bfloat16
    assert resolve_dtype(None, "mps", _pipeline_class("black-forest-labs/FLUX.2-klein-4B", None)) == torch.bfloat16
