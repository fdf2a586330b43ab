"""Every paper preset runs end to end on the CPU (issue 21): `collapse run --config <preset>` as a user
starts it, on the session's Ray head, with only sizes shrunk through --set.

Kept as the preset has them: the UNet, the image size and mode, the sampler method, the paradigm,
the strategies and their feature spaces (DINOv2 from a local directory of random weights, as an
offline cluster loads it). Shrunk: N, the held-out set, steps (2, one checkpoint), pool sizes, and
generations: cifar10-paper runs 2 (a selection in DINOv2 space and the trainings on it) with its
selecting strategies only (vanilla is the chain every other end-to-end test runs), the other presets
1 (their model, data, sampler and spaces; selection and the paradigms' later generations are the
same code); cifar10-paper-accumulate, whose generation 1 is cifar10-paper's, computes the Inception
FID beside the preset's spaces. Changed because this machine has no GPU:
resources (1 CPU each, no GPU) and precision. The presets' fp16 needs a GPU; bf16 autocast runs
where the CPU has bf16 instructions (avx512_bf16 or AMX), and fp32 elsewhere: emulated bf16 on
these AVX2 cores took 10.5 s per step of the paper's UNet at batch 8 against 0.9 s in fp32. The bf16
CPU path is trained through Ray Train and DeepSpeed in tests/cluster/test_train.py (tiny UNet).
The CIFAR-10 presets read a CIFAR-10 archive in the official python format (tests/paper_data.py).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from collapse.data import manifest as mf
from collapse.plan import plan
from jobs.presets import load_config
from tests import ray_logs
from tests.paper_data import random_dinov2_dir, random_inception_file, write_cifar10_archive

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

SMOKE = ["data.n=32", "data.holdout=32",
         "train.steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=2",
         "sample.steps=3", "sample.batch_size=32", "sample.shard_size=32",
         "metrics.gs_samples=32", "metrics.classifier_images=64", "metrics.classifier_epochs=1",
         "resources.train_workers=1", "resources.train_cpus=1", "resources.train_gpus=0",
         "resources.sampler_min_actors=1", "resources.sampler_max_actors=1", "resources.sampler_cpus=1",
         "resources.sampler_gpus=0", "resources.featurizer_actors=1", "resources.featurizer_cpus=1",
         "resources.featurizer_gpus=0", "resources.scorer_cpus=1", "resources.scorer_gpus=0"]
PRESETS = {"cifar10-paper": "cifar10", "cifar10-paper-accumulate": "cifar10", "fashion-mnist-28": "fashion-mnist",
           "demo-gpu": None}
GENERATIONS = {"cifar10-paper": 2}
STRATEGIES = {"cifar10-paper": "greedy,tdf"}   # the preset's own definitions of the two, by name


def cpu_has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISION = "bf16" if cpu_has_bf16() else "fp32"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("paper")
    return {"cifar10": f"cifar10:{write_cifar10_archive(str(d / 'cifar-10-python.tar.gz'), train=100, test=40)}",
            "dinov2": random_dinov2_dir(str(d / "dinov2")),
            "inception": random_inception_file(str(d / "pt_inception-random.pth"))}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_paper_preset_runs_end_to_end_on_a_cpu(preset, weights, ray_head, tmp_path):
    run_dir = tmp_path / preset
    generations = GENERATIONS.get(preset, 1)
    sets = SMOKE + [f"run.generations={generations}", f"train.precision={PRECISION}",
                    f"extractors.dinov2={weights['dinov2']}"]
    if preset in STRATEGIES:
        sets.append(f"strategies={STRATEGIES[preset]}")
    if PRESETS[preset] == "cifar10":
        sets.append(f"data.source={weights['cifar10']}")
        if preset == "cifar10-paper-accumulate":  # the literature's FID beside the preset's spaces (README: metrics)
            sets += ["metrics.features=[pixel, dinov2, inception]", f"extractors.inception={weights['inception']}"]
    elif PRESETS[preset]:
        sets.append(f"data.source={PRESETS[preset]}")
    argv = [sys.executable, "-m", "jobs.cli", "run", "--config", preset, "--run-dir", str(run_dir)]
    for s in sets:
        argv += ["--set", s]
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                       env={**ray_head.env, "PYTHONPATH": str(ROOT)})
    out = r.stdout + r.stderr
    print(f"{preset}: {time.perf_counter() - t0:.0f} s\n{r.stdout[-3000:]}")
    assert r.returncode == 0 and "Traceback" not in ray_logs.ours(out), out[-5000:]

    # every stage of the plan committed, the preset's model and feature spaces used
    planned = plan(load_config(preset, [*sets, f"run.run_dir={run_dir}"]))
    committed = list((run_dir / "stages").rglob(mf.MANIFEST_NAME))
    assert sorted(str(p.parent.relative_to(run_dir / "stages")) for p in committed) == \
        sorted(st.key for st in planned), sorted(str(p) for p in committed)
    config = (run_dir / "config.yaml").read_text()
    assert f"precision: {PRECISION}" in config
    last = f"gen-{generations:03d}"
    strategies = [p.name for p in run_dir.iterdir() if (p / last / "metrics.json").is_file()]
    assert len(strategies) == (len(STRATEGIES[preset].split(",")) if generations > 1 else 1), strategies
    for s in strategies:
        m = json.loads((run_dir / s / last / "metrics.json").read_text())
        spaces = set(m["spaces"])
        assert {"pixel"} <= spaces, m.keys()
        for space in ("dinov2", "inception"):
            if f"- {space}" in config or f" {space}]" in config or f" {space}," in config:
                assert space in spaces and m["spaces"][space].get("fd") is not None, (space, m["spaces"].keys())

    # the last generation's model is float32 and samples in a plain diffusers pipeline
    from diffusers import DDPMPipeline
    pipe = DDPMPipeline.from_pretrained(str(run_dir / strategies[0] / last / "model"))
    assert pipe.unet.dtype == torch.float32
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape[0] == 2 and images.shape[1] == pipe.unet.config.sample_size
