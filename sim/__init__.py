"""ManiSkill simulation: an env as a `Robot`, motion-planning demos, the dataset, the oracle.

Importing sim is cheap: ManiSkill, mplib and open3d are imported inside the functions that need them.
"""
