"""Test doubles for the video QA nodes: frames that tell their own index, and VLMs that answer by a known
rule or from a script (and score answers by them), recording what they were asked."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nodes.video_decode import VideoDecodeError
from nodes.vlm import VlmAdapter
from nodes.vlm.parsing import parse_choice

IMAGE_SIDE = 4
BYTE = 256


def index_image(index: int) -> np.ndarray:
    """A tiny RGB image whose first pixel encodes `index` (high byte, low byte)."""
    image = np.zeros((IMAGE_SIDE, IMAGE_SIDE, 3), np.uint8)
    image[0, 0, :2] = divmod(index, BYTE)
    return image


def image_index(image: np.ndarray) -> int:
    return int(image[0, 0, 0]) * BYTE + int(image[0, 0, 1])


class IndexedFrames:
    """A FrameSource of `n` frames at `fps` whose images carry their index; `broken` frames fail to decode."""

    def __init__(self, n: int, fps: float = 1.0, broken: tuple[int, ...] = ()):
        self.times_s = np.arange(n) / fps
        self.broken = set(broken)
        self.fetched: list[int] = []

    def image(self, index: int) -> np.ndarray:
        self.fetched.append(index)
        if index in self.broken:
            raise VideoDecodeError("fake.mp4", index, float(self.times_s[index]), "corrupt packet")
        return index_image(index)


class RuleVlm(VlmAdapter):
    """Answers each call with rule(frame indices of its images, prompt); an Exception returned by the
    rule is raised instead. Records every call's frame indices and prompt."""

    def __init__(self, rule: Callable[[list[int], str], str | Exception], *, decode: Callable[[np.ndarray], int] = image_index):
        self.rule, self.decode = rule, decode
        self.calls: list[list[int]] = []
        self.prompts: list[str] = []

    def generate(self, images, prompt, *, max_new_tokens, n_samples=1, temperature=0.0, seed=0):
        frames = [self.decode(image) for image in images]
        self.calls.append(frames)
        self.prompts.append(prompt)
        answer = self.rule(frames, prompt)
        if isinstance(answer, Exception):
            raise answer
        return [answer] * n_samples

    def score_answers(self, images, prompt, answers):
        """The rule's answer read as a choice scores 0, every other answer −10 (all −10 if none is chosen)."""
        (text,) = self.generate(images, prompt, max_new_tokens=1)
        choice = parse_choice(text, len(answers), answers)
        return np.array([0.0 if i == choice else -10.0 for i in range(len(answers))])


class ScriptedVlm(VlmAdapter):
    """Returns the scripted lists of samples in turn (an Exception in the script is raised instead)."""

    def __init__(self, *script: list[str] | Exception):
        self.script = list(script)
        self.calls: list[dict] = []

    def generate(self, images, prompt, *, max_new_tokens, n_samples=1, temperature=0.0, seed=0):
        self.calls.append({"images": images, "prompt": prompt, "n_samples": n_samples, "temperature": temperature})
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer[:n_samples]


class ScoringVlm(ScriptedVlm):
    """A ScriptedVlm that also scores answers: each call, generating or scoring, takes the next script
    entry (samples to generate, or one log-likelihood per answer)."""

    def score_answers(self, images, prompt, answers):
        self.calls.append({"images": images, "prompt": prompt, "answers": list(answers)})
        scores = self.script.pop(0)
        if isinstance(scores, Exception):
            raise scores
        return np.array(scores, np.float64)


def frame_scores(rule: dict[int, int]) -> Callable[[list[int], str], str]:
    """A RuleVlm rule for A.I.R.'s analysis: frame → "Score: s" from `rule` (1 for any other frame)."""
    def answer(frames: list[int], prompt: str) -> str:
        score = rule.get(frames[0], 1)
        return f"Score: {score}\nReasoning: frame {frames[0]} rates {score}."
    return answer
