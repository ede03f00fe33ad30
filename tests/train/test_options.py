"""What --init words / hard / random / mean, --style, --norm-weight, --snr-gamma and --pool do, each checked on its own."""

from dataclasses import replace

import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from sd_softprompt.errors import ConfigError
from sd_softprompt.families import FAMILIES
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.train import TrainConfig, train
from sd_softprompt.train.checks import check_config
from sd_softprompt.train.data import OBJECT_TEMPLATES, STYLE_TEMPLATES
from sd_softprompt.train.losses import image_loss, min_snr_weights
from sd_softprompt.train.objectives import ImageObjective
from sd_softprompt.train.rows import initial_vectors, vocab_norm


def _config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**({"model": "tiny", "out": str(tmp_path / "s.safetensors"), "progress": False} | kw))


def test_init_words_are_those_words_embeddings(sd1, tmp_path):
    table = sd1.text_encoder.get_input_embeddings().weight.detach()
    ids = sd1.tokenizer("red house", add_special_tokens=False).input_ids
    assert len(ids) == 2
    cfg = _config(tmp_path, init="words", init_words="red house", vectors=2)
    got = initial_vectors(sd1, FAMILIES["sd1"], cfg, torch.Generator().manual_seed(0))["clip_l"]
    assert torch.equal(got, table[ids].float())  # two words, two vectors: the rows themselves
    cfg = _config(tmp_path, init="words", init_words="red house", vectors=1)
    got = initial_vectors(sd1, FAMILIES["sd1"], cfg, torch.Generator().manual_seed(0))["clip_l"]
    assert torch.allclose(got[0], table[ids].float().mean(dim=0))  # fewer vectors: averaged down, in order


def test_init_hard_takes_each_of_the_targets_tokens_once(sd1, tmp_path):
    """A target whose clauses repeat starts from its distinct tokens in order, not from N averages of the repeats;
    --init words stays as written (the user chose those words)."""
    table = sd1.text_encoder.get_input_embeddings().weight.detach().float()
    ids = sd1.tokenizer("red house, lake", add_special_tokens=False).input_ids
    assert len(ids) == 4 and len(set(ids)) == 4
    cfg = _config(tmp_path, init="hard", target="red house, lake, red house, lake, red house, lake", vectors=4)
    got = initial_vectors(sd1, FAMILIES["sd1"], cfg, torch.Generator().manual_seed(0))["clip_l"]
    assert torch.equal(got, table[ids])
    red, house = sd1.tokenizer("red house", add_special_tokens=False).input_ids
    words = _config(tmp_path, init="words", init_words="red house red house", vectors=4)
    hard = _config(tmp_path, init="hard", target="red house red house", vectors=4)
    got = {
        c.init: initial_vectors(sd1, FAMILIES["sd1"], c, torch.Generator().manual_seed(0))["clip_l"]
        for c in (words, hard)
    }
    assert torch.equal(got["words"], table[[red, house, red, house]])
    assert torch.equal(got["hard"], table[[red, red, house, house]])  # two distinct tokens, each repeated up


def test_init_mean_is_the_vocabularys_mean_embedding(sd1, tmp_path):
    table = sd1.text_encoder.get_input_embeddings().weight.detach().float()
    cfg = _config(tmp_path, init="mean", vectors=3, target="a lake")  # the target's words do not matter
    got = initial_vectors(sd1, FAMILIES["sd1"], cfg, torch.Generator().manual_seed(0))["clip_l"]
    assert got.shape == (3, table.shape[1]) and torch.allclose(got, table.mean(dim=0).expand(3, -1))
    check_config(_config(tmp_path, init="mean", target="a lake"))  # a choice of its own: no --init-words


def test_init_hard_without_target_and_random_start_at_the_vocabulary_norm(sdxl, tmp_path):
    for cfg in (_config(tmp_path, init="hard", target=None), _config(tmp_path, init="random", target="a lake")):
        got = initial_vectors(sdxl, FAMILIES["sdxl"], cfg, torch.Generator().manual_seed(0))
        assert set(got) == {"clip_l", "clip_g"}
        for key, vectors in got.items():
            norms = vectors.norm(dim=1)
            want = vocab_norm(sdxl, FAMILIES["sdxl"].encoder(key))
            assert vectors.shape[0] == 4 and torch.allclose(norms, torch.full_like(norms, want), rtol=1e-5)


