"""Models on local disk in diffusers format: the directory is a ``DDPMPipeline``.

    <dir>/model_index.json        {"_class_name": "DDPMPipeline", "unet": ..., "scheduler": ...}
    <dir>/unet/config.json, diffusion_pytorch_model.safetensors
    <dir>/scheduler/scheduler_config.json

so ``DDPMPipeline.from_pretrained(dir)``, or ``UNet2DModel.from_pretrained(dir, subfolder="unet")``
with ``DDPMScheduler.from_pretrained(dir, subfolder="scheduler")``, loads it with no code of ours.
(A class-conditional UNet loads the same way, but DDPMPipeline cannot pass it labels: sample it
with ``collapse.diffusion.sample``.) Local paths only; the storage layer uploads the directory.
"""
from __future__ import annotations

import os

from collapse.imports import from_diffusers

# imported without transformers (collapse/imports.py)
DDPMPipeline, DDPMScheduler, UNet2DModel = from_diffusers("DDPMPipeline", "DDPMScheduler", "UNet2DModel")


def save_model(unet: UNet2DModel, scheduler: DDPMScheduler, local_dir: str | os.PathLike) -> None:
    """Write ``unet`` (weights as safetensors) and ``scheduler`` under ``local_dir``."""
    if not isinstance(unet, UNet2DModel) or not isinstance(scheduler, DDPMScheduler):
        raise ValueError(f"save_model takes a UNet2DModel and a DDPMScheduler, got "
                         f"{type(unet).__name__} and {type(scheduler).__name__}")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(os.fspath(local_dir), safe_serialization=True)


def load_model(local_dir: str | os.PathLike) -> tuple[UNet2DModel, DDPMScheduler]:
    """(unet on CPU in eval mode, scheduler) from a directory written by ``save_model``."""
    local_dir = os.fspath(local_dir)
    if not os.path.isfile(os.path.join(local_dir, "unet", "config.json")):
        raise ValueError(f"{local_dir!r} is not a saved model: no unet/config.json")
    unet = UNet2DModel.from_pretrained(local_dir, subfolder="unet", low_cpu_mem_usage=False)  # no accelerate
    scheduler = DDPMScheduler.from_pretrained(local_dir, subfolder="scheduler")
    return unet.eval(), scheduler
