"""Unit tests of what training compares: the loss registry, the sequence-loss alignment, the LR schedule."""

import math

import pytest
import torch

from sd_softprompt.errors import ConfigError
from sd_softprompt.families import FAMILIES
from sd_softprompt.models import tiny
from sd_softprompt.train.losses import (
    LOSSES,
    Alignment,
    alignment,
    alignments,
    cond_loss,
    get_loss,
    sequence_loss,
)
from sd_softprompt.train.trainer import TrainConfig, lr_factor, unused_in_loop


def test_loss_registry_says_what_each_loss_needs_and_refuses_other_names():
    assert {name: loss.needs_denoiser for name, loss in LOSSES.items()} == {
        "denoiser": True,
        "denoiser-fresh": True,
        "sequence": False,
        "full": False,
    }
    with pytest.raises(
        ConfigError, match="--loss must be one of denoiser, denoiser-fresh, sequence, full, not 'fulll'"
    ):
        get_loss("fulll")
    states = {"states": torch.zeros(1, 4, 2)}
    a = [Alignment(1, 1, 1)]
    with pytest.raises(ConfigError, match="fulll"):  # no silent fall-back to another loss
        cond_loss("fulll", states, states, a, {"states": 1.0})
    with pytest.raises(ConfigError, match="compares the denoiser's outputs"):
        cond_loss("denoiser", states, states, a, {"states": 1.0})


@pytest.mark.parametrize(
    ("family", "mode", "loss", "parked"),
    [("sd3", "text", "sequence", ["vae", "transformer"]), ("sd3", "images", "sequence", ["vae"])],
)
def test_sd3_parts_parked_during_the_loop(family, mode, loss, parked):
    cfg = TrainConfig(model="m", out="o.safetensors", mode=mode, loss=loss)
    assert unused_in_loop(cfg, FAMILIES[family]) == parked


def _aligned_soft(hard: torch.Tensor, a: Alignment) -> torch.Tensor:
    """The soft states a perfect soft prompt would give, built position by position from the alignment."""
    s, m, n = a.start, a.n_hard, a.n_soft
    length = hard.shape[1]
    soft = hard.clone()
    for i in range(n):  # prompt region: slot i holds the mean of the hard states it stands for
        lo, hi = (i * m) // n, -(-((i + 1) * m) // n)
        soft[:, s + i] = hard[:, s + lo : s + hi].mean(dim=1)
    for p in range(s + n, length):  # what follows: soft position p <-> hard position p + (m - n), clamped
        soft[:, p] = hard[:, min(p + m - n, length - 1)]
    return soft


@pytest.mark.parametrize("hard_prompt", ["lake", "image of serene landscape at sunrise with trees mountains and lake"])
def test_sequence_loss_positions_for_a_short_and_a_long_hard_prompt(hard_prompt):
    tokenizer = tiny.clip_tokenizer()
    a = alignment(tokenizer, hard_prompt, n_soft=3)
    m = len(tokenizer(hard_prompt, add_special_tokens=False).input_ids)
    assert (a.start, a.n_soft, a.n_hard) == (1, 3, m)  # CLIP: the prompt starts after start-of-text
    assert (m < 3) == (hard_prompt == "lake")  # one prompt shorter than the soft tokens, one longer
    hard = torch.randn(1, 77, 8, generator=torch.Generator().manual_seed(0))
    soft = _aligned_soft(hard, a)
    assert sequence_loss(soft, hard, a).item() == pytest.approx(0.0, abs=1e-10)
    # a state one position off in what follows the prompt is seen
    moved = soft.clone()
    moved[:, a.start + a.n_soft + 2] = hard[:, a.start + a.n_soft + 2]
    assert sequence_loss(moved, hard, a).item() > 1e-4


def test_sd3_aligns_its_clip_segment_and_its_t5_segment_separately(sd3):
    hard_prompt = "a misty lake at sunrise with golden clouds"
    clip, t5 = alignments(sd3, FAMILIES["sd3"], hard_prompt, 3)
    n_clip = len(sd3.tokenizer(hard_prompt, add_special_tokens=False).input_ids)
    n_t5 = len(sd3.tokenizer_3(hard_prompt, add_special_tokens=False).input_ids)
    assert (clip.start, clip.n_hard, clip.offset, clip.length) == (1, n_clip, 0, 77)
    assert (t5.start, t5.n_hard, t5.offset, t5.length) == (0, n_t5, 77, None)  # T5 has no start token
    states = FAMILIES["sd3"].encode(sd3, [hard_prompt])["states"]
    assert states.shape[1] == 77 + sd3.tokenizer_3.model_max_length
    hard = torch.randn(1, states.shape[1], 8, generator=torch.Generator().manual_seed(1))
    soft = torch.cat([_aligned_soft(hard[:, :77], clip), _aligned_soft(hard[:, 77:], Alignment(0, 3, n_t5))], dim=1)
    assert sequence_loss(soft, hard, [clip, t5]).item() == pytest.approx(0.0, abs=1e-10)
    # one alignment over the whole joined sequence (the old last-tokenizer rule) would not match it
    assert sequence_loss(soft, hard, [Alignment(0, 3, n_t5)]).item() > 1e-3


