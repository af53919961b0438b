"""The shapes world: procedurally scripted videos of coloured shapes with questions about what happened.

A benchmark for offline video QA (frame selection, span grounding) whose ground truth is exact: every
appearance, move, meeting and disappearance is scripted (`scene`), rendered without antialiasing to
MP4 (`render`), and asked about in multiple-choice questions with evidence spans (`questions`);
`dataset` writes videos, JSON sidecars and an index (`groundloop sim shapes-video`).
Needs numpy and av only; nothing here touches ManiSkill.
"""
