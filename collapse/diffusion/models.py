"""The denoiser eps_theta (a diffusers ``UNet2DModel``) and the noise schedule, from plain numbers.

Named presets live in ``UNET_PRESETS``; a committed preset never changes meaning (docs/STYLE.md,
principle 5): a different network gets a new name. Parameter counts are those of the
unconditional model (a class-conditional one adds ``(num_classes + 1) * 4 * widths[0]``).

| preset        | image    | widths                      | layers | attention           | params  |
|---------------|----------|-----------------------------|--------|---------------------|---------|
| tiny          | 16x16x1  | 32, 64                      | 1      | none                | 651,041 |
| narrow        | 16x16x1  | 16, 32 (8 norm groups)      | 1      | none                | 163,985 |
| small-28      | 28x28x1  | 32, 64, 64                  | 1      | 3rd down, 1st up    | 1.11M   |
| small-32      | 32x32x1  | 32, 64, 64                  | 1      | 3rd down, 1st up    | 1.11M   |
| cifar10-paper | 32x32x3  | 48, 48, 96, 96, 192, 192    | 2      | 5th down, 2nd up    | 16.01M  |

``tiny`` is for tests. ``narrow`` is the demo's: tiny at half the width, a quarter of its FLOPs
(0.091 against 0.365 GFLOP per image of a training step at 16x16, torch's flop counter); at N =
100 and 3000 steps it copies less than tiny at generation 1 and clearly by generation 2
(bench/demo_experiments.py; the table in jobs/presets/demo.yaml).
``small-*`` are for real grey data on CPU (MNIST-like at 28 px, 32 px
sets): attention only at the lowest resolution (7x7 or 8x8); measured on one thread of this
machine at 28 px, ~1.4 AdamW steps/s at batch 64 and ~16 images/s with DDIM-20 (widths
(32, 64, 128) gave 2.7M parameters at ~1.1 steps/s and ~10 images/s).
``cifar10-paper`` is the paper's network (docs/SCIENCE.md, "Reference setup": 16.0M parameters). 16.0M
needs both attention blocks at 192-wide levels (the 4th down block counted from 1, 96 wide, gives
15.79M), so "4th down" is the 0-based index 4: attention in down block 4 and up block 1, both at
2x2, the layout of diffusers' ``train_unconditional`` example. Widths of 48 need
``norm_num_groups`` dividing 48: we use 16.

Class conditioning (for classifier-free guidance, Ho & Salimans 2022): ``num_classes = K`` builds
``num_class_embeds = K + 1`` embeddings; ids ``0..K-1`` are the classes and ``K`` is the null
(unconditional) class, ``null_class(model)``.
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from collapse.imports import from_diffusers

# imported without transformers (collapse/imports.py)
DDPMScheduler, UNet2DModel = from_diffusers("DDPMScheduler", "UNet2DModel")

from collapse.diffusion.presets import UNET_PRESETS, UNetPreset  # noqa: F401  (re-exported)

_DOWN = {"plain": "DownBlock2D", "attn": "AttnDownBlock2D"}
_UP = {"plain": "UpBlock2D", "attn": "AttnUpBlock2D"}

# The paper's schedule: DDPM, T = 1000, linear betas 1e-4..0.02, epsilon prediction (Ho et al.
# 2020). The rest is diffusers' DDPM default, stated so that it cannot drift: posterior variance
# sigma_t^2 = beta~_t ("fixed_small"), x0_hat clipped to [-1, 1], "leading" timestep spacing.
PAPER_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
    prediction_type="epsilon", variance_type="fixed_small", clip_sample=True, clip_sample_range=1.0,
    thresholding=False, timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False,
)


def build_unet(*, sample_size: int, channels: int, widths, layers_per_block: int, down_attention,
               up_attention, norm_num_groups: int = 32, attention_head_dim: int = 8,
               dropout: float = 0.0, num_classes: int | None = None) -> UNet2DModel:
    """A ``UNet2DModel`` eps_theta: (B, channels, sample_size, sample_size) -> same shape.

    ``widths[i]`` is the width of resolution level i; every level but the last halves the
    resolution, so ``sample_size`` must be divisible by ``2 ** (len(widths) - 1)``.
    """
    widths = tuple(int(w) for w in widths)
    n = len(widths)
    if n < 1:
        raise ValueError("widths must name at least one level, got ()")
    if len(down_attention) != n or len(up_attention) != n:
        raise ValueError(f"down_attention and up_attention need one flag per level ({n}), got "
                         f"{len(down_attention)} and {len(up_attention)}")
    if sample_size < 1 or sample_size % 2 ** (n - 1):
        raise ValueError(f"sample_size must be a positive multiple of 2**{n - 1} for {n} levels, got {sample_size}")
    if channels < 1 or layers_per_block < 1:
        raise ValueError(f"channels and layers_per_block must be >= 1, got {channels} and {layers_per_block}")
    bad = [w for w in widths if w < 1 or w % norm_num_groups]
    if bad:
        raise ValueError(f"every width must be a positive multiple of norm_num_groups={norm_num_groups}, got {bad}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be None (unconditional) or >= 1, got {num_classes}")
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels,
        block_out_channels=widths, layers_per_block=layers_per_block,
        down_block_types=tuple(_DOWN["attn" if a else "plain"] for a in down_attention),
        up_block_types=tuple(_UP["attn" if a else "plain"] for a in up_attention),
        norm_num_groups=norm_num_groups, attention_head_dim=attention_head_dim, dropout=dropout,
        num_class_embeds=None if num_classes is None else num_classes + 1,
    )


def unet_from_preset(name: str, num_classes: int | None = None) -> UNet2DModel:
    """The preset ``name`` (a key of ``UNET_PRESETS``), optionally class-conditional."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}")
    return build_unet(**asdict(UNET_PRESETS[name]), num_classes=num_classes)


def make_scheduler(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> DDPMScheduler:
    """The paper's DDPM scheduler; tests shorten it (e.g. T = 20) through the arguments."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start} and {beta_end}")
    return DDPMScheduler(**{**PAPER_SCHEDULER, "num_train_timesteps": num_train_timesteps,
                            "beta_start": beta_start, "beta_end": beta_end})


def build(preset: str, num_classes: int | None = None) -> tuple[UNet2DModel, DDPMScheduler]:
    """(the preset's UNet, freshly initialised from torch's global RNG; the paper's scheduler)."""
    return unet_from_preset(preset, num_classes), make_scheduler()


def num_params(model: torch.nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def null_class(model: UNet2DModel) -> int | None:
    """The null-class id K of a class-conditional model (its last embedding); None if unconditional."""
    k = model.config.num_class_embeds
    if k is None:
        return None
    if k < 2:
        raise ValueError(f"a class-conditional model needs num_class_embeds >= 2 (classes + null), got {k}")
    return k - 1
