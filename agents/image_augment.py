"""Training-time image augmentation for behaviour cloning: random shift and colour jitter.

Random shift (pad by ``pad`` pixels with the edge, crop back at a random offset; DrQ's recipe)
keeps the whole scene in view, unlike a random resized crop, which on 96x96 images can cut the
gripper out. Colour jitter scales brightness, contrast and saturation per image. Both act on a
batch of float images in [0, 1] shaped (B, n_cam, 3, H, W), sampled independently per image,
in a few tensor operations (no per-image Python loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    if pad <= 0:
        return images
    b, c, ch, h, w = images.shape
    flat = images.reshape(b * c, ch, h, w)
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")
    n = flat.shape[0]
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # (n, h, w, ch)
    return out.permute(0, 3, 1, 2).reshape(b, c, ch, h, w)


def color_jitter(images: torch.Tensor, brightness: float, contrast: float, saturation: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    b, c = images.shape[:2]

    def factor(strength: float) -> torch.Tensor:
        return 1.0 + (torch.rand(b, c, 1, 1, 1, generator=generator) * 2 - 1) * strength

    out = images
    if brightness > 0:
        out = out * factor(brightness)
    if contrast > 0:
        mean = out.mean(dim=(2, 3, 4), keepdim=True)
        out = (out - mean) * factor(contrast) + mean
    if saturation > 0:
        gray = (0.299 * out[:, :, 0:1] + 0.587 * out[:, :, 1:2] + 0.114 * out[:, :, 2:3])
        out = (out - gray) * factor(saturation) + gray
    return out.clamp(0.0, 1.0)


def augment_images(images: torch.Tensor, shift: int = 4, brightness: float = 0.2, contrast: float = 0.2,
                   saturation: float = 0.2, generator: torch.Generator | None = None) -> torch.Tensor:
    return color_jitter(random_shift(images, shift, generator), brightness, contrast, saturation, generator)
