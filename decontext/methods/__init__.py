"""Protection methods: one module per method. ``build_method`` maps a CLI name to an instance."""

from __future__ import annotations

METHODS = ("decontext", "noise", "encoder", "flow_loss")


def build_method(name: str, prompts=None, blocks: str = "single:0-25/38", t_range=(0.98, 1.0), guidance: float = 3.5):
    """A method configured from the attack CLI's flags (flags a method does not use are ignored)."""
    if name == "decontext":
        from .decontext import DeContext

        return DeContext(blocks=blocks, t_range=tuple(t_range), guidance=guidance, prompts=prompts)
    if name == "noise":
        from .noise import RandomNoise

        return RandomNoise()
    if name == "encoder":
        from .encoder import EncoderAttack

        return EncoderAttack()
    if name == "flow_loss":
        from .flow_loss import FlowLoss

        return FlowLoss(guidance=guidance, prompts=prompts)
    raise ValueError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
