"""Learning-rate schedule: linear warm-up, constant, then linear decay to zero at the end."""

from __future__ import annotations


def lr_factor(step: int, total_steps: int, warmup_frac: float, decay_frac: float) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based) of `total_steps`."""
    warmup = max(1, round(warmup_frac * total_steps))
    decay = round(decay_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    decay_start = total_steps - decay
    if decay > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay)
    return 1.0
