"""The diffusion model: presets, loss, per-sample-seeded sampling, CFG, conversions, save/load."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler

from collapse.diffusion import (
    EMA, UNET_PRESETS, build, build_unet, diffusion_loss, draw_timesteps_and_noise, drop_class_labels,
    guided_epsilon, images_to_tensor, load_model, make_scheduler, null_class, num_params, sample,
    save_model, tensor_to_images, unet_from_preset,
)
from collapse.seeding import sample_seeds, torch_generator

SEEDS = sample_seeds(7, 1, range(5))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return unet_from_preset("tiny").eval()


@pytest.fixture(scope="module")
def sched20():
    """A 20-step DDPM schedule for speed (tests only; abar_T ~ 0.01, not pure noise).

    Larger betas (abar_T ~ 1e-10) make x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    amplify the network's float rounding by 1e5: fine for a trained model, not for checks of it.
    """
    return make_scheduler(20, beta_start=1e-3, beta_end=0.4)


# ---- presets --------------------------------------------------------------------------------

def test_preset_parameter_counts():
    assert num_params(unet_from_preset("tiny")) == 651_041  # ~0.65M (docs/PLATFORM.md: 651k)
    assert num_params(unet_from_preset("small-28")) == num_params(unet_from_preset("small-32")) == 1_112_801
    n = num_params(unet_from_preset("cifar10-paper"))
    assert abs(n - 16.0e6) <= 0.1e6, n  # docs/SCIENCE.md: 16.0M
    assert num_params(unet_from_preset("tiny", num_classes=10)) - 651_041 == 11 * 4 * 32
    assert num_params(unet_from_preset("narrow")) == 163_985
    assert set(UNET_PRESETS) == {"tiny", "narrow", "small-28", "small-32", "cifar10-paper"}
    unet, sched = build("tiny", num_classes=2)
    assert null_class(unet) == 2 and sched.config.num_train_timesteps == 1000


def test_class_conditioning_and_null_class():
    assert null_class(unet_from_preset("tiny")) is None
    m = unet_from_preset("tiny", num_classes=3)
    assert m.config.num_class_embeds == 4 and null_class(m) == 3


@pytest.mark.parametrize("kw, match", [
    (dict(widths=(32, 64), down_attention=(False,)), "one flag per level"),
    (dict(sample_size=17), "multiple of 2"),
    (dict(widths=(48, 64)), "norm_num_groups"),
    (dict(num_classes=0), "num_classes"),
])
def test_build_unet_rejects_bad_arguments(kw, match):
    base = dict(sample_size=16, channels=1, widths=(32, 64), layers_per_block=1,
                down_attention=(False, False), up_attention=(False, False))
    with pytest.raises(ValueError, match=match):
        build_unet(**{**base, **kw})
    with pytest.raises(ValueError, match="tiny"):
        unet_from_preset("huge")


def test_paper_scheduler():
    c = make_scheduler().config
    assert (c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.prediction_type) == (
        1000, 1e-4, 0.02, "linear", "epsilon")
    with pytest.raises(ValueError, match="beta_start"):
        make_scheduler(10, beta_start=0.5, beta_end=0.1)


# ---- images ---------------------------------------------------------------------------------

def test_image_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    x = images_to_tensor(u)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    np.testing.assert_array_equal(tensor_to_images(x), u[..., None])
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(tensor_to_images(images_to_tensor(rgb)), rgb)
    np.testing.assert_array_equal(tensor_to_images(torch.tensor([-3.0, 3.0]).view(1, 1, 1, 2)), [[[[0], [255]]]])
    assert torch.equal(images_to_tensor(list(u)), x)  # a list of (H, W) images
    with pytest.raises(ValueError, match="uint8"):
        images_to_tensor(u.astype(np.float32))
    with pytest.raises(ValueError, match="one shape"):
        images_to_tensor([u[0], u[0, :4]])


# ---- loss -----------------------------------------------------------------------------------

def test_loss_matches_hand_computation(tiny):
    s = make_scheduler()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 16, 16, generator=g) * 2 - 1
    t, eps = torch.tensor([0, 10, 500, 999]), torch.randn(4, 1, 16, 16, generator=g)
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        eps_hat = tiny(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, t).sample
        want = ((eps - eps_hat) ** 2).mean()
        got = diffusion_loss(tiny, x0, t, eps, s)
    assert torch.isfinite(got) and got.ndim == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        diffusion_loss(tiny, x0, torch.tensor([0, 1, 2, 1000]), eps, s)
    with pytest.raises(ValueError, match="noise the same shape"):
        diffusion_loss(tiny, x0, t, eps[:2], s)
    with pytest.raises(ValueError, match="epsilon"):
        diffusion_loss(tiny, x0, t, eps, DDPMScheduler(prediction_type="v_prediction"))


def test_loss_inputs_and_label_dropout():
    s = make_scheduler()
    t1, n1 = draw_timesteps_and_noise(s, (6, 1, 4, 4), torch.Generator().manual_seed(0))
    t2, n2 = draw_timesteps_and_noise(s, (6, 1, 4, 4), torch.Generator().manual_seed(0))
    assert torch.equal(t1, t2) and torch.equal(n1, n2) and n1.shape == (6, 1, 4, 4)
    assert t1.dtype == torch.int64 and 0 <= int(t1.min()) and int(t1.max()) < 1000
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(drop_class_labels(y, 0.0, 3, g), y)
    assert torch.equal(drop_class_labels(y, 1.0, 3, g), torch.full_like(y, 3))


def test_overfitting_a_few_images_lowers_the_loss():
    torch.manual_seed(0)
    m, s = unet_from_preset("tiny"), make_scheduler()
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    x0 = torch.stack([(xx // 4 + yy // 4) % 2, xx > 7, yy > 7, (xx - 8) ** 2 + (yy - 8) ** 2 < 25]).float()
    x0 = x0[:, None] * 2 - 1  # (4, 1, 16, 16) in [-1, 1]
    g = torch.Generator().manual_seed(1)
    x_eval = x0.repeat(8, 1, 1, 1)
    t_eval, n_eval = draw_timesteps_and_noise(s, x_eval.shape, g)

    def eval_loss():
        with torch.no_grad():
            return diffusion_loss(m, x_eval, t_eval, n_eval, s).item()

    before = eval_loss()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    for _ in range(80):
        xb = x0.repeat(2, 1, 1, 1)
        loss = diffusion_loss(m, xb, *draw_timesteps_and_noise(s, xb.shape, g), s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.25 * before, (before, after)


# ---- sampling -------------------------------------------------------------------------------

def _posterior_step(eps_hat, x_t, alpha_bar_t, alpha_bar_prev, z, clip_range=1.0):
    """One ancestral step written out (Ho et al. 2020, eq. 6-7; diffusers' op order, "fixed_small"):
    the sampler's own DDPM step until 2026-12-06, the reference its replacement must equal bit for bit.
        beta_t = 1 - abar_t / abar_t';  x0_hat = clip((x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t))
        mu = sqrt(abar_t') beta_t / (1 - abar_t) x0_hat + sqrt(1 - beta_t) (1 - abar_t') / (1 - abar_t) x_t
        x_t' = mu + sqrt((1 - abar_t') / (1 - abar_t) beta_t) z"""
    beta_prod_t, beta_prod_prev = 1 - alpha_bar_t, 1 - alpha_bar_prev
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    x0_hat = ((x_t - beta_prod_t ** 0.5 * eps_hat) / alpha_bar_t ** 0.5).clamp(-clip_range, clip_range)
    mu = (alpha_bar_prev ** 0.5 * beta_t) / beta_prod_t * x0_hat + alpha_t ** 0.5 * beta_prod_prev / beta_prod_t * x_t
    if z is None:
        return mu
    return mu + torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, min=1e-20) ** 0.5 * z


@pytest.mark.parametrize("steps", [20, 5])
def test_ddpm_sampling_is_the_written_out_posterior_step_bit_for_bit(tiny, sched20, steps):
    """The sampler's DDPM steps are diffusers' (DDPMScheduler.step with one generator per sample):
    the same images, to the bit, as the posterior step written out with per-sample noise, so pools
    drawn before the change are the pools drawn after it."""
    got = sample(tiny, sched20.config, SEEDS, method="ddpm", steps=steps, batch_size=5)
    s = DDPMScheduler.from_config(sched20.config)
    s.set_timesteps(steps)
    ts = [int(t) for t in s.timesteps]
    gens = [torch_generator(seed) for seed in SEEDS]
    x = torch.stack([torch.randn((1, 16, 16), generator=g) for g in gens])
    with torch.no_grad():
        for i, t in enumerate(ts):
            eps = tiny(x, t).sample.float()
            z = torch.stack([torch.randn((1, 16, 16), generator=g) for g in gens]) if t > 0 else None
            prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = _posterior_step(eps, x, s.alphas_cumprod[t], s.alphas_cumprod[prev] if prev >= 0 else s.one, z)
    np.testing.assert_array_equal(got, tensor_to_images(x))


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.5)])
def test_same_seeds_bit_identical_whatever_the_batch(tiny, sched20, method, eta):
    kw = dict(method=method, eta=eta, batch_invariant=True)
    ref = sample(tiny, sched20.config, SEEDS, batch_size=5, **kw)
    assert ref.shape == (5, 16, 16, 1) and ref.dtype == np.uint8
    for bs in (1, 2):
        np.testing.assert_array_equal(sample(tiny, sched20.config, SEEDS, batch_size=bs, **kw), ref)
    order = [3, 0, 4, 1, 2]
    shuffled = sample(tiny, sched20.config, [SEEDS[i] for i in order], batch_size=2, **kw)
    np.testing.assert_array_equal(shuffled, ref[order])
    split = np.concatenate([sample(tiny, sched20.config, SEEDS[3:], batch_size=5, **kw),
                            sample(tiny, sched20.config, SEEDS[:3], batch_size=3, **kw)])
    np.testing.assert_array_equal(split, np.concatenate([ref[3:], ref[:3]]))
    # No check of batched evaluation against ref here: for an untrained network the DDIM map is
    # chaotic (x0_hat = (x_t - ...) / sqrt(abar_t), clipped), so the network's batch-dependent
    # float rounding can change whole images (see collapse/diffusion/sampling.py).


class _RowWise(torch.nn.Module):
    """A batch-invariant stand-in for a UNet (elementwise), to test the noise plan exactly."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.config = SimpleNamespace(in_channels=2, sample_size=4, num_class_embeds=None)
        self.dtype = torch.float32

    def forward(self, x, t, class_labels=None):
        return SimpleNamespace(sample=torch.tanh(self.w * x + t.view(-1, 1, 1, 1) / 20))


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_noise_plan_is_per_sample_in_batched_mode(sched20, method, eta):
    m, seeds = _RowWise(), sample_seeds(1, 2, range(7))
    ref = sample(m, sched20.config, seeds, method=method, eta=eta, batch_size=7)
    for bs in (1, 3):
        np.testing.assert_array_equal(sample(m, sched20.config, seeds, method=method, eta=eta, batch_size=bs), ref)
    np.testing.assert_array_equal(sample(m, sched20.config, seeds[::-1], method=method, eta=eta)[::-1], ref)
    assert ref.shape == (7, 4, 4, 2)


