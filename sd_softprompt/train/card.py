"""The model card beside a trained soft prompt (README.md, the Hugging Face Hub's format), and `--push-to-hub`.

The card is YAML metadata (base_model, library_name, pipeline_tag, tags, the trigger tokens as instance_prompt
and a widget with the last validation grid) then Markdown: what was trained, how to load it in diffusers,
ComfyUI, A1111/Forge and InvokeAI, the report's figures and the last validation grid. huggingface_hub (installed
with diffusers) writes the metadata (`ModelCardData`). A README.md already beside the output that is not a card
of ours is never overwritten: the card then goes to <out stem>.README.md.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError, WriteError, shorten
from ..families import Family
from .config import TrainConfig

TAGS = ["text-to-image", "diffusers", "textual-inversion", "soft-prompt", "sd-softprompt"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(model: str) -> str | None:
    """`model` when it names a Hub repository (owner/name, not a local folder), else None."""
    return model if _HUB_ID.match(model) and not Path(model).exists() else None


def card_path(cfg: TrainConfig) -> Path:
    """README.md beside --out, unless a README.md that is not one of our cards is there already."""
    readme = cfg.out_path.with_name("README.md")
    if readme.exists() and not _ours(readme):
        return cfg.out_path.with_name(cfg.out_path.stem + ".README.md")
    return readme


def _ours(path: Path) -> bool:
    try:
        head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    except OSError:
        return False
    return head.startswith("---") and "\n- sd-softprompt\n" in head.split("\n---", 2)[0] + "\n"


def example_prompt(cfg: TrainConfig, soft_text: str) -> str:
    """A prompt that uses the tokens: the first validation prompt, else what the validation grids draw."""
    if cfg.validation_prompts:
        return cfg.validation_prompts[0].replace("{}", soft_text)
    return f"{soft_text} mountain view" if cfg.mode == "text" else f"a photo of {soft_text}"


def model_card(
    cfg: TrainConfig, family: Family, tokens: list[str], metrics: dict, grid: str | None, files: dict[str, str]
) -> str:
    """The card's text. `grid`: the last validation grid's path relative to the card (or None); `files`: what
    lies beside it, by role ("soft prompt", "report", "config")."""
    from huggingface_hub import ModelCard, ModelCardData

    soft_text = "".join(tokens)
    name = Path(files["soft prompt"]).stem
    negative = cfg.role == "negative"
    example = example_prompt(cfg, soft_text)
    widget = {"text": "portrait of a woman" if negative else example}
    if negative:
        widget["parameters"] = {"negative_prompt": soft_text}
    if grid:
        widget["output"] = {"url": grid}
    data = ModelCardData(
        base_model=hub_id(cfg.model),
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=[*TAGS, family.name],
        instance_prompt=soft_text,
        widget=[widget],
    )
    body = [
        f"# {name}: a soft prompt for {family.title}",
        "",
        _what(cfg, family, tokens),
        "",
        f"Base model: `{cfg.model}`. Trigger tokens: `{soft_text}`"
        + (" (a negative: write them in the negative prompt)." if negative else f", e.g. `{example}`."),
        "",
        "Files: " + ", ".join(f"`{path}` ({role})" for role, path in files.items()) + ".",
        "",
        *_how_to_load(cfg, family, name, soft_text, files["soft prompt"]),
        "## Figures",
        "",
        f"From `{files['report']}` (the command that repeats the run: `sd-softprompt train --config "
        f"{files.get('config', '...')}`).",
        "",
        "| figure | value |",
        "|---|---|",
        *(f"| {figure} | {value} |" for figure, value in _figures(metrics)),
        "",
    ]
    if grid:
        body += ["## Last validation grid", "", f"![the last validation grid]({grid})", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def _what(cfg: TrainConfig, family: Family, tokens: list[str]) -> str:
    n = f"{len(tokens)} learned vector{'s' if len(tokens) != 1 else ''}"
    if cfg.mode == "images":
        return f"{n}, trained by textual inversion on a folder of pictures with sd-softprompt ({cfg.steps} steps)."
    kind = "negative prompt" if cfg.role == "negative" else "prompt"
    return f'{n} distilled from the {kind} "{shorten(cfg.target or "", 300)}" with sd-softprompt ({cfg.steps} steps).'


def _how_to_load(cfg: TrainConfig, family: Family, name: str, soft_text: str, soft_file: str) -> list[str]:
    use = f'negative_prompt="{soft_text}"' if cfg.role == "negative" else f'"{soft_text} mountain view"'
    call = f"pipe(prompt='portrait of a woman', {use})" if cfg.role == "negative" else f"pipe({use})"
    lines = [
        "## How to load it",
        "",
        "**diffusers** (every text encoder at once, the pooled vectors right):",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "from sd_softprompt import load_soft_prompt",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{hub_id(cfg.model) or "<the base model>"}")',
        f'load_soft_prompt(pipe, "{soft_file}")',
        f"image = {call}.images[0]",
        "```",
        "",
        f"**ComfyUI**: copy `{soft_file}` into `models/embeddings/` and write `embedding:{name}` in the prompt.",
        "",
    ]
    if "a1111" in (family.formats or ("a1111",)):
        convert = f"`sd-softprompt convert {soft_file} --to a1111 --out a1111/{name}`"
        lines += [
            f"**A1111 / Forge**: {convert} (it adds the suffix the layout needs), copy the file into `embeddings/` "
            f"and write `{name}` in the prompt.",
            "",
            f"**InvokeAI**: install that same a1111 file as a textual inversion and write `<{name}>` in the prompt.",
            "",
        ]
    else:
        lines += [f"**A1111 / Forge, InvokeAI**: none of their layouts holds a {family.title} soft prompt.", ""]
    lines += [
        "Other layouts (plain diffusers' `load_textual_inversion`, kohya, OneTrainer): `sd-softprompt convert "
        f"{soft_file} --to diffusers|kohya|onetrainer --out ...`.",
        "",
    ]
    return lines


def _figures(metrics: dict) -> list[tuple[str, str]]:
    rows = [("steps", str(metrics.get("steps")))]
    if metrics.get("losses"):
        rows.append(("loss, first step / last step", f"{metrics['loss_first']:.4g} / {metrics['loss_last']:.4g}"))
    fixed = metrics.get("fixed_batch_loss") or {}
    if "before" in fixed and "after" in fixed:
        rows.append(("the same batch's loss, before / after", f"{fixed['before']:.4g} / {fixed['after']:.4g}"))
    for where, values in (metrics.get("distance") or {}).items():
        for key, value in values.items() if isinstance(values, dict) else ():
            if key.startswith("ratio") and isinstance(value, (int, float)):
                rows.append(
                    (f"D(soft) / D({key.removeprefix('ratio_to_').replace('_', ' ')}), {where}", f"{value:.4g}")
                )
    if "guided" in metrics:
        rows.append(("guided D(soft negative) / D(empty negative)", f"{metrics['guided']['soft_ratio_to_empty']:.4g}"))
    for name, row in (metrics.get("fidelity") or {}).items():
        rows.append((f"F({name}), " + " / ".join(row), " / ".join(f"{v:.3g}" for v in row.values())))
    if metrics.get("steps_per_s"):
        rows.append(("steps per second", f"{metrics['steps_per_s']:.3g}"))
    return rows


# ------------------------------------------------------------------------------------------- the Hub
def check_push(repo: str | None) -> None:
    """Refuse before training what would make the upload fail at its end: a bad repo id, offline mode, no login."""
    if repo is None:
        return
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
        if repo.count("/") > 1:
            raise HFValidationError("at most one /")
    except HFValidationError:
        raise ConfigError(f"--push-to-hub {shorten(repo, 60)!r}: not a Hub repo id; write owner/name") from None
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "--push-to-hub: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or leave the flag out"
        )
    if huggingface_hub.get_token() is None:
        raise ConfigError("--push-to-hub: not logged in to the Hugging Face Hub; run `hf auth login` or set HF_TOKEN")


def push(repo: str, files: dict[str, Path], message: str) -> str:
    """Create `repo` if needed and upload `files` (path in the repo -> local file) in one commit; its URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        info = api.create_commit(repo, operations=operations, commit_message=message)
    except Exception as error:  # the network's and the Hub's many errors: the files are kept, say how to retry
        raise WriteError(
            f"--push-to-hub {repo}: the upload failed ({shorten(str(error) or type(error).__name__, 120)}); "
            f"the files are written locally: upload them with `hf upload {repo} <file>`"
        ) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo}"
