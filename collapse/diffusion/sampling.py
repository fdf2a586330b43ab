"""Sampling with per-sample noise: a sample's image is a function of its seed (and the model).

Each sample owns a CPU ``torch.Generator`` seeded with its seed (``collapse.seeding``). It draws
the sample's initial noise x_T ~ N(0, I) of shape (C, H, W), then, in step order, every per-step
noise z that the sampler needs: at each step with t > 0 for DDPM (ancestral), at every step for
DDIM with eta > 0, none for DDIM with eta = 0. Row b of a batch's noise therefore depends on seed
b only, never on the batch size, the batch's other seeds, or the device (CPU streams are the same
on every machine; the noise is moved to the model's device).

The loop is ours, around the diffusers schedulers, so that the noise is an explicit tensor:

* DDIM: ``DDIMScheduler.step(..., eta, variance_noise=z)``, diffusers' own explicit-noise hook;
* DDPM: ``DDPMScheduler.step(..., generator=[one generator per sample])``: diffusers'
  ``randn_tensor`` draws row b of z from generator b, the same draw as ours (a hand-written
  posterior step taking z, used until 2026-12-06, gave bit-identical images: tests/collapse/
  test_diffusion.py keeps it as the reference).

Batch invariance of the network itself: CPU and GPU kernels pick their blocking by batch shape
(oneDNN/MKL on CPU: a 1-row Linear uses gemv; conv blocking depends on N; cuDNN picks algorithms
by shape), so the same input row can come out ~1e-6 different in another batch, or at another row
of the same batch. Measured on the tiny preset: after some training, batched and one-row images
differed by at most one uint8 level in <0.03% of pixels (DDPM: none); for an *untrained* network
deterministic DDIM is chaotic (x0_hat divides by sqrt(abar_t) ~ 6e-3 near T, then clips) and the
same seeds gave entirely different images. Two ways to make images bit-identical:
* ``batch_invariant=True`` evaluates the network one sample at a time, always at the same shape
  ((1, C, H, W), or (2, C, H, W) for a guided sample), so an image is bit-identical for any batch
  size, order or grouping on a given machine, thread count and software stack, at ~3x the CPU
  time of batched evaluation (14 against 42 images/s, tiny preset, DDIM-20, one thread);
* or keep the batch composition a function of identity (sample index i always in group i // G,
  at row i % G, with a run-wide G): batched evaluation is then bit-identical across actor counts
  and retries too. This is what the sampler stage should do.

Classifier-free guidance (Ho & Salimans 2022), in diffusers' convention:
    eps~ = eps(x_t, null) + s (eps(x_t, y) - eps(x_t, null))
s = 1 is the conditional model (one network call), s = 0 the unconditional one; the paper's
w is s - 1.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from collapse.imports import from_diffusers

# imported without transformers (collapse/imports.py)
DDIMScheduler, DDPMScheduler = from_diffusers("DDIMScheduler", "DDPMScheduler")

from collapse.diffusion.images import tensor_to_images
from collapse.diffusion.models import null_class
from collapse.errors import check_int
from collapse.sampler_spec import GUIDED_DDIM, METHODS, sampler_variant
from collapse.seeding import torch_generator

__all__ = ["GUIDED_DDIM", "METHODS", "guided_epsilon", "sample", "sampler_variant"]


def _eps(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return model(x.to(model.dtype), t, class_labels=y).sample.float()


def guided_epsilon(model, x_t: torch.Tensor, timestep: int, class_labels: torch.Tensor | None = None,
                   guidance_scale: float = 1.0) -> torch.Tensor:
    """eps~(x_t, t, y) (B, C, H, W) float32 for x_t (B, C, H, W) and labels y (B,) or None."""
    b = x_t.shape[0]
    t = torch.full((b,), int(timestep), dtype=torch.long, device=x_t.device)
    null = null_class(model)
    if class_labels is None:
        if null is not None:
            raise ValueError(f"the model is class-conditional: pass class_labels (null class {null} "
                             "for unconditional samples)")
        if guidance_scale != 1.0:
            raise ValueError(f"guidance_scale must be 1.0 for an unconditional model, got {guidance_scale}")
        return _eps(model, x_t, t, None)
    if null is None:
        raise ValueError("class_labels given, but the model is unconditional (num_class_embeds is None)")
    y = class_labels.to(device=x_t.device, dtype=torch.long)
    y_null = torch.full_like(y, null)
    if guidance_scale == 1.0:
        return _eps(model, x_t, t, y)
    if guidance_scale == 0.0:
        return _eps(model, x_t, t, y_null)
    eps_c, eps_u = _eps(model, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, y_null])).chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


def _scheduler(method: str, config: Mapping):
    """A fresh DDPM or DDIM scheduler from a DDPM config (keys the target does not take dropped)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    cls = DDPMScheduler if method == "ddpm" else DDIMScheduler
    accepted = inspect.signature(cls.__init__).parameters
    sched = cls.from_config({k: v for k, v in dict(config).items() if k in accepted})
    if sched.config.prediction_type != "epsilon":
        raise ValueError(f"the sampler drives epsilon-prediction models, got {sched.config.prediction_type!r}")
    if method == "ddpm" and (sched.config.variance_type != "fixed_small" or sched.config.thresholding):
        raise ValueError("method='ddpm' implements variance_type='fixed_small' without thresholding, got "
                         f"{sched.config.variance_type!r}, thresholding={sched.config.thresholding}")
    return sched


