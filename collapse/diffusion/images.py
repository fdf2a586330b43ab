"""Images between storage (uint8, NHWC or NHW) and the model (float32 NCHW in [-1, 1]).

Forward: x = u / 127.5 - 1, exact at both ends (0 -> -1, 255 -> 1).
Back: u = round(clamp(x / 2 + 0.5, 0, 1) * 255), rounding half to even; the same formula as
diffusers' pipelines (``image / 2 + 0.5``, clamp, ``* 255``, ``round``), so our samples and a
plain ``DDPMPipeline``'s agree. uint8 -> float -> uint8 is the identity.
"""
from __future__ import annotations

import numpy as np
import torch


def images_to_tensor(images) -> torch.Tensor:
    """uint8 (N, H, W, C) or grey (N, H, W) -> float32 (N, C, H, W) in [-1, 1].

    ``images``: one array, or a list of N same-shaped (H, W[, C]) uint8 arrays.
    """
    if isinstance(images, (list, tuple)):
        if not images or any(not isinstance(im, np.ndarray) or im.dtype != np.uint8 for im in images):
            raise ValueError("images must be a non-empty list of uint8 numpy arrays")
        if len({im.shape for im in images}) != 1:
            raise ValueError(f"images must all have one shape, got {sorted({im.shape for im in images})}")
        images = np.stack(images)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C), got {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W), nominally in [-1, 1] -> uint8 (N, H, W, C); values outside are clamped."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (N, C, H, W), got {getattr(x, 'shape', type(x))}")
    u = ((x.detach().float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().cpu().numpy()