@pytest.mark.parametrize("style", [False, True])
def test_style_switches_the_caption_templates(sd1, tmp_path, style):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(folder / "a.png")
    cfg = _config(tmp_path, mode="images", images=str(folder), resolution=64, style=style, flip=False)
    objective = ImageObjective(sd1, FAMILIES["sd1"], cfg, ["<s1>", "<s2>"], log=lambda m: None)
    templates = STYLE_TEMPLATES if style else OBJECT_TEMPLATES
    assert objective.templates == [t.format("<s1><s2>") for t in templates]
    assert objective.captions == [None] and objective.latents.shape[0] == 1  # no caption file, no flip


def test_norm_weight_pulls_vector_norms_towards_the_vocabulary(sd1, tmp_path):
    """Averaged-down hard-prompt embeddings start below the vocabulary's mean norm; the norm term closes the
    gap that the sequence loss alone leaves."""
    want = vocab_norm(sd1, FAMILIES["sd1"].encoder("clip_l"))
    gaps = {}
    for weight in (0.0, 10.0):
        cfg = _config(
            tmp_path / str(weight),
            target="image of serene landscape at sunrise with trees mountains and lake",
            vectors=2,
            steps=25,
            lr=2e-2,
            loss="sequence",
            norm_weight=weight,
            eval_samples=2,
            probe_size=64,
            checkpoint_every=0,
        )
        norms = torch.tensor(train(cfg, pipe=sd1).metrics["vector_norms"]["clip_l"])
        gaps[weight] = (norms - want).abs().mean().item() / want
    assert gaps[10.0] < 0.5 * gaps[0.0], gaps


def test_snr_gamma_weights_each_sample_by_min_snr(sd1, tmp_path):
    """--snr-gamma: each sample's MSE times min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), then the mean."""
    family = FAMILIES["sd1"]
    t = torch.tensor([0, 300, 999])
    alphas = sd1.scheduler.alphas_cumprod[t].float()
    snr = alphas / (1 - alphas)
    assert snr[0] > 5 > snr[2]  # a nearly clean sample and a nearly pure-noise one
    weights = min_snr_weights(sd1, family, t, 5.0)
    assert torch.allclose(weights, snr.clamp(max=5.0) / snr)
    assert weights[0] < 0.1 and weights[2] == 1.0

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, *family.latent_shape(sd1, 32, 32), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    cond = family.encode(sd1, ["a red house", "a lake", ""])
    with torch.no_grad():
        plain = image_loss(sd1, family, x0, noise, t, cond)
        assert torch.allclose(image_loss(sd1, family, x0, noise, t, cond, snr_gamma=1e12), plain)
        per_sample = torch.stack(
            [
                image_loss(
                    sd1,
                    family,
                    x0[i : i + 1],
                    noise[i : i + 1],
                    t[i : i + 1],
                    {k: v[i : i + 1] for k, v in cond.items()},
                )
                for i in range(3)
            ]
        )
        weighted = image_loss(sd1, family, x0, noise, t, cond, snr_gamma=5.0)
    assert torch.allclose(weighted, (per_sample * weights).mean(), rtol=1e-4)
    assert weighted < plain  # the clean sample's large error counts for little

    sd1.scheduler = DDPMScheduler.from_config(sd1.scheduler.config, prediction_type="v_prediction")
    assert torch.allclose(min_snr_weights(sd1, family, t, 5.0), snr.clamp(max=5.0) / (snr + 1))


