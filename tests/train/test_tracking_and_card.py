"""What a run leaves for others to read: tensorboard event files (--log-with), a model card in the Hub's format
(README.md beside the soft prompt), and the upload (--push-to-hub, with the Hub's two calls replaced: nothing
leaves the machine). One short run on the tiny SD1 pipeline serves the tests of this file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from sd_softprompt.errors import ConfigError, WriteError
from sd_softprompt.families import FAMILIES
from sd_softprompt.files.softprompt import SoftPrompt
from sd_softprompt.models import tiny
from sd_softprompt.train import TrainConfig, train
from sd_softprompt.train.card import card_path, model_card

pytest.importorskip("tensorboard")  # the test extra installs it
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS = 12


def _config(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        model="owner/tiny-sd1",
        out=str(tmp_path / "sun.safetensors"),
        target="image of serene landscape at sunrise",
        vectors=2,
        steps=STEPS,
        loss="sequence",
        progress=False,
        probe_size=64,
        eval_samples=2,
        checkpoint_every=0,
    )
    return TrainConfig(**(base | kw))


class _Hub:
    """HfApi's create_repo and create_commit, recording what they were asked (the upload cannot run offline)."""

    def __init__(self):
        self.repos, self.commits = [], []

    def install(self, monkeypatch):
        import huggingface_hub
        from huggingface_hub import HfApi, constants

        hub = self
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")

        def create_repo(self, repo_id, **kw):
            hub.repos.append((repo_id, kw))

        def create_commit(self, repo_id, operations, **kw):
            files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
            hub.commits.append((repo_id, files, kw))
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run with tensorboard logging, validation grids every 6 steps, a card and a (recorded) push."""
    tmp_path = tmp_path_factory.mktemp("run")
    hub = _Hub()
    with pytest.MonkeyPatch.context() as monkeypatch:
        hub.install(monkeypatch)
        cfg = _config(
            tmp_path, validate_every=6, validation_seeds=[0], log_with="tensorboard", push_to_hub="me/sun-prompt"
        )
        result = train(cfg, pipe=tiny.build_sd(1))
    return result, hub, tmp_path


def _events(folder: Path) -> EventAccumulator:
    files = sorted(folder.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_size)
    accumulator = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_the_event_files_hold_the_loss_curve_and_the_rest(run):
    result, _, tmp_path = run
    events = _events(tmp_path / "sun.logs")
    curve = events.Scalars("loss")
    assert [e.step for e in curve] == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor([e.value for e in curve]), torch.tensor(result.metrics["losses"]))
    tags = set(events.Tags()["scalars"])
    assert {"lr", "norm/clip_l", "fixed_batch_loss/after", "distance/alone/ratio_to_first_n_words"} <= tags
    ratio = events.Scalars("distance/alone/ratio_to_first_n_words")[-1]
    assert ratio.step == STEPS
    assert ratio.value == pytest.approx(result.metrics["distance"]["alone"]["ratio_to_first_n_words"], rel=1e-6)
    # the learning rate of the next step, where the loop read its losses back (a validation at 6, every 10,
    # the last), on the 20-step warm-up
    lr = events.Scalars("lr")
    assert [e.step for e in lr] == [6, 10, 12]
    assert [e.value for e in lr] == pytest.approx([5e-3 * (s + 1) / 20 for s in (6, 10, 12)], rel=1e-6)
    grids = events.Images("validation")
    assert [g.step for g in grids] == [6, 12] and grids[0].width > 64


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0].removeprefix("---\n"))


def test_the_model_card_names_the_tokens_the_base_model_and_how_to_load_it(run):
    result, _, tmp_path = run
    assert result.card == tmp_path / "README.md"
    text = result.card.read_text(encoding="utf-8")
    meta = _front_matter(text)
    assert meta["base_model"] == "owner/tiny-sd1" and meta["library_name"] == "diffusers"
    assert {"textual-inversion", "soft-prompt", "sd1"} <= set(meta["tags"])
    assert meta["instance_prompt"] == "[v1][v2]"
    grid = meta["widget"][0]["output"]["url"]
    assert grid == "sun.validation/step_000012.png" and (tmp_path / grid).is_file()
    assert meta["widget"][0]["text"] == "[v1][v2] mountain view"
    for client in ("diffusers", "ComfyUI", "A1111 / Forge", "InvokeAI", "embedding:sun", "--to a1111"):
        assert client in text, client
    assert (
        f"| D(soft) / D(first n words), alone | {result.metrics['distance']['alone']['ratio_to_first_n_words']:.4g} |"
        in text
    )
    assert f"![the last validation grid]({grid})" in text
    from huggingface_hub import ModelCard

    assert ModelCard.load(result.card).data.base_model == "owner/tiny-sd1"  # the Hub's own reader agrees


def test_push_uploads_the_files_in_one_commit(run):
    result, hub, tmp_path = run
    assert hub.repos == [("me/sun-prompt", {"repo_type": "model", "exist_ok": True})]
    [(repo, files, kw)] = hub.commits
    assert repo == "me/sun-prompt" and result.hub_url == "https://huggingface.co/me/sun-prompt/commit/0"
    assert set(files) == {
        "sun.safetensors",
        "sun.report.json",
        "sun.config.toml",
        "README.md",
        "sun.validation/step_000012.png",
    }
    assert files["README.md"] == result.card.read_bytes()
    assert files["sun.safetensors"] == (tmp_path / "sun.safetensors").read_bytes()
    assert "12 steps" in kw["commit_message"]


def test_push_is_refused_before_training_when_it_could_not_work(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    for repo, message in (
        ("a/b/c", "not a Hub repo id"),
        ("bad repo!", "not a Hub repo id"),
        ("me/x", "hf auth login"),
    ):
        with pytest.raises(ConfigError, match=message):
            train(_config(tmp_path, push_to_hub=repo))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        train(_config(tmp_path, push_to_hub="me/x"))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_upload_keeps_the_files_and_says_so(tmp_path, monkeypatch, sd1):
    _Hub().install(monkeypatch)
    from huggingface_hub import HfApi

    def refuse(self, repo_id, **kw):
        raise OSError("connection refused")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(WriteError, match="upload failed .connection refused.; the files are written locally"):
        train(_config(tmp_path, steps=2, push_to_hub="me/x"), pipe=sd1)
    assert SoftPrompt.load(tmp_path / "sun.safetensors").num_vectors == 2


def test_a_readme_that_is_not_ours_is_kept(tmp_path, sd1):
    (tmp_path / "README.md").write_text("# my project\n", encoding="utf-8")
    result = train(_config(tmp_path, steps=2, model=str(tmp_path)), pipe=sd1)
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "# my project\n"
    assert result.card == tmp_path / "sun.README.md"
    meta = _front_matter(result.card.read_text(encoding="utf-8"))
    assert "base_model" not in meta  # a local folder is no Hub id; the Hub would refuse the card
    assert card_path(_config(tmp_path)) == tmp_path / "sun.README.md"
    (tmp_path / "README.md").unlink()
    result.card.rename(tmp_path / "README.md")  # a card of ours is replaced by the next run's
    assert card_path(_config(tmp_path)) == tmp_path / "README.md"
    assert train(_config(tmp_path, steps=2, model_card=False), pipe=sd1).card is None


def test_a_card_for_a_family_without_a1111_files_says_so(tmp_path):
    cfg = _config(tmp_path, mode="images", images="pics", role="positive")
    metrics = {"steps": 3, "losses": [0.5, 0.4], "loss_first": 0.5, "loss_last": 0.4}
    names = {"soft prompt": "sun.safetensors", "report": "sun.report.json", "config": "sun.config.toml"}
    text = model_card(cfg, FAMILIES["flux"], ["[v1]"], metrics, None, names)
    assert "none of their layouts holds a Flux" in text and "--to a1111" not in text
    meta = _front_matter(text)
    assert meta["widget"] == [{"text": "a photo of [v1]"}] and "flux" in meta["tags"]


def test_log_with_a_missing_package_or_a_lone_log_dir_is_one_line(tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match="the wandb package is not installed; pip install wandb"):
        train(_config(tmp_path, log_with="wandb"))
    with pytest.raises(ConfigError, match="--log-dir is where --log-with writes"):
        train(_config(tmp_path, log_dir=str(tmp_path / "logs")))
    assert list(tmp_path.iterdir()) == []
