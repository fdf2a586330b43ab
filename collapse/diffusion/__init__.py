"""The diffusion model: denoiser and schedule (``models``), the loss (``loss``), the sampler
(``sampling``), image conversions (``images``), the weight average (``ema``) and diffusers-format
save/load (``checkpoint``). Pure torch + diffusers: no ray, no deepspeed, no storage.

The names below are imported from their modules on first use (PEP 562), so that importing
``collapse.diffusion.presets`` (the UNet presets and the batch order's name, all a plan and a config
check read) loads neither torch nor diffusers: ~3 s for each driver and stage runner (docs/PLATFORM.md).
"""
from __future__ import annotations

import importlib

_FROM = {
    "collapse.diffusion.checkpoint": ("load_model", "save_model"),
    "collapse.diffusion.ema": ("EMA",),
    "collapse.diffusion.images": ("images_to_tensor", "tensor_to_images"),
    "collapse.diffusion.loss": ("diffusion_loss", "draw_timesteps_and_noise", "drop_class_labels"),
    "collapse.diffusion.models": ("PAPER_SCHEDULER", "build", "build_unet", "make_scheduler", "null_class",
                                  "num_params", "unet_from_preset"),
    "collapse.diffusion.presets": ("UNET_PRESETS", "UNetPreset"),
    "collapse.diffusion.sampling": ("GUIDED_DDIM", "METHODS", "guided_epsilon", "sample", "sampler_variant"),
}
_MODULE = {name: module for module, names in _FROM.items() for name in names}
__all__ = sorted(_MODULE)


_SUBMODULES = ("batches", "checkpoint", "ema", "images", "loss", "models", "presets", "sampling")


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _MODULE:
        value = getattr(importlib.import_module(_MODULE[name]), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
