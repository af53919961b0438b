"""Grounding: a camera frame and an instruction ("pick the green cube") in, the target's mask out.

The node is model-agnostic: a `Grounder` turns (frame, instruction) into a `Grounding` — a mask and a
score, or an empty mask with the reason the target is absent. Grounders shipped here:
- `oracle`: the simulator's segmentation, by the segment the instruction's colour names (`cube_green`):
  the ceiling a grounder is measured against;
- `color`: a non-learned baseline, the named colour's hue band on the RGB image (HSV thresholds), its
  largest connected blob;
- `uground`: the trained UGround (`nodes.uground.node.UGroundGrounder`; its model directory and settings
  through the node's `options`), imported only when chosen, since that module imports this one.
A learned grounder (an image model) subclasses `ImageGrounder` and registers in `GROUNDERS`.

The instruction comes from a param (fixed for the run) or, per episode, from the `instruction` input;
the robot node publishes the task's one at each episode's start. Downstream, the point-cloud node flags the mask's
points as the target, and the planner reports an absent target instead of planning.
"""
from __future__ import annotations

import abc
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.messages import Frame, Instruction, Mask
from pipeline.node import Node

ORACLE, COLOR, UGROUND = "oracle", "color", "uground"
#: colour word -> (hue centre, half-width) in degrees; bands do not overlap. The table's wood is ~20°
#: ("orange"), so orange is the one colour this baseline cannot find on that table.
COLOUR_HUES: dict[str, tuple[float, float]] = {
    "red": (0.0, 15.0), "orange": (28.0, 10.0), "yellow": (55.0, 12.0), "green": (120.0, 30.0),
    "cyan": (185.0, 15.0), "blue": (225.0, 20.0), "purple": (280.0, 18.0), "magenta": (320.0, 15.0),
}
MIN_SATURATION, MIN_VALUE = 0.4, 0.15  # greys (the robot, the floor) and shadows are no colour
DEFAULT_TARGET_TEMPLATE = "cube_{colour}"  # the segment the oracle looks for (sim/grounded_pick.py's names)
DEFAULT_MIN_PIXELS = 20  # fewer pixels than this: the target is absent (anti-aliased edges make stray hues)
_WORD = re.compile(r"[a-z]+")


# ---- grounders ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grounding:
    """A grounder's answer: the target's pixels and a confidence, or an empty mask and why."""

    mask: np.ndarray  # (H, W) bool
    score: float = 0.0
    reason: str = ""

    @property
    def found(self) -> bool:
        return not self.reason

    @classmethod
    def absent(cls, shape: tuple[int, ...], reason: str) -> "Grounding":
        return cls(np.zeros(shape[:2], bool), 0.0, reason)


def named_colour(instruction: str) -> str | None:
    """The first colour word of `instruction` that the grounders know, None if it names none."""
    return next((word for word in _WORD.findall(instruction.lower()) if word in COLOUR_HUES), None)


class Grounder(abc.ABC):
    """Finds the object an instruction names in a frame."""

    def __init__(self, min_pixels: int = DEFAULT_MIN_PIXELS, **options: Any) -> None:
        if options:
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(options)}")
        self.min_pixels = min_pixels

    @abc.abstractmethod
    def ground(self, frame: Frame, instruction: str) -> Grounding:
        """The target's mask in `frame`, or why there is none."""


class ImageGrounder(Grounder):
    """A grounder that needs only the RGB image (a learned model, a colour threshold)."""

    def ground(self, frame: Frame, instruction: str) -> Grounding:
        return self.ground_image(np.asarray(frame.image), instruction)

    @abc.abstractmethod
    def ground_image(self, rgb: np.ndarray, instruction: str) -> Grounding:
        """The target's mask in an (H, W, 3) uint8 image, or why there is none."""


