"""Guided DDIM: the step's version, and what it draws on a small class-conditional model trained here.

The model: ``build_unet`` widths (8, 16) on 8x8 grey images of two classes, class 0 light on the
left half and dark on the right, class 1 dark on top and light below (+-0.5, a little noise), 200
AdamW steps with label dropout 0.2 (~10-15 s on one thread: marked slow). The paper's schedule
(T = 1000, linear betas), DDIM with 20 steps.

How much a sample carries its class: its contrast c = <x, p_y> / <p_y, p_y> against the pattern p_y
of the class it was asked for (x in [-1, 1]; 1 is the pattern at full contrast, 0 none, < 0 the
other class). Measured over training seeds 0-5 with 64 samples each (medians of c; share with
c > 0.6):

    s = 1 (no guidance)           0.74-0.87, 0.73-0.94 (the same for both steps)
    s = 3  clipped-eps (ours)     0.88-1.04, 0.92-0.98   raw guided eps  0.54-0.98, 0.38-1.00
    s = 7  clipped-eps (ours)     0.93-1.20, 0.98-1.00   raw guided eps -0.06-0.81, 0.03-0.72

The raw guided eps keeps, beside the clipped x0, the component that pushed x0 past the range;
the next x_t loses the class (washed out or inverted here, noise on Fashion-MNIST). At s = 3 this
toy does not separate the two steps on every seed, so s = 3 only checks that guidance helps; s = 7,
the scale of the void chains in the README, separates them on every seed.
"""
import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from cluster.sample import SampleSpec, pool_hash, resolve_sampler
from collapse.diffusion import (
    GUIDED_DDIM, build_unet, diffusion_loss, drop_class_labels, guided_epsilon, make_scheduler, sample,
    sampler_variant, tensor_to_images,
)
from collapse.errors import ConfigError
from collapse.seeding import torch_generator

H, STEPS = 8, 20
SEEDS = list(range(64))
LABELS = [i % 2 for i in SEEDS]