def test_different_seeds_differ_and_a_rerun_is_identical(tiny, sched20):
    for method in ("ddpm", "ddim"):
        seeds = SEEDS + sample_seeds(8, 1, range(5))
        imgs = sample(tiny, sched20.config, seeds, method=method, batch_size=4)
        assert len({im.tobytes() for im in imgs}) == 10
        np.testing.assert_array_equal(sample(tiny, sched20.config, seeds, method=method, batch_size=4), imgs)


def test_sample_rejects_bad_arguments(tiny, sched20):
    with pytest.raises(ValueError, match="method must be one of"):
        sample(tiny, sched20.config, SEEDS, method="euler")
    with pytest.raises(ValueError, match="steps must lie in"):
        sample(tiny, sched20.config, SEEDS, steps=21)
    with pytest.raises(ValueError, match="eta"):
        sample(tiny, sched20.config, SEEDS, method="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="unconditional"):
        sample(tiny, sched20.config, SEEDS, class_labels=[0] * 5)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample(tiny, sched20.config, SEEDS, guidance_scale=2.0)
    assert sample(tiny, sched20.config, []).shape == (0, 16, 16, 1)


def test_classifier_free_guidance():
    torch.manual_seed(1)
    m = unet_from_preset("tiny", num_classes=3).eval()
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 1])
    t = torch.full((4,), 7)
    with torch.no_grad():
        cond = m(x, t, class_labels=y).sample
        uncond = m(x, t, class_labels=torch.full_like(y, 3)).sample
        assert torch.equal(guided_epsilon(m, x, 7, y, guidance_scale=1.0), cond)
        assert torch.equal(guided_epsilon(m, x, 7, y, guidance_scale=0.0), uncond)
        torch.testing.assert_close(guided_epsilon(m, x, 7, y, 3.0), uncond + 3.0 * (cond - uncond),
                                   rtol=1e-4, atol=1e-5)
    s = make_scheduler(20, 1e-3, 0.4)
    imgs = sample(m, s.config, SEEDS[:4], method="ddim", class_labels=[0, 1, 2, 3], guidance_scale=2.0)
    assert imgs.shape == (4, 16, 16, 1)
    with pytest.raises(ValueError, match="class_labels"):
        sample(m, s.config, SEEDS[:4], method="ddim")
    with pytest.raises(ValueError, match="null class"):
        sample(m, s.config, SEEDS[:2], class_labels=[0, 4])