def _draw(generators: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """(B, *shape) standard normal; row b from generators[b] alone."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def _sample_batch(model, sched, method, seeds, labels, guidance_scale, eta, device, batch_invariant):
    cfg = model.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    gens = [torch_generator(s) for s in seeds]
    x = _draw(gens, shape, device)  # x_T
    y = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
    timesteps = [int(t) for t in sched.timesteps]
    for t in timesteps:
        if batch_invariant:
            eps = torch.cat([guided_epsilon(model, x[b:b + 1], t, None if y is None else y[b:b + 1],
                                            guidance_scale) for b in range(x.shape[0])])
        else:
            eps = guided_epsilon(model, x, t, y, guidance_scale)
        if method == "ddpm":
            x = sched.step(eps, t, x, generator=gens).prev_sample   # z drawn from gens when t > 0
        else:
            z = _draw(gens, shape, device) if eta > 0 else None
            # guided: the direction term uses the eps of the clipped x0_hat (diffusers' use_clipped_model_output).
            # The raw guided eps extrapolates far past the model's; with x0_hat clipped and that eps kept,
            # DDIM at s >= 3 made noise (measured 2026-12-02, tiny preset) where DDPM made garments.
            # Unguided sampling keeps diffusers' default, so every unguided pool stays bit-identical.
            # GUIDED_DDIM names this choice: change it with the step.
            clipped_eps = sampler_variant(method, guidance_scale) == GUIDED_DDIM
            x = sched.step(eps, t, x, eta=eta, variance_noise=z, use_clipped_model_output=clipped_eps).prev_sample
    return tensor_to_images(x)


def sample(model, scheduler_config, seeds: Sequence[int], method: str = "ddpm",
           steps: int | None = None, class_labels: Sequence[int] | None = None,
           guidance_scale: float = 1.0, eta: float = 0.0, device=None, batch_size: int = 64,
           batch_invariant: bool = False) -> np.ndarray:
    """Images (N, H, W, C) uint8, one per seed, from the epsilon model ``model``.

    scheduler_config: the training scheduler's config (``scheduler.config``, or the scheduler
    itself, whose config is read; it is not modified); ``method``: "ddpm"
    (ancestral) or "ddim"; ``steps``: sampling steps (default: all T train steps), spaced as the
    scheduler's ``timestep_spacing`` says; ``class_labels``: N ints for a class-conditional model
    (the null class for unconditional samples); ``guidance_scale``: s of classifier-free guidance;
    ``eta``: DDIM's noise weight (0 deterministic); ``device``: default the model's;
    ``batch_size``: samples denoised together (memory and speed only; see the module docstring on
    numerics and ``batch_invariant``).
    """
    seeds = [int(s) for s in seeds]
    if any(s < 0 or s >= 2**64 for s in seeds):
        raise ValueError("seeds must be ints in [0, 2**64)")
    check_int(batch_size, "batch_size", low=1)
    if eta < 0 or (eta > 0 and method != "ddim"):
        raise ValueError(f"eta must be >= 0 and is a DDIM parameter (method='ddim'), got eta={eta}, method={method!r}")
    if class_labels is not None:
        class_labels = [int(c) for c in class_labels]
        null = null_class(model)
        if len(class_labels) != len(seeds):
            raise ValueError(f"class_labels needs one label per seed ({len(seeds)}), got {len(class_labels)}")
        if null is not None and any(c < 0 or c > null for c in class_labels):
            raise ValueError(f"class_labels must lie in [0, {null}] ({null} = null class)")
    sched = _scheduler(method, getattr(scheduler_config, "config", scheduler_config))
    T = sched.config.num_train_timesteps
    steps = T if steps is None else int(steps)
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, {T}], got {steps}")
    sched.set_timesteps(steps)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    cfg = model.config
    out = [np.zeros((0, cfg.sample_size, cfg.sample_size, cfg.in_channels), np.uint8)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(seeds), batch_size):
                labels = None if class_labels is None else class_labels[i:i + batch_size]
                out.append(_sample_batch(model, sched, method, seeds[i:i + batch_size], labels,
                                         guidance_scale, eta, device, batch_invariant))
    finally:
        model.train(was_training)
    return np.concatenate(out)
