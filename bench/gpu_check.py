"""GPU checks of the pure core, run on a lent GPU machine (no Ray or DeepSpeed there).

Checks that the CUDA paths give the CPU answers (kNN neighbours, entropy, greedy and tdf picks),
times them against the CPU in the same run, and measures the paper's UNet on the GPU: training
steps/s in bf16 at the paper's batch, sampling images/s, and how far batched sampling on a GPU is
from batch-invariant. Usage: python bench/gpu_check.py [--n 50000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def timed(fn, *a, **k):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*a, **k)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def clustered(n, d, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 30, (64, d))
    return (centres[rng.integers(0, 64, n)] + rng.normal(0, 4, (n, d))).astype(np.float32)


def science(n):
    from collapse.entropy import kl_entropy
    from collapse.knn import knn
    from collapse.selection import select
    x = clustered(n, 256)
    knn(x[:2000], x[:2000], 1, device="cuda")  # warm-up
    (dc, ic), tc = timed(knn, x, x, 1, exclude_self=True, device="cpu")
    (dg, ig), tg = timed(knn, x, x, 1, exclude_self=True, device="cuda")
    print(f"knn N={n} d=256: same neighbours {np.mean(ic == ig):.6f}, max |dist diff| {np.abs(dc - dg).max():.2e}, "
          f"cpu faiss {tc:.2f} s, cuda torch {tg:.2f} s, speed-up {tc / tg:.1f}x")
    hc, tc = timed(kl_entropy, x, device="cpu")
    hg, tg = timed(kl_entropy, x, device="cuda")
    print(f"kl_entropy: cpu {hc:.9f} cuda {hg:.9f} rel diff {abs(hc - hg) / abs(hc):.1e}; {tc:.2f} s vs {tg:.2f} s")
    y = clustered(n, 784, seed=1)
    sc, tc = timed(select, y, 192, "greedy", seed=3, device="cpu")
    sg, tg = timed(select, y, 192, "greedy", seed=3, device="cuda")
    print(f"greedy N={n} d=784 192 steps: same picks {np.array_equal(sc.indices, sg.indices)}, "
          f"cpu {tc:.2f} s, cuda {tg:.2f} s, speed-up {tc / tg:.1f}x")
    tc_sel, tc = timed(select, y[:20000], 2000, "tdf", seed=3, device="cpu", tau0=float(np.median(
        np.linalg.norm(y[:200] - y[200:400], axis=1))), alpha=0.9)
    tg_sel, tg = timed(select, y[:20000], 2000, "tdf", seed=3, device="cuda", **tc_sel.params)
    print(f"tdf N=20000 keep 2000: same picks {np.array_equal(tc_sel.indices, tg_sel.indices)}, "
          f"cpu {tc:.2f} s, cuda {tg:.2f} s")


def model():
    from collapse import diffusion
    from collapse.seeding import sample_seeds
    torch.manual_seed(0)
    unet, scheduler = diffusion.build("cifar10-paper")
    unet = unet.cuda()
    print(f"cifar10-paper UNet: {diffusion.num_params(unet) / 1e6:.2f}M parameters")
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(128, 3, 32, 32, device="cuda") * 2 - 1
    for dtype in (torch.float32, torch.bfloat16):
        for step in range(25):
            if step == 5:
                torch.cuda.synchronize()
                t = time.perf_counter()
            ts, noise = diffusion.draw_timesteps_and_noise(scheduler, x0.shape, gen)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                loss = diffusion.diffusion_loss(unet, x0, ts.cuda(), noise.cuda(), scheduler)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        print(f"train {dtype}: {20 / (time.perf_counter() - t):.1f} steps/s at batch 128 "
              f"(the paper's 128k steps: {128000 / (20 / (time.perf_counter() - t)) / 3600:.1f} h)")
    unet.eval()
    seeds = sample_seeds(0, 1, range(512))
    _, t = timed(diffusion.sample, unet, scheduler, seeds, method="ddim", steps=50, device="cuda", batch_size=256)
    print(f"sample DDIM-50: {512 / t:.0f} images/s at batch 256")
    a = diffusion.sample(unet, scheduler, seeds[:12], method="ddim", steps=20, device="cuda", batch_size=12)
    b = diffusion.sample(unet, scheduler, seeds[:12], method="ddim", steps=20, device="cuda", batch_size=5)
    c = diffusion.sample(unet, scheduler, seeds[:12], method="ddim", steps=20, device="cuda", batch_size=5,
                         batch_invariant=True)
    d = diffusion.sample(unet, scheduler, seeds[:12], method="ddim", steps=20, device="cuda", batch_size=12,
                         batch_invariant=True)
    diff = np.abs(a.astype(int) - b.astype(int))
    print(f"batched GPU sampling, batch 12 vs 5 (untrained net): {np.mean(diff > 0):.4f} of pixels differ, "
          f"max {diff.max()}; batch_invariant 5 vs 12 identical: {np.array_equal(c, d)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(0))
    science(args.n)
    model()
