"""Negative soft prompts: the guided measure and training with --role negative."""

import json

import numpy as np
import pytest
import torch

from sd_softprompt.families import detect_family
from sd_softprompt.models import tiny
from sd_softprompt.train import measure as obj

NEGATIVE = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry"
)


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3"])
def test_guided_probe_follows_the_pipelines_sampler(family):
    """The recorded run is the pipeline's own: same start noise, scheduler and guidance give its latents."""
    pipe = tiny.BUILDERS[family]()
    fam = detect_family(pipe)
    with torch.no_grad():
        negative = fam.encode(pipe, [NEGATIVE])
        probe = obj.guided_probe(
            pipe, fam, ["a photo of a cat", "a red house"], negative, 5.0, steps=4, size=64, seed=3
        )
        want = pipe(
            ["a photo of a cat", "a red house"],
            num_inference_steps=4,
            guidance_scale=5.0,
            height=64,
            width=64,
            generator=torch.Generator("cpu").manual_seed(3),
            output_type="latent",
            # the T5 window the family encodes with (SD3), and the negative for both prompts
            **fam.call_kwargs(pipe, NEGATIVE) | {"negative_prompt": [NEGATIVE] * 2},
        ).images
    assert probe.x_t.shape[0] == 8 and probe.positive.tolist() == [0, 1] * 4
    torch.testing.assert_close(probe.final, want, rtol=1e-4, atol=1e-4)


def test_guided_report_reference_is_zero_and_empty_is_not():
    pipe = tiny.build_sd(1)
    fam = detect_family(pipe)
    with torch.no_grad():
        negative = fam.encode_long(pipe, [NEGATIVE])
        probe = obj.guided_probe(pipe, fam, obj.EVAL_POSITIVES[:2], negative, 7.5, steps=3, size=64)
        report = obj.guided_report(pipe, fam, {"hard": negative, "empty": fam.no_negative(pipe, 1)}, probe)
    assert report["D"]["hard"] < 1e-10 < report["D"]["empty"]
    assert report["hard_ratio_to_empty"] < 1e-6 and report["points"] == 6 and report["guidance"] == 7.5


def test_sdxl_without_negative_is_zeros_and_flux_has_none(sdxl, flux):
    empty = detect_family(sdxl).no_negative(sdxl, 2)
    assert empty["states"].shape[0] == 2 and not empty["states"].any() and not empty["pooled"].any()
    assert detect_family(flux).no_negative(flux, 1) is None


def test_negative_soft_prompt_beats_no_negative_on_the_guided_measure(tmp_path, sd1):
    from sd_softprompt.files.softprompt import SoftPrompt
    from sd_softprompt.inject.loader import load_soft_prompt
    from sd_softprompt.render.generate import generate
    from sd_softprompt.train import TrainConfig, train

    cfg = TrainConfig(
        model="tiny-sd1",
        out=str(tmp_path / "neg.safetensors"),
        target=NEGATIVE,
        role="negative",
        vectors=8,
        steps=60,
        progress=False,
        probe_size=64,
        eval_samples=6,
        checkpoint_every=0,
        validate_every=60,
        validation_seeds=[0],
    )
    result = train(cfg, pipe=sd1)
    g = result.metrics["guided"]
    assert g["positives"] == obj.EVAL_POSITIVES and g["points"] == 10 * len(obj.EVAL_POSITIVES)
    assert g["soft_ratio_to_empty"] < 0.1, g  # most of the negative's effect on the guided prediction
    assert "truncated" in g["D"]  # the 123-token negative is longer than the window: the cut one is a baseline
    soft = SoftPrompt.load(result.soft_prompt)
    assert soft.metadata["role"] == "negative" and float(soft.metadata["guided_ratio_to_empty"]) < 0.1
    # the validation grid compares the three negatives on one positive prompt
    record = json.loads((tmp_path / "neg.validation" / "step_000060.json").read_text())
    assert record["negative_prompt"] == ["[v1][v2][v3][v4][v5][v6][v7][v8]", NEGATIVE, None]
    # loaded like any soft prompt; used as negative_prompt it changes the image
    tokens = load_soft_prompt(sd1, result.soft_prompt)
    fast = dict(steps=2, guidance=7.5, height=64, width=64)
    with_soft = np.asarray(generate(sd1, "a red car", 0, negative_prompt="".join(tokens), **fast))
    without = np.asarray(generate(sd1, "a red car", 0, **fast))
    assert with_soft.shape == without.shape and (with_soft != without).any()


def test_flux_refuses_a_negative_role_in_one_line(tmp_path, tiny_dirs, capsys):
    from sd_softprompt.cli.main import main

    out, model = tmp_path / "neg.safetensors", tiny_dirs("flux")
    capsys.readouterr()
    code = main(
        ["train", "--model", model, "--target", NEGATIVE, "--role", "negative"]
        + ["--out", str(out), "--steps", "1", "--device", "cpu", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and "--role negative: Flux is guidance-distilled and takes no negative prompt" in err
        and err.count("\n") == 1
        and not out.exists()
    )


def test_cli_generate_takes_soft_tokens_in_the_negative_prompt(tmp_path, tiny_dirs):
    from PIL import Image

    from sd_softprompt.cli.main import main
    from sd_softprompt.files.softprompt import SoftPrompt

    g = torch.Generator().manual_seed(0)
    SoftPrompt(vectors={"clip_l": torch.randn(2, 32, generator=g)}).save(tmp_path / "neg.safetensors")
    common = ["generate", "--model", tiny_dirs("sd1"), "--prompt", "a red car", "--steps", "2", "--device", "cpu"]
    soft = ["--soft", str(tmp_path / "neg.safetensors")]
    assert main(common + soft + ["--negative-prompt", "[v1][v2]", "--out", str(tmp_path / "soft.png")]) == 0
    assert main(common + soft + ["--out", str(tmp_path / "none.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("soft", "none"))
    assert a.shape == b.shape and (a != b).any()
