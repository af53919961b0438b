"""A.I.R. (Adaptive, Iterative, Reasoning-based frame selection, arXiv 2510.04428): per-frame CLIP scores
in, at most B frames the VLM itself judged relevant out.

`coarse` holds the adaptive steps (budget, GMM threshold, events, event-wise initial sampling), `refine`
the iterative ones (interval potential ranking, fill-up, early stop, localized density sampling),
`analysis` the VLM's 1–5 judgement of one frame, `selector` the loop that ties them together and
`node` the `AirFrameSelection` graph node. Every hyper-parameter is in `config.AirConfig`.
"""