# ---- save / load ----------------------------------------------------------------------------

def test_save_load_round_trip_and_plain_diffusers_pipeline(tiny, sched20, tmp_path):
    save_model(tiny, sched20, tmp_path / "model")
    unet, sched = load_model(tmp_path / "model")
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(sched.config) == public(sched20.config)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 17])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, tiny(x, t).sample)
    np.testing.assert_array_equal(sample(unet, sched, SEEDS[:2], method="ddim"),  # a scheduler works too
                                  sample(tiny, sched20.config, SEEDS[:2], method="ddim"))
    pipe = DDPMPipeline.from_pretrained(tmp_path / "model")
    out = pipe(batch_size=1, num_inference_steps=2, generator=torch_generator(0), output_type="np")
    assert out.images.shape == (1, 16, 16, 1) and np.isfinite(out.images).all()
    with pytest.raises(ValueError, match="not a saved model"):
        load_model(tmp_path / "nothing")


def test_ema_average_copy_and_state():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    ema = EMA(m, decay=0.9)
    w0 = m.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m)
    torch.testing.assert_close(ema.shadow["weight"], w0 + 0.1)
    restored = EMA(m, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.9
    target = torch.nn.Linear(3, 2)
    assert restored.copy_to(target) is target
    torch.testing.assert_close(target.weight.detach(), w0 + 0.1)
    with pytest.raises(ValueError, match="decay"):
        EMA(m, decay=1.0)
    with pytest.raises(ValueError, match="differ"):
        ema.update(torch.nn.Conv2d(1, 1, 1, bias=False))


def test_ema_warmup_decay_closed_form():
    """d_t = min(decay, (1 + t) / (10 + t)): 0.1 at the first update, decay from t = 8991 on (0.999);
    a constant parameter stays itself, a step change is tracked with the closed-form product."""
    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    with torch.no_grad():
        m.weight.fill_(1.0)
    expected = 0.0
    for t in range(50):
        d = min(0.999, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(d)
        expected = d * expected + (1 - d)
        ema.update(m)
    assert float(ema.shadow["weight"]) == pytest.approx(expected, rel=1e-6)
    # prod_{t<50} d_t = (1*2*..*50) / (10*..*59): the untrained start weighs ~1e-9 after 50 steps
    assert 1 - expected == pytest.approx(np.prod([(1 + t) / (10 + t) for t in range(50)]), rel=1e-5)
    assert 1 - expected < 1e-8
    ema.updates = 9000
    assert ema.current_decay() == 0.999
    restored = EMA(m, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert (restored.warmup, restored.updates, restored.current_decay()) == (True, 9000, 0.999)
    assert EMA(m, decay=0.999).current_decay() == 0.999   # no warm-up: the plain average