def test_snr_gamma_reaches_training_and_is_refused_where_it_means_nothing(sd1, flux, tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(folder / "a.png")
    vectors = {}
    for gamma in (None, 1.0):
        cfg = _config(
            tmp_path / str(gamma), mode="images", images=str(folder), resolution=64, steps=3, vectors=1,
            snr_gamma=gamma, eval_samples=2, probe_size=64, checkpoint_every=0,
        )  # fmt: skip
        vectors[gamma] = SoftPrompt.load(train(cfg, pipe=sd1).soft_prompt).vectors["clip_l"]
    assert not torch.allclose(vectors[None], vectors[1.0])  # same seed and batches, other per-sample weights

    with pytest.raises(ConfigError, match="text mode"):
        check_config(_config(tmp_path, target="a lake", snr_gamma=5.0))
    with pytest.raises(ConfigError, match="--snr-gamma 0: must be a finite number above 0"):
        check_config(_config(tmp_path, mode="images", images=str(folder), snr_gamma=0.0))
    flow = _config(tmp_path, mode="images", images=str(folder), resolution=64, snr_gamma=5.0)
    with pytest.raises(ConfigError, match="flow-matching"):  # where training builds its objective, before the VAE
        ImageObjective(flux, FAMILIES["flux"], flow, ["<s1>"], log=lambda m: None)


def test_vectors_auto_picks_n_from_the_target_length(sd1, tmp_path):
    from sd_softprompt.cli.parser import build_parser
    from sd_softprompt.train.config_file import load_config
    from sd_softprompt.train.rows import AUTO_MAX, AUTO_MIN, AUTO_TOKENS

    # the flag, a config file and the dataclass all take it
    args = build_parser().parse_args(["train", "--model", "m", "--out", "o.safetensors", "--vectors", "auto"])
    assert args.vectors == "auto"
    (tmp_path / "c.toml").write_text('model = "m"\nout = "o.safetensors"\nvectors = "auto"\n')
    assert load_config(tmp_path / "c.toml").vectors == "auto"
    (tmp_path / "bad.toml").write_text('model = "m"\nout = "o.safetensors"\nvectors = "many"\n')
    with pytest.raises(ConfigError, match="bad.toml: vectors = 'many': 'many' is not a whole number or auto"):
        load_config(tmp_path / "bad.toml")
    # N = the target's tokens / AUTO_TOKENS, within [AUTO_MIN, AUTO_MAX]
    long = " ".join(["mountain lake"] * 40)  # 80 tokens on the tiny tokenizer
    for target, want in (("a cat", AUTO_MIN), (long, 16), (" ".join([long] * 3), AUTO_MAX)):
        assert len(sd1.tokenizer(target, add_special_tokens=False).input_ids) in (2, 80, 240)
        result = train(
            _config(tmp_path, target=target, vectors="auto", steps=1, eval_samples=1, probe_size=64), pipe=sd1
        )
        soft = SoftPrompt.load(result.soft_prompt)
        assert soft.num_vectors == want and result.metrics["config"]["vectors"] == want, (target, want)
        assert want == max(AUTO_MIN, min(AUTO_MAX, -(-len(target.split()) // AUTO_TOKENS)))
    # only text mode has a target to count; --tokens fixes N before the model is loaded
    (tmp_path / "pictures").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "pictures" / "a.png")
    for change, message in (
        (dict(mode="images", images=str(tmp_path / "pictures")), "--vectors auto picks N from the --target"),
        (dict(target="a cat", tokens=["<a>", "<b>"]), "with --tokens give --vectors as a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_config(_config(tmp_path, vectors="auto", **change))


@pytest.mark.parametrize("family", ["sd1", "sdxl", "sd3"])
def test_sampled_runs_without_a_negative_end_where_the_pipeline_does(family):
    """The runs --pool sampler records are the pipeline's own: its noise for the generator, its scheduler and
    guidance, and what it uses when no negative prompt is given (family.no_negative)."""
    from sd_softprompt.models import tiny
    from sd_softprompt.train.measure import sampled_runs

    pipe, fam = tiny.BUILDERS[family](), FAMILIES[family]
    prompts = ["a photo of a cat", "a red house"]
    with torch.no_grad():
        runs = sampled_runs(
            pipe, fam, fam.encode(pipe, prompts), fam.no_negative(pipe, 2), 5.0, 4, 64, torch.Generator().manual_seed(3)
        )
        want = pipe(
            prompts, num_inference_steps=4, guidance_scale=5.0, height=64, width=64, output_type="latent",
            generator=torch.Generator("cpu").manual_seed(3), **fam.call_kwargs(pipe, None),
        ).images  # fmt: skip
    assert runs.x_t.shape[0] == 8 and runs.positive.tolist() == [0, 1] * 4
    torch.testing.assert_close(runs.final, want, rtol=1e-4, atol=1e-4)


def test_pool_sampler_trains_on_the_hard_prompts_sampler_runs(sd1, tmp_path):
    """Per context, probe_pool // SAMPLER_STEPS runs of "<hard> <context>" at the scheduler's timesteps, and the
    hard prompt's predictions there as targets."""
    from sd_softprompt.train.objectives import SAMPLER_STEPS, TextObjective

    fam = FAMILIES["sd1"]
    hard = "image of serene landscape at sunrise with trees mountains and lake"
    cfg = _config(tmp_path, target=hard, pool="sampler", probe_pool=2 * SAMPLER_STEPS, probe_size=64)
    objective = TextObjective(sd1, fam, cfg, ["[v1]"], print)
    per_context = 2 * SAMPLER_STEPS
    assert objective.want.shape[0] == len(objective.contexts) * per_context
    assert objective.context_of.tolist() == [c for c in range(len(objective.contexts)) for _ in range(per_context)]
    sd1.scheduler.set_timesteps(SAMPLER_STEPS)
    assert objective.probe.t[:per_context].tolist() == sd1.scheduler.timesteps.repeat_interleave(2).tolist()
    row = per_context + 3  # the second context's run 1 at its second step
    with torch.no_grad():
        got = fam.predict(
            sd1, objective.probe.x_t[row : row + 1], objective.probe.t[row : row + 1], objective.targets[1]
        )
    torch.testing.assert_close(objective.want[row], got[0].float(), rtol=1e-4, atol=1e-5)
    # and the vectors learn from it: the loss on a fixed batch of the pool falls, the soft prompt beats the
    # target's first N words on the measure's own noise probe
    result = train(replace(cfg, vectors=3, steps=60, eval_samples=6, checkpoint_every=0), pipe=sd1)
    assert result.metrics["fixed_batch_loss"]["after"] < 0.5 * result.metrics["fixed_batch_loss"]["before"]
    assert result.metrics["distance"]["alone"]["ratio_to_first_n_words"] < 0.5


def test_pool_sampler_is_refused_where_it_means_nothing(tmp_path, flux):
    from sd_softprompt.train.objectives import TextObjective

    with pytest.raises(ConfigError, match="--pool sampler is for a prompt's denoiser loss"):
        check_config(_config(tmp_path, target="a lake", pool="sampler", role="negative"))
    with pytest.raises(ConfigError, match="--pool sampler is for a prompt's denoiser loss"):
        check_config(_config(tmp_path, target="a lake", pool="sampler", loss="sequence"))
    with pytest.raises(ConfigError, match="add --pool sampler or leave it out"):
        check_config(_config(tmp_path, target="a lake", pool_guidance=4.0))
    with pytest.raises(ConfigError, match="--pool-guidance -1: must be a finite number at least 0"):
        check_config(_config(tmp_path, target="a lake", pool="sampler", pool_guidance=-1.0))
    with pytest.raises(ConfigError, match="--pool must be noise or sampler"):
        check_config(_config(tmp_path, target="a lake", pool="latents"))
    cfg = _config(tmp_path, target="a lake", pool="sampler", probe_pool=10, probe_size=64)
    with pytest.raises(ConfigError, match="takes no classifier-free guidance"):  # guidance-distilled Flux
        TextObjective(flux, FAMILIES["flux"], cfg, ["<s1>"], log=lambda m: None)
    from sd_softprompt.models import tiny

    klein = tiny.build_flux2_klein()  # guides (not distilled); its scheduler shifts timesteps by picture size
    with pytest.raises(ConfigError, match="use_dynamic_shifting"):
        TextObjective(klein, FAMILIES["flux2_klein"], cfg, ["<s1>"], log=lambda m: None)
