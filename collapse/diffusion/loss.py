"""The epsilon-prediction loss L_simple (Ho et al. 2020, eq. 14) as a pure function.

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,        eps ~ N(0, I),  t ~ U{0..T-1}
    L   = mean over batch and pixels of (eps - eps_theta(x_t, t, y))^2

The caller supplies t and eps, so the loss is deterministic and testable; ``draw_timesteps_and_noise``
draws them from a ``torch.Generator`` and ``drop_class_labels`` replaces labels by the null class
with probability p_uncond (classifier-free guidance training, Ho & Salimans 2022).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_loss(model, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor, scheduler,
                   class_labels: torch.Tensor | None = None) -> torch.Tensor:
    """L_simple for x0 (B, C, H, W) in [-1, 1], timesteps (B,) int, noise eps (B, C, H, W).

    ``scheduler`` gives abar_t (a diffusers DDPM/DDIM scheduler with epsilon prediction);
    ``class_labels`` (B,) int for a class-conditional model. Returns a 0-d float32 tensor.
    """
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"diffusion_loss trains epsilon prediction; the scheduler predicts "
                         f"{scheduler.config.prediction_type!r}")
    if x0.ndim != 4 or noise.shape != x0.shape:
        raise ValueError(f"x0 must be (B, C, H, W) and noise the same shape, got {tuple(x0.shape)} "
                         f"and {tuple(noise.shape)}")
    if timesteps.shape != (x0.shape[0],) or timesteps.is_floating_point():
        raise ValueError(f"timesteps must be an int tensor of shape ({x0.shape[0]},), got "
                         f"{timesteps.dtype} {tuple(timesteps.shape)}")
    T = scheduler.config.num_train_timesteps
    if timesteps.numel() and (int(timesteps.min()) < 0 or int(timesteps.max()) >= T):
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got {int(timesteps.min())}..{int(timesteps.max())}")
    x_t = scheduler.add_noise(x0, noise, timesteps)
    eps_hat = model(x_t, timesteps, class_labels=class_labels).sample
    return F.mse_loss(eps_hat.float(), noise.float())


def draw_timesteps_and_noise(scheduler, shape, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t (B,) int64 uniform in [0, T), eps ``shape`` = (B, C, H, W) float32 standard normal).

    T is ``scheduler.config.num_train_timesteps``. Both are drawn on the generator's device (move
    them to the batch's): a CPU generator gives the same draws for a CPU or a GPU batch.
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) != 4:
        raise ValueError(f"shape must be (B, C, H, W), got {shape}")
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (shape[0],), generator=generator, device=generator.device)
    eps = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
    return t, eps


def drop_class_labels(class_labels: torch.Tensor, p_uncond: float, null_class: int,
                      generator: torch.Generator) -> torch.Tensor:
    """class_labels (B,) with each entry replaced by ``null_class`` with probability p_uncond."""
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    u = torch.rand(class_labels.shape, generator=generator, device=generator.device).to(class_labels.device)
    return torch.where(u < p_uncond, torch.full_like(class_labels, null_class), class_labels)