def test_lr_schedule_warms_up_then_holds_or_decays():
    assert [lr_factor(s, 100, 4, "constant") for s in (0, 1, 3, 4, 99)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 100, 4, "cosine") for s in (0, 3, 4, 52, 100)]
    assert cosine[:3] == [0.25, 1.0, 1.0] and cosine[3] == pytest.approx(0.5) and cosine[4] == pytest.approx(0.0)
    assert lr_factor(0, 10, 0, "cosine") == 1.0 and math.isclose(lr_factor(5, 10, 0, "cosine"), 0.5)


def test_denoiser_fresh_draws_new_noise_each_step_and_learns(sd1, tmp_path):
    """The pool's predecessor, kept so that the README's comparison rows can be reproduced."""
    from sd_softprompt.files.softprompt import SoftPrompt
    from sd_softprompt.train import train

    cfg = TrainConfig(
        model="tiny-sd1",
        out=str(tmp_path / "f.safetensors"),
        target="image of serene landscape at sunrise with trees mountains and lake",
        vectors=3,
        steps=40,
        lr=5e-3,
        loss="denoiser-fresh",
        progress=False,
        probe_size=64,
        eval_samples=6,
        checkpoint_every=0,
    )
    result = train(cfg, pipe=sd1)
    assert SoftPrompt.load(result.soft_prompt).metadata["loss"] == "denoiser-fresh"
    assert result.metrics["distance"]["alone"]["ratio_to_first_n_words"] < 0.6


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_repeated_prompts_are_encoded_once_with_the_same_rows_and_gradients(family):
    from sd_softprompt.families import detect_family
    from sd_softprompt.files.softprompt import SoftPrompt
    from sd_softprompt.inject.loader import load_soft_prompt
    from sd_softprompt.train.objectives import encode_unique
    from sd_softprompt.train.rows import trainable_rows

    pipe = tiny.build_sd(1) if family == "sd1" else tiny.build_sdxl()
    fam = detect_family(pipe)
    g = torch.Generator().manual_seed(0)
    width = {e.key: getattr(pipe, e.text_encoder).get_input_embeddings().weight.shape[1] for e in fam.encoders}
    init = {k: torch.randn(1, w, generator=g) for k, w in width.items()}
    tokens = load_soft_prompt(pipe, SoftPrompt(vectors=init, tokens=["[v1]"]), family=fam)
    prompts = ["a photo of [v1]", "a rendering of [v1]", "a photo of [v1]", "a photo of [v1]"]
    rows: list[int] = []  # the batch sizes the text encoder ran on
    pipe.text_encoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    got = {}
    for name, encode in (("per sample", fam.encode), ("once each", lambda p, ps: encode_unique(p, fam, ps))):
        vectors = {k: torch.nn.Parameter(v.clone()) for k, v in init.items()}
        with trainable_rows(pipe, fam, tokens, vectors):
            cond = encode(pipe, prompts)
            weights = torch.Generator().manual_seed(1)  # each row weighted differently: the gradient tells rows apart
            sum((v.float() * torch.randn(v.shape, generator=weights)).sum() for v in cond.values()).backward()
        got[name] = {k: v.detach() for k, v in cond.items()}, {k: v.grad for k, v in vectors.items()}
    assert rows == [4, 2]
    for a, b in zip(got["per sample"], got["once each"]):
        assert a.keys() == b.keys()
        for k in a:
            # float32 sums over batches of 4 and of 2 round differently: tolerance on the scale of the values
            atol = 1e-6 * max(1.0, a[k].abs().max().item())
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=atol), (k, (a[k] - b[k]).abs().max())


def test_denoiser_pool_batched_across_contexts_matches_one_latent_at_a_time(sd1, capsys):
    from sd_softprompt.families import detect_family
    from sd_softprompt.train.objectives import POOL_BATCH, TextObjective

    family = detect_family(sd1)
    hard = "image of serene landscape at sunrise with trees mountains and lake"
    cfg = TrainConfig(model="m", out="o.safetensors", target=hard, probe_pool=3, probe_size=64)
    objective = TextObjective(sd1, family, cfg, ["[v1]"], print)
    n = len(objective.contexts) * 3
    assert objective.want.shape[0] == n > POOL_BATCH  # batches mix contexts
    assert "outputs on 36 noisy latents" in capsys.readouterr().err  # the bar says what the wait is for
    for row in (0, 5, n - 1):
        target = objective.targets[int(objective.context_of[row])]
        with torch.no_grad():
            alone = family.predict(sd1, objective.probe.x_t[row : row + 1], objective.probe.t[row : row + 1], target)
        assert torch.allclose(objective.want[row], alone[0], rtol=1e-4, atol=1e-5)
