"""The toy world: procedural landscapes, their captions, a small pipeline trained on them, and a judge.

`TOYWORLD` is its entry in the built-in models (models/builtin.py): the folder `--model toyworld` names, how
a loaded pipeline is recognised, its own positives for negative prompts, and its picture measure (F).
"""

from ..base import BuiltinModel, Positives
from .model import MODEL_DIR, NAME, is_toyworld
from .world import (
    ATTRIBUTES,
    EXTRAS,
    FLAGS,
    MISSION,
    NEGATIVE_EVAL_POSITIVES,
    NEGATIVE_TRAIN_POSITIVES,
    OBJECTS,
    TIMES,
    UNNAMED,
    Scene,
    caption,
    render,
)

__all__ = [
    "ATTRIBUTES",
    "EXTRAS",
    "FLAGS",
    "MISSION",
    "OBJECTS",
    "TIMES",
    "TOYWORLD",
    "UNNAMED",
    "Scene",
    "caption",
    "render",
]


# The picture measure draws with the pipeline (render/), so it is imported when first used.
def _fidelity(pipe, soft_text: str, target: str, n: int, pictures: dict) -> dict:
    from . import fidelity

    return fidelity.fidelity_table(pipe, soft_text, target, n, pictures=pictures)


def _negative_fidelity(pipe, soft_text: str, target: str, n: int, positives: list[str]) -> dict:
    from . import fidelity

    return fidelity.negative_table(pipe, soft_text, target, n, positives=positives)


def _format_negative(table: dict) -> str:
    from . import fidelity

    return fidelity.format_negative_table(table)


TOYWORLD = BuiltinModel(
    name=NAME,
    description="a real StableDiffusionPipeline trained on 64x64 procedural landscapes (7 attributes)",
    folder=MODEL_DIR,
    recognises=is_toyworld,
    how_to_get="reinstall sd-softprompt or train it with scripts/train_toyworld.py",
    positives=Positives(list(NEGATIVE_TRAIN_POSITIVES), list(NEGATIVE_EVAL_POSITIVES)),
    fidelity=_fidelity,
    negative_fidelity=_negative_fidelity,
    format_negative_fidelity=_format_negative,
)
