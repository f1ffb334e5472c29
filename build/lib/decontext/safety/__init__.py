"""Model-side safety: regulators that change how an editor or generator runs, not the images it is given.

``uvr``: UVR, a training-free regulator that localises an unsafe concept in the early "semantic
start-up" steps of an MM-DiT and restricts its information flow (docs/SAFETY.md).
"""
