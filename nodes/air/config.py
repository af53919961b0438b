"""Every A.I.R. hyper-parameter in one place, with the paper's defaults (reference/papers.md §1).

The paper counts time in frames of a 24-fps stored video ("d_min = 2·24 frames"); here every length is
in seconds, so the same config works for any frame rate. A value the paper leaves open or states two
ways is marked AMBIGUOUS with the value chosen and why.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydantic import ConfigDict

PAPER_STORAGE_FPS = 24.0  # the frame rate the paper's frame counts refer to


@dataclass(frozen=True)
class AirConfig:
    """A.I.R. hyper-parameters.

    Adaptive budget (A.2.1): B = clamp(floor(v_max · duration_s / short_video_s), v_min, v_max).
      AMBIGUOUS: the equation is an image; the third-party reconstruction (linear in length, full
      budget from 5 min = 300 s of 1-fps frames on) is used, as papers.md suggests.

    GMM threshold (Eq. 1): T = max(μ1, μ2) − gamma · max(σ1, σ2) over a 2-component 1-D GMM of the
      scores; gmm_reg is added to each variance (as scikit-learn's reg_covar) so a component that
      collapses onto identical scores keeps a finite density.

    Events: runs of scanned frames with S ≥ T; merged when the gap is ≤ d_min_s; pruned when their
      length is ≤ l_min_s. An event covers its frames' times plus one scan period, so a single
      frame at 1 fps lasts 1 s.
      AMBIGUOUS l_min: the text says 3 s (3·24 frames), Tab. 14 says "l_min = 20" without a unit.
      3 s is chosen: the text gives the unit the same way as for d_min (2·24 frames), which nobody
      disputes, while 20 frames at 24 fps (0.83 s) is shorter than one 1-fps frame and would never
      prune anything. The paper reports ±1.1 % robustness to l_min. NOT IN THE PAPER: when every
      event is that short, the longest one is kept (ties: the earlier), so a short video whose
      relevant moments are all brief still has somewhere to start.

    Initial sampling (A.2.2): K = initial_factor · max(B, C) frames, shared over events by duration.

    Iterative loop: at most i_max iterations of `candidates` (C) frames each, so the VLM analyses at
      most C · i_max frames. Interval potential
      P = mean(S) · (1 + Σ|ΔS| / len_frames) · (1 + c_len · log10(len_frames)).
      AMBIGUOUS c_len: not given. 0.5 is chosen: with log10 the length factor then runs from 1.5
      (10 frames) to 3 (10^4 frames, about 7 min at 24 fps), the same order as the relevance and
      complexity factors, so length breaks near-ties in relevance without overriding it; it is also
      the value of the one public re-implementation (which uses ln, not log10).

    VLM analysis: each candidate scored 1–5; score > theta is Positive, = theta Neutral, < theta
      Negative. Fill-up to floor(B / i_max) validated frames per iteration: Neutral, then Negative,
      then frames without a valid score, each by CLIP score.
      NOT IN THE PAPER: the quota is at least 1 (only a budget below i_max makes floor(B / i_max)
      zero), so every iteration that analyses frames validates at least one.

    Localized density sampling: around each newly validated frame, new frames at offsets
      ±α, ±αβ, ±αβ², … with α = max(alpha_fraction · |I|, alpha_min_s), |I| the duration of the
      interval the frame was a candidate of, β = beta.
      AMBIGUOUS α minimum: the formula says 15 frames, the text "a minimum value of 10". 15 frames
      at the paper's 24 fps (0.625 s) is chosen: it is the formula's value, and Tab. 12 shows
      α ∈ 10–25 within ±1.1 %.
      AMBIGUOUS D ("proportional to the remaining budget"): D = ceil(lds_ratio · (B − |F*|)) new
      frames per iteration with lds_ratio = 1, shared evenly over the newly validated frames (the
      remainder to those with the higher CLIP score): the next iteration then has as many fresh
      frames near the evidence as the output still lacks.
    Frame time: NOT IN THE PAPER, on by default (`frame_time`): the analysis prompt also says where
      the frame is in the video ("The frame is at 0:12 of the video."). The paper's prompt carries
      no time, so a question about a moment ("what appeared at about 0:12?") cannot be judged from
      one frame: the frame that shows it and one a minute later look alike.
    Time anchors: NOT IN THE PAPER, on by default (`time_anchor_weight` > 0): when the question names
      moments ("at about 2:34"), S is blended with a Gaussian prior of σ = time_anchor_width_s around
      them before the coarse stage (nodes/air/time_anchor.py), because CLIP cannot read a clock either.
      The weight 2/3 lets the named moment outrank any frame CLIP alone favours (a frame at the moment
      scores at least 2/3, one CLIP rates best elsewhere at most 1/3), while CLIP still orders the
      frames around the moment; σ = 2 s covers a moment said to the second ("about") with the seconds
      either side of it.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # a misspelt key in a graph's params is an error

    v_min: int = 8
    v_max: int = 32
    short_video_s: float = 300.0
    gamma: float = 0.7
    gmm_reg: float = 1e-6
    gmm_max_iter: int = 200
    gmm_tol: float = 1e-9
    d_min_s: float = 2.0
    l_min_s: float = 3.0
    initial_factor: int = 2
    candidates: int = 12
    i_max: int = 6
    c_len: float = 0.5
    theta: int = 3
    alpha_fraction: float = 0.05
    alpha_min_s: float = 15 / PAPER_STORAGE_FPS
    beta: float = 1.5
    lds_ratio: float = 1.0
    frame_time: bool = True
    time_anchor_weight: float = 2 / 3
    time_anchor_width_s: float = 2.0

    def __post_init__(self) -> None:
        positive_ints = {"v_min": self.v_min, "v_max": self.v_max, "gmm_max_iter": self.gmm_max_iter,
                         "initial_factor": self.initial_factor, "candidates": self.candidates, "i_max": self.i_max}
        for name, value in positive_ints.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.v_min > self.v_max:
            raise ValueError(f"v_min ({self.v_min}) must not exceed v_max ({self.v_max})")
        non_negative = {"gamma": self.gamma, "gmm_reg": self.gmm_reg, "gmm_tol": self.gmm_tol, "d_min_s": self.d_min_s,
                        "l_min_s": self.l_min_s, "c_len": self.c_len, "alpha_fraction": self.alpha_fraction,
                        "lds_ratio": self.lds_ratio}
        for name, value in non_negative.items():
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not (self.short_video_s > 0 and self.alpha_min_s > 0 and self.time_anchor_width_s > 0):
            raise ValueError("short_video_s, alpha_min_s and time_anchor_width_s must be > 0")
        if not 0 <= self.time_anchor_weight <= 1:
            raise ValueError(f"time_anchor_weight must lie in [0, 1], got {self.time_anchor_weight}")
        if not self.beta > 1:
            raise ValueError(f"beta must be > 1 (offsets must grow), got {self.beta}")
        if not 1 <= self.theta <= 5:
            raise ValueError(f"theta must be a score of the 1-5 rubric, got {self.theta}")