def _patterns() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    return torch.stack([torch.where(xx < H // 2, 0.5, -0.5), torch.where(yy < H // 2, -0.5, 0.5)]).float()


@pytest.fixture(scope="module")
def two_classes():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(4)
        model = build_unet(sample_size=H, channels=1, widths=(8, 16), layers_per_block=1,
                           down_attention=(False, False), up_attention=(False, False), norm_num_groups=4,
                           num_classes=2)
        sched, pat, g = make_scheduler(), _patterns(), torch.Generator().manual_seed(4)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(200):
            y = torch.randint(0, 2, (16,), generator=g)
            x0 = pat[y][:, None] + 0.05 * torch.randn(16, 1, H, H, generator=g)
            t = torch.randint(0, 1000, (16,), generator=g)
            eps = torch.randn(16, 1, H, H, generator=g)
            loss = diffusion_loss(model, x0, t, eps, sched, drop_class_labels(y, 0.2, 2, g))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        yield model, sched
    finally:
        torch.set_num_threads(threads)


def raw_guided_ddim(model, sched, seeds, labels, s: float) -> np.ndarray:
    """The guided DDIM of before 1096f3f: sample()'s loop (same x_T per seed, one batch) with the raw
    guided eps kept beside the clipped x0 (diffusers' default, use_clipped_model_output=False)."""
    dd = DDIMScheduler.from_config(sched.config)
    dd.set_timesteps(STEPS)
    x = torch.stack([torch.randn((1, H, H), generator=torch_generator(seed)) for seed in seeds])
    y = torch.tensor(labels)
    with torch.inference_mode():
        for t in dd.timesteps:
            eps = guided_epsilon(model, x, int(t), y, s)
            x = dd.step(eps, int(t), x, eta=0.0, use_clipped_model_output=False).prev_sample
    return tensor_to_images(x)


def contrast(images: np.ndarray, labels) -> np.ndarray:
    """Each image's contrast against the pattern of its class (see the module docstring)."""
    x = images[..., 0].astype(np.float64) / 127.5 - 1
    p = _patterns().numpy()[list(labels)]
    return (x * p).sum(axis=(1, 2)) / (p * p).sum(axis=(1, 2))


def ours(model, sched, s: float, **kw) -> np.ndarray:
    return sample(model, sched, SEEDS, method="ddim", steps=STEPS, class_labels=LABELS, guidance_scale=s, **kw)


@pytest.mark.slow
def test_guided_ddim_keeps_each_class_where_the_raw_guided_eps_loses_it(two_classes):
    model, sched = two_classes
    unguided = ours(model, sched, 1.0)
    assert np.array_equal(raw_guided_ddim(model, sched, SEEDS, LABELS, 1.0), unguided)  # the same loop
    c1 = contrast(unguided, LABELS)
    assert np.median(c1) > 0.6  # the model has learnt its two classes
    c3 = contrast(ours(model, sched, 3.0), LABELS)
    assert np.median(c3) >= np.median(c1) and (c3 > 0.6).mean() >= 0.9
    ours7, raw7 = contrast(ours(model, sched, 7.0), LABELS), contrast(raw_guided_ddim(model, sched, SEEDS, LABELS, 7.0),
                                                                      LABELS)
    assert np.median(ours7) >= 0.9 and (ours7 > 0.6).mean() >= 0.9, "guided DDIM lost the classes at s = 7"
    assert np.median(raw7) <= 0.85 and (raw7 > 0.6).mean() <= 0.8, "the raw guided eps no longer fails: a weak test"
    assert (ours7 > 0.6).mean() - (raw7 > 0.6).mean() >= 0.2


def reference_guided_ddim(model, sched, seeds, labels, s: float) -> np.ndarray:
    """Guided DDIM (eta 0) written out, one sample at a time (the shape batch_invariant uses):
    x0 = clip((x - sqrt(1 - a) eps~) / sqrt(a)), eps' = (x - sqrt(a) x0) / sqrt(1 - a),
    x <- sqrt(a') x0 + sqrt(1 - a') eps'  (a' = 1 past the last step: diffusers' set_alpha_to_one)."""
    dd = DDIMScheduler.from_config(sched.config)
    dd.set_timesteps(STEPS)
    ts = [int(t) for t in dd.timesteps]
    abar = sched.alphas_cumprod.double()
    out = []
    with torch.inference_mode():
        for seed, label in zip(seeds, labels):
            x = torch.randn((1, 1, H, H), generator=torch_generator(seed))
            for i, t in enumerate(ts):
                eps = guided_epsilon(model, x, t, torch.tensor([label]), s).double()
                a, a_prev = abar[t], abar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
                x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
                x = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).float()
            out.append(x)
    return tensor_to_images(torch.cat(out))


@pytest.mark.slow
def test_guided_ddim_is_the_written_out_clipped_eps_step_for_any_batch_size(two_classes):
    model, sched = two_classes
    seeds, labels = SEEDS[:6], LABELS[:6]
    one, three = (sample(model, sched, seeds, method="ddim", steps=STEPS, class_labels=labels, guidance_scale=3.0,
                         batch_size=b, batch_invariant=True) for b in (1, 3))
    assert np.array_equal(one, three)
    ref = reference_guided_ddim(model, sched, seeds, labels, 3.0)
    diff = np.abs(one.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding only
    assert not np.array_equal(one, raw_guided_ddim(model, sched, seeds, labels, 3.0))


def test_the_guided_ddim_step_has_a_version_and_nothing_else_does():
    assert GUIDED_DDIM == "ddim-clipped-eps-v2"  # a new guided DDIM step is a new name (and a resample)
    assert sampler_variant("ddim", 3.0) == sampler_variant("ddim", 0.0) == GUIDED_DDIM
    assert sampler_variant("ddim", 1.0) == sampler_variant("ddpm", 3.0) == sampler_variant("ddpm", 1.0) == ""
    with pytest.raises(ValueError, match="method"):
        sampler_variant("euler", 3.0)


FILES = [{"name": "unet/model.safetensors", "sha256": "ab" * 32, "size": 1}]


def test_pool_hashes_change_for_guided_ddim_only():
    """The hashes of cluster.sample before SampleSpec.sampler existed (pinned from that code)."""
    def h(**kw):
        return pool_hash(resolve_sampler(SampleSpec(**kw)), FILES)
    assert h(count=40, run_seed=7, generation=2, method="ddim", steps=6, shard_size=8, batch_size=4) == \
        "c39c183bbc3ed9ff"
    assert h(count=96, run_seed=0, generation=1, method="ddim", steps=5, num_classes=10) == "83bda1396d351aa0"
    assert h(count=96, run_seed=0, generation=1, method="ddpm", steps=5, guidance_scale=3.0,
             num_classes=10) == "fae1bd04253b5395"
    guided = dict(count=96, run_seed=0, generation=1, method="ddim", steps=5, guidance_scale=3.0, num_classes=10)
    assert h(**guided) != "b59f9fd95910f578"  # the hash its pool had before: it is drawn again
    assert resolve_sampler(SampleSpec(**guided)).sampler == GUIDED_DDIM
    assert h(**guided, sampler=GUIDED_DDIM) == h(**guided)
    with pytest.raises(ConfigError, match="ddim-raw-eps-v1"):
        resolve_sampler(SampleSpec(**guided, sampler="ddim-raw-eps-v1"))
    with pytest.raises(ConfigError, match="diffusers' own step"):
        resolve_sampler(SampleSpec(**{**guided, "guidance_scale": 1.0}, sampler=GUIDED_DDIM))


def test_plans_name_the_guided_ddim_step_in_guided_sample_stages_only():
    from collapse.plan import plan
    from jobs.presets import load_config
    for preset in ("demo", "tiny", "cifar10-paper"):
        assert all("sampler" not in s.params["spec"] for s in plan(load_config(preset)) if s.name == "sample")
    specs = {s.key: s.params["spec"] for s in plan(load_config("guidance-sweep")) if s.name == "sample"}
    assert {k: v.get("sampler") for k, v in specs.items() if k.endswith("gen-001/sample")} == {
        "shared/gen-001/sample": None, "vanilla-g3/gen-001/sample": GUIDED_DDIM,
        "greedy-g3/gen-001/sample": GUIDED_DDIM, "vanilla-g7/gen-001/sample": GUIDED_DDIM,
        "greedy-g7/gen-001/sample": GUIDED_DDIM}
    assert all(("sampler" in v) == (v["guidance_scale"] != 1.0) for v in specs.values())
    ddpm = plan(load_config("guidance-sweep", ["sample.method=ddpm", "sample.steps=50"]))
    assert all("sampler" not in s.params["spec"] for s in ddpm if s.name == "sample")
    assert all(SampleSpec(**v).sampler == v.get("sampler", "") for v in specs.values())  # SampleSpecs


def _inline_actor_pool(items, actor_cls, constructor_kwargs, **_):
    """cluster.runtime.map_actor_pool without Ray: one Sampler in this process, one shard per call."""
    actor = actor_cls(**constructor_kwargs)
    rows = [actor({"shard": [item["shard"]]}) for item in items]
    return [{"record": r["record"][0], "seconds": r["seconds"][0]} for r in rows]


def test_a_pool_of_another_sampler_version_is_refused_and_one_of_other_settings_resampled(tmp_path, monkeypatch):
    import tempfile

    import cluster.sample as cs
    from collapse.data import directories
    from collapse.data import manifest as mf
    from collapse.data.samples import open_sample_set
    from collapse.errors import DataError
    monkeypatch.setattr(cs, "map_actor_pool", _inline_actor_pool)
    torch.manual_seed(0)
    unet = build_unet(sample_size=H, channels=1, widths=(8, 16), layers_per_block=1, down_attention=(False, False),
                      up_attention=(False, False), norm_num_groups=4, num_classes=2)
    model = str(tmp_path / "model")
    with tempfile.TemporaryDirectory() as d:
        from collapse.diffusion import save_model
        save_model(unet, make_scheduler(), d)
        directories.upload_directory(d, model)
    spec = SampleSpec(count=4, run_seed=0, generation=1, method="ddim", steps=2, guidance_scale=3.0, num_classes=2,
                      shard_size=2, batch_size=2)
    pool, said = str(tmp_path / "pool"), []
    made = cs.sample_pool(model, pool, spec, progress=said.append)
    assert made["extra"]["sampler"] == GUIDED_DDIM and made["count"] == 4
    unguided = cs.sample_pool(model, str(tmp_path / "plain"), dataclasses.replace(spec, guidance_scale=1.0),
                              progress=said.append)
    assert "sampler" not in unguided["extra"]
    # a longer run: the same sampler, more samples: un-committed, then every shard drawn again
    said.clear()
    more = cs.sample_pool(model, pool, dataclasses.replace(spec, count=6), progress=said.append)
    assert "sampling it again" in said[0] and "(0 already done)" in said[1]
    assert more["count"] == 6 and more["extra"]["sampler"] == GUIDED_DDIM
    first = open_sample_set(pool).load()[1]
    # a pool of before the version (drawn with the raw guided eps until 1096f3f): refused, left as it is
    old = {**more, "extra": {k: v for k, v in more["extra"].items() if k != "sampler"}, "config_hash": "0" * 16}
    mf.write_manifest(pool, old)
    with pytest.raises(DataError, match="unversioned guided DDIM step"):
        cs.sample_pool(model, pool, dataclasses.replace(spec, count=6), progress=said.append)
    assert mf.read_manifest(pool) == old and np.array_equal(open_sample_set(pool).load()[1], first)
