"""What the demo preset costs and shows, per candidate experiment: plain torch, one thread, no Ray.

    .venv/bin/python bench/demo_experiments.py NAME [--source fashion-mnist|digits] [--generations 2]

For one candidate (CANDIDATES: denoiser widths, batch, steps, learning rate) it trains M_1 from
scratch on D_1 (the first N = 100 real 16x16 grey images), samples P_1 (DDIM-20, 2N samples),
and prints what the demo's four checks read: the classifier's confidence on the samples over its
confidence on real held-out images, memorization (the share of samples closer to an image of
D_n than rho, collapse.novelty) and GS; with --generations 2 it also trains vanilla's M_2 on the
first N samples of P_1 and measures its memorization against D_2, and H(D_2) of vanilla (the
first N of P_1) against greedy (N of 2N chosen in the classifier's space). Training cost: the
FLOPs of one step (torch.utils.flop_counter) times the steps, and the seconds it took here.
The table in jobs/presets/demo.yaml came from this script.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from collapse.classifier import classifier_figures, train_classifier
from collapse.diffusion import EMA, build_unet, diffusion_loss, draw_timesteps_and_noise, make_scheduler, sample
from collapse.diffusion.images import images_to_tensor
from collapse.data.importers import labelled_training_images
from collapse.entropy import kl_entropy
from collapse.novelty import generalization_score, memorization_within, real_copy_radius
from collapse.seeding import sample_seeds
from collapse.selection import select

N, SIZE, CLASSIFIER_IMAGES, HELD_OUT = 100, 16, 4000, 1000

# name: (widths, norm groups, batch, steps, lr, warmup)
CANDIDATES = {
    "smoke": ((32, 64), 32, 8, 10, 2e-3, 2),           # a check of this script
    "today": ((32, 64), 32, 64, 3000, 2e-3, 50),       # the demo preset before this table
    "b32": ((32, 64), 32, 32, 3000, 2e-3, 50),
    "b16": ((32, 64), 32, 16, 3000, 2e-3, 50),
    "b16-2000": ((32, 64), 32, 16, 2000, 2e-3, 50),
    "b32-1500-lr4": ((32, 64), 32, 32, 1500, 4e-3, 50),
    "narrow-b64": ((16, 32), 8, 64, 3000, 2e-3, 50),
    "narrow-b32": ((16, 32), 8, 32, 3000, 2e-3, 50),
}


def step_flops(model, scheduler, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(batch, 1, SIZE, SIZE)
    t, eps = draw_timesteps_and_noise(scheduler, x0.shape, g)
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(model, x0, t, eps, scheduler).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def train(images: np.ndarray, widths, groups: int, batch: int, steps: int, lr: float, warmup: int, seed: int = 0):
    """M from scratch on ``images`` (uint8 (n, 16, 16)): AdamW, cosine schedule with warmup, grad clip 1,
    EMA 0.999 with warmup: the demo's training. Returns (EMA model, seconds, FLOPs of one step)."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    torch.manual_seed(seed)
    model = build_unet(sample_size=SIZE, channels=1, widths=widths, layers_per_block=1,
                       down_attention=(False,) * len(widths), up_attention=(False,) * len(widths),
                       norm_num_groups=groups)
    scheduler = make_scheduler()
    flops = step_flops(model, scheduler, batch)
    x_all = images_to_tensor(images[..., None])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-6)
    lr_sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    ema = EMA(model, 0.999, warmup=True)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        t, eps = draw_timesteps_and_noise(scheduler, (batch, 1, SIZE, SIZE), g)
        loss = diffusion_loss(model, x_all[idx], t, eps, scheduler)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        ema.update(model)
    seconds = time.perf_counter() - t0
    model.eval()
    return ema.copy_to(model), scheduler, seconds, flops


def draw(model, scheduler, count: int, generation: int) -> np.ndarray:
    with torch.no_grad():
        out = sample(model, scheduler.config, sample_seeds(0, generation, range(count)), method="ddim", steps=20,
                     batch_size=250)
    return out[..., 0]


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(CANDIDATES))
    ap.add_argument("--source", default="fashion-mnist")
    ap.add_argument("--generations", type=int, default=1, choices=(1, 2))
    args = ap.parse_args()
    torch.set_num_threads(1)
    widths, groups, batch, steps, lr, warmup = CANDIDATES[args.name]
    images, labels = labelled_training_images(args.source, CLASSIFIER_IMAGES + HELD_OUT, size=SIZE, mode="grey",
                                              holdout=1000, seed=0)
    d1 = images[:N]
    held = min(HELD_OUT, len(images) // 4)   # digits has 1797 images in all
    clf = train_classifier(images[:-held], labels[:-held], epochs=8, seed=0)
    real_conf = classifier_figures(clf.probabilities(images[-held:]), clf.num_classes)["confidence"]
    rho = real_copy_radius(flat(d1))
    out = {"name": args.name, "source": args.source, "widths": widths, "batch": batch, "steps": steps, "lr": lr}
    m1, scheduler, seconds, flops = train(d1, widths, groups, batch, steps, lr, warmup)
    p1 = draw(m1, scheduler, 2 * N, 1)
    conf = classifier_figures(clf.probabilities(p1), clf.num_classes)["confidence"]
    out.update(train_s=round(seconds), step_gflop=round(flops / 1e9, 3), train_tflop=round(flops * steps / 1e12, 1),
               confidence_ratio=round(conf / real_conf, 3), mem1=round(memorization_within(flat(p1), flat(d1), rho), 3),
               gs1=round(generalization_score(flat(p1), flat(d1)), 2))
    if args.generations == 2:
        d2_vanilla = p1[:N]
        chosen = select(clf.features(p1), N, "greedy", seed=0)
        d2_greedy = p1[np.sort(chosen.indices)]
        out.update(h2_vanilla=round(kl_entropy(flat(d2_vanilla)), 1), h2_greedy=round(kl_entropy(flat(d2_greedy)), 1))
        m2, _, seconds2, _ = train(d2_vanilla, widths, groups, batch, steps, lr, warmup, seed=1)
        p2 = draw(m2, scheduler, 2 * N, 2)
        out.update(mem2_vanilla=round(memorization_within(flat(p2), flat(d2_vanilla), rho), 3),
                   train2_s=round(seconds2))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
