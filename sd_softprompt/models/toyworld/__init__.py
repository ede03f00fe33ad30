"""The toy world: procedural landscapes, their captions, a small pipeline trained on them, and a judge."""

from .world import ATTRIBUTES, EXTRAS, FLAGS, MISSION, OBJECTS, TIMES, UNNAMED, Scene, caption, render

__all__ = ["ATTRIBUTES", "EXTRAS", "FLAGS", "MISSION", "OBJECTS", "TIMES", "UNNAMED", "Scene", "caption", "render"]