class OracleGrounder(Grounder):
    """The simulator's segmentation: the pixels of the segment the instruction's colour names."""

    def __init__(self, target_template: str = DEFAULT_TARGET_TEMPLATE, **options: Any) -> None:
        super().__init__(**options)
        self.target_template = target_template

    def ground(self, frame: Frame, instruction: str) -> Grounding:
        shape = np.shape(frame.image)
        colour = named_colour(instruction)
        if colour is None:
            return Grounding.absent(shape, f"unknown: {instruction!r} names no colour")
        if frame.segmentation is None:
            raise ValueError(f"the oracle grounder needs the simulator's segmentation; frame from {frame.stream!r} has none")
        name = self.target_template.format(colour=colour)
        ids = [i for i, segment in frame.segment_names.items() if segment == name]
        mask = np.isin(frame.segmentation, ids)
        if mask.sum() < self.min_pixels:
            return Grounding.absent(shape, f"absent: {int(mask.sum())} pixels of {name} in view")
        return Grounding(mask, 1.0)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of an (..., 3) uint8 image."""
    x = np.asarray(rgb, np.float32) / 255.0
    high, low = x.max(axis=-1), x.min(axis=-1)
    spread = high - low
    safe = np.where(spread > 0, spread, 1.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = np.select([spread == 0, high == r, high == g], [0.0, ((g - b) / safe) % 6.0, (b - r) / safe + 2.0],
                    (r - g) / safe + 4.0)
    return hue * 60.0, np.where(high > 0, spread / np.where(high > 0, high, 1.0), 0.0), high


class ColorGrounder(ImageGrounder):
    """The named colour's hue band (saturated, not dark pixels), its largest connected blob."""

    def ground_image(self, rgb: np.ndarray, instruction: str) -> Grounding:
        from scipy import ndimage

        colour = named_colour(instruction)
        if colour is None:
            return Grounding.absent(rgb.shape, f"unknown: {instruction!r} names no colour")
        centre, half_width = COLOUR_HUES[colour]
        hue, saturation, value = rgb_to_hsv(rgb)
        distance = np.abs((hue - centre + 180.0) % 360.0 - 180.0)
        band = (distance <= half_width) & (saturation >= MIN_SATURATION) & (value >= MIN_VALUE)
        blobs, count = ndimage.label(band)
        if count == 0:
            return Grounding.absent(rgb.shape, f"absent: no {colour} pixels")
        sizes = np.bincount(blobs.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        if sizes[biggest - 1] < self.min_pixels:
            return Grounding.absent(rgb.shape, f"absent: the largest {colour} blob has {int(sizes[biggest - 1])} pixels")
        mask = blobs == biggest
        return Grounding(mask, float(np.mean(1.0 - distance[mask] / half_width)))


def uground_grounder(**options: Any) -> Grounder:
    """UGround, imported here rather than at the top: `nodes.uground.node` imports this module, and torch and
    transformers load only for the node that asks for it."""
    from nodes.uground.node import UGroundGrounder

    return UGroundGrounder(**options)


GROUNDERS: dict[str, Callable[..., Grounder]] = {ORACLE: OracleGrounder, COLOR: ColorGrounder,
                                                 UGROUND: uground_grounder}


def make_grounder(name: str, options: dict[str, Any] | None = None) -> Grounder:
    """The grounder registered as `name`, built with `options`; an unknown name lists the known ones."""
    if name not in GROUNDERS:
        raise ValueError(f"unknown grounder {name!r}; known: {', '.join(sorted(GROUNDERS))}")
    return GROUNDERS[name](**(options or {}))


# ---- nodes ----------------------------------------------------------------------------------------


class GroundingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grounder: str = Field(ORACLE, description=f"one of {sorted(GROUNDERS)}")
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per grounder name, what its constructor takes (e.g. {uground: {model: "
                                          "DIR, crop: [x0, y0, x1, y1]}}); only the chosen grounder's are used, so "
                                          "a graph can carry every grounder's and `--set grounder=` switches")
    instruction: str | None = Field(None, description="a fixed instruction; None: the `instruction` input's, per episode")

    @field_validator("options")
    @classmethod
    def _known_grounders(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(options) - set(GROUNDERS))
        if unknown:
            raise ValueError(f"options for unknown grounders {unknown}; known: {', '.join(sorted(GROUNDERS))}")
        return options


class TargetGrounding(Node):
    """Frame (+ instruction) in → the target's mask out, one per frame; an absent target says why."""

    Params = GroundingParams
    inputs: ClassVar = {"frame": Frame, "instruction": Instruction}
    outputs: ClassVar = {"mask": Mask}

    def setup(self) -> None:
        self.grounder = self.build_grounder()
        self.instructions: dict[int, str] = {}  # episode -> instruction
        self.pending: Frame | None = None  # the newest frame still waiting for its episode's instruction
        self.warned_episode: int | None = None  # the episode whose absent target was last logged as a warning

    def build_grounder(self) -> Grounder:
        """The grounder the params choose (a subclass with its own params builds its own)."""
        return make_grounder(self.params.grounder, self.params.options.get(self.params.grounder))

    def on_instruction(self, msg: Instruction) -> None:
        self.instructions = {e: text for e, text in self.instructions.items() if e >= msg.episode}
        self.instructions[msg.episode] = msg.text
        pending, self.pending = self.pending, None
        if pending is not None:
            self.on_frame(pending)

    def on_frame(self, msg: Frame) -> None:
        instruction = self.params.instruction or self.instructions.get(msg.episode)
        if instruction is None:
            self.pending = msg
            self.count("frames_waiting_for_instruction")
            return
        grounding = self.grounder.ground(msg, instruction)
        if not grounding.found:
            self.count("absent")
            # once per episode at warning level: a learned grounder can lose a lifted, half-hidden target on
            # every later frame, and the count says how often
            level = logging.DEBUG if msg.episode == self.warned_episode else logging.WARNING
            self.warned_episode = msg.episode
            self.log.log(level, "episode %d step %d: %r: %s", msg.episode, msg.step, instruction, grounding.reason)
        masks = grounding.mask[None] if grounding.found else np.zeros((0, *grounding.mask.shape), bool)
        self.emit("mask", Mask(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, masks=masks,
                                     scores=np.array([grounding.score] if grounding.found else [], np.float32),
                                     labels=[instruction] if grounding.found else [], query=instruction,
                                     reason=grounding.reason, episode=msg.episode, step=msg.step))
