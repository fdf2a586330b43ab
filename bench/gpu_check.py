"""GPU checks, run on a lent GPU machine.

Default mode (the pure core, no Ray or DeepSpeed): checks that the CUDA paths give the CPU answers
(kNN neighbours, entropy, greedy and tdf picks), times them against the CPU in the same run, and
measures the paper's UNet on the GPU: training steps/s at the paper's batch, sampling images/s, and
how far batched sampling on a GPU is from batch-invariant. Usage: python bench/gpu_check.py [--n 50000]

``--e2e`` (issue 21; ~5 min on one H100/H200): the ``cifar10-paper`` preset end to end through
`collapse run` on a local Ray with the machine's GPU: the paper's UNet trained for ``--steps`` steps
in fp16 (DeepSpeed, torch_autocast with loss scaling), its 1000-step DDPM pools, DINOv2 features
(random weights from a local directory unless ``--dinov2 DIR``: the machine has no network), score
and select over 2 generations of N = ``--n-train``; then the same training in bf16. Prints training
steps/s of each against a plain ``torch.autocast`` loop of the same model in the same run, sampling
images/s, and the peak GPU memory (nvidia-smi, polled). ``--cpu`` runs the same path on a CPU at a
smoke scale (bf16 only), to check the script where there is no GPU.
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


def plain_autocast_rate(dtype, device, steps: int, batch: int = 128) -> float:
    """Steps/s of a plain torch loop (torch.autocast, GradScaler for fp16) on the paper's UNet: the baseline."""
    from collapse import diffusion
    torch.manual_seed(0)
    unet, scheduler = diffusion.build("cifar10-paper")
    unet = unet.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    gen, x0 = torch.Generator().manual_seed(0), torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    warm = min(5, steps - 1)
    for step in range(steps):
        if step == warm:
            sync(device)
            t = time.perf_counter()
        ts, noise = diffusion.draw_timesteps_and_noise(scheduler, x0.shape, gen)
        with torch.autocast(device.type, dtype=dtype):
            loss = diffusion.diffusion_loss(unet, x0, ts.to(device), noise.to(device), scheduler)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
    sync(device)
    return (steps - warm) / (time.perf_counter() - t)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class PeakGpuMemory:
    """The peak of nvidia-smi's memory.used over every process (the run's are Ray workers), polled."""

    def __init__(self):
        import shutil
        import threading
        self.peak, self.ok = 0, shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        import subprocess
        while not self._stop.wait(0.5):
            r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self.peak = max(self.peak, max(int(v) for v in r.stdout.split()))

    def __enter__(self):
        if self.ok:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


def e2e(args) -> None:
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from tests.paper_data import random_dinov2_dir, write_cifar10_archive
    on_gpu = not args.cpu and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    print(f"e2e on {torch.cuda.get_device_name(0) if on_gpu else 'CPU (smoke scale)'}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    archive = write_cifar10_archive(str(work / "cifar-10-python.tar.gz"), train=4 * args.n_train, test=args.n_train)
    dinov2 = args.dinov2 or random_dinov2_dir(str(work / "dinov2"), hidden_size=384, layers=12)  # DINOv2-small's size
    gpus = "1" if on_gpu else "0"
    precisions = ("fp16", "bf16") if on_gpu else ("bf16",)
    for precision in precisions:
        run_dir = work / f"run-{precision}"
        sets = [f"data.source=cifar10:{archive}", f"data.n={args.n_train}", f"data.holdout={args.n_train}",
                f"run.generations={2 if precision == precisions[0] else 1}", f"train.steps={args.steps}", f"train.batch_size={args.batch}",
                f"train.precision={precision}", f"train.log_every={max(1, args.steps // 4)}",
                f"sample.steps={args.sample_steps}", f"sample.batch_size={args.sample_batch}",
                f"metrics.gs_samples={args.n_train}", "metrics.classifier_images=0", f"extractors.dinov2={dinov2}",
                "resources.train_workers=1", "resources.train_cpus=2", f"resources.train_gpus={gpus}",
                "resources.sampler_max_actors=1", "resources.sampler_cpus=2", f"resources.sampler_gpus={gpus}",
                "resources.featurizer_actors=1", "resources.featurizer_cpus=2", f"resources.featurizer_gpus={gpus}",
                "resources.scorer_cpus=2", f"resources.scorer_gpus={gpus}"]
        if precision != precisions[0]:
            sets.append("metrics.features=[pixel]")   # the second run measures training only
        argv = [sys.executable, "-m", "jobs.cli", "run", "--config", "cifar10-paper", "--run-dir", str(run_dir)]
        for s in sets:
            argv += ["--set", s]
        t0 = time.perf_counter()
        with PeakGpuMemory() as mem:
            r = subprocess.run(argv, cwd=root, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)})
        wall = time.perf_counter() - t0
        print("\n".join(r.stdout.splitlines()[-25:]))
        if r.returncode:
            print(r.stderr[-4000:])
            raise SystemExit(f"collapse run ({precision}) failed with {r.returncode}")
        model = json.loads((run_dir / "shared/gen-001/model/manifest.json").read_text())["extra"]
        base = plain_autocast_rate({"fp16": torch.float16, "bf16": torch.bfloat16}[precision], device,
                                   min(args.steps, 60), args.batch)
        rate = model.get("steps_per_s") or float("nan")
        print(f"[{precision}] collapse run {wall:.0f} s; training {rate:.2f} steps/s at batch {args.batch} through Ray Train + "
              f"DeepSpeed against {base:.2f} steps/s of a plain torch.autocast loop: ratio {rate / base:.2f}; "
              f"loss {model['loss_curve'][0][1]:.4f} -> {model['loss_curve'][-1][1]:.4f}"
              + (f"; peak GPU memory {mem.peak} MiB" if mem.ok else ""))
        for rec in sorted((run_dir / "stages").rglob("manifest.json")):
            key = str(rec.parent.relative_to(run_dir / "stages"))
            if key.endswith("/sample"):
                pool = json.loads(((run_dir / key).parent / "pool" / "manifest.json").read_text())
                wall_s = json.loads(rec.read_text())["wall_s"]
                print(f"[{precision}] {key}: {pool['count']} images, {args.sample_steps}-step DDPM, "
                      f"{pool['count'] / wall_s:.1f} images/s over the stage ({wall_s:.0f} s with actor start-up)")
        for m in sorted(run_dir.glob("*/gen-*/metrics.json")):
            f = json.loads(m.read_text())["spaces"]
            print(f"[{precision}] {m.relative_to(run_dir)}: " + "; ".join(
                f"{k}: H {v.get('entropy', float('nan')):.1f} GS {v.get('gs', float('nan')):.2f}" for k, v in f.items()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--e2e", action="store_true", help="the cifar10-paper preset end to end (see the docstring)")
    ap.add_argument("--cpu", action="store_true", help="--e2e on the CPU at a smoke scale")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128, help="the global training batch (the paper's: 128)")
    ap.add_argument("--sample-steps", type=int, default=1000)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--dinov2", default="", help="a local DINOv2 directory (default: random weights, no network)")
    args = ap.parse_args()
    if args.e2e:
        e2e(args)
    else:
        print(torch.__version__, torch.cuda.get_device_name(0))
        science(args.n)
        model()
