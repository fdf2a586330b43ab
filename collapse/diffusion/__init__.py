"""The diffusion model: denoiser and schedule (``models``), the loss (``loss``), the sampler
(``sampling``), image conversions (``images``), the weight average (``ema``) and diffusers-format
save/load (``checkpoint``). Pure torch + diffusers: no ray, no deepspeed, no storage."""
from collapse.diffusion.checkpoint import load_model, save_model
from collapse.diffusion.ema import EMA
from collapse.diffusion.images import images_to_tensor, tensor_to_images
from collapse.diffusion.loss import diffusion_loss, draw_timesteps_and_noise, drop_class_labels
from collapse.diffusion.models import (
    PAPER_SCHEDULER, UNET_PRESETS, UNetPreset, build, build_unet, make_scheduler, null_class,
    num_params, unet_from_preset,
)
from collapse.diffusion.sampling import GUIDED_DDIM, METHODS, guided_epsilon, sample, sampler_variant

__all__ = [
    "EMA", "GUIDED_DDIM", "METHODS", "PAPER_SCHEDULER", "UNET_PRESETS", "UNetPreset", "build", "build_unet",
    "diffusion_loss", "draw_timesteps_and_noise", "drop_class_labels", "guided_epsilon",
    "images_to_tensor", "load_model", "make_scheduler", "null_class", "num_params", "sample", "sampler_variant",
    "save_model", "tensor_to_images", "unet_from_preset",
]
