"""Image augmentation of the drawn minibatch (DrQ; Kostrikov et al. 2020, Yarats et al. 2021).

DrQ regularizes a pixel learner by showing it a slightly different view of each sampled observation at every
update: the frame shifted by a few pixels (padding by repeating the edge, then a random crop back to the original
size) and its brightness scaled by a random factor near 1 (Schwarzer et al. 2021's intensity noise). Observations
and next observations are augmented independently, as Dopamine's Atari 100k agent does
(``dopamine/labs/atari_100k/atari_100k_rainbow_agent.py``: one key for the states, another for the next states).

The draws use torch's global generator, whose state every checkpoint saves, so a resumed run draws what an
uninterrupted one would have.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_shift(x: Tensor, pad: int, shifts: Tensor) -> Tensor:
    """Shift each image of ``x`` by ``shifts`` pixels inside an edge-padded frame of ``pad`` pixels per side.

    Edge (replicate) padding followed by a crop at offset ``(dy, dx)`` reads pixel
    ``clamp(i + dy - pad, 0, H - 1)``: the crop is one gather with clamped indices, so no padded copy is made and
    ``uint8`` frames stay ``uint8``.

    Args:
        x: ``[B, C, H, W]`` images (any dtype); all channels of an image (its stacked frames) shift together.
        pad: Padding per side in pixels.
        shifts: ``[B, 2]`` int64 crop offsets ``(dy, dx)`` into the padded frame, each in ``[0, 2 * pad]``.

    Returns:
        ``[B, C, H, W]`` shifted images, same dtype.

    """
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] + shifts[:, :1] - pad).clamp_(0, h - 1)  # [B, H]
    cols = (torch.arange(w, device=x.device)[None, :] + shifts[:, 1:] - pad).clamp_(0, w - 1)  # [B, W]
    flat = x.reshape(b, c, h * w)
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return flat.gather(2, index).view(b, c, h, w)


def intensity_factors(normal: Tensor, scale: float) -> Tensor:
    """``1 + scale * clip(normal, -2, 2)``: one brightness factor per image (Schwarzer et al. 2021)."""
    return 1.0 + scale * normal.clamp(-2.0, 2.0)


class DrQAugment:
    """DrQ's random shift plus intensity noise, for ``[B, C, H, W]`` pixel batches.

    Args:
        pad: Pixels of edge padding per side before the random crop (DrQ: 4).
        intensity_scale: Standard deviation of the brightness factor (0 = no intensity noise; Dopamine: 0.05).
        max_shift: Largest crop offset into the padded frame, in pixels. Dopamine draws offsets in ``[0, 2 pad)``
            (``jax.random.randint``'s upper bound is exclusive: 8 positions for pad 4), DrQ's PyTorch original in
            ``[0, 2 pad]`` (9 positions); the default ``null`` is Dopamine's ``2 pad - 1``.

    """

    def __init__(self, pad: int = 4, intensity_scale: float = 0.05, max_shift: int | None = None) -> None:
        if pad < 0 or intensity_scale < 0:
            raise ValueError(f"augment.pad={pad} and augment.intensity_scale={intensity_scale} must be >= 0")
        self.pad = int(pad)
        self.intensity_scale = float(intensity_scale)
        self.max_shift = 2 * self.pad - 1 if max_shift is None else int(max_shift)
        if not 0 <= self.max_shift <= 2 * self.pad:
            raise ValueError(f"augment.max_shift={max_shift} must be in [0, 2 * augment.pad]")

    def __call__(self, x: Tensor) -> Tensor:
        """Augmented ``float32`` images on the pixel scale of ``x`` (the network divides by 255 as before)."""
        b = x.shape[0]
        if self.pad > 0:
            shifts = torch.randint(0, self.max_shift + 1, (b, 2), device=x.device)
            x = random_shift(x, self.pad, shifts)
        # A new float32 tensor (the shift's gather already wrote one; without it, a copy): scaled in place.
        x = x.to(torch.float32, copy=self.pad == 0)
        if self.intensity_scale > 0:
            factors = intensity_factors(torch.randn(b, device=x.device), self.intensity_scale)
            x.mul_(factors.view(b, *([1] * (x.dim() - 1))))
        return x

    def __repr__(self) -> str:
        return f"DrQAugment(pad={self.pad}, intensity_scale={self.intensity_scale:g}, max_shift={self.max_shift})"
