"""What names a sampler and which of a sample spec's fields enter its hashes (pure: no torch).

The plan (collapse.plan) hashes the sample stage's spec, and the pool (cluster.sample) hashes the
same spec with its model's files; both drop the same optional fields when they hold their
defaults, here, so that runs written before a field existed keep their hashes.
"""
from __future__ import annotations

METHODS = ("ddpm", "ddim")

# The guided DDIM step's version. v1 (until 1096f3f) kept the raw guided eps beside the clipped x0_hat;
# v2 takes the eps of the clipped x0_hat. It enters the hash of every guided DDIM pool and sample stage
# (cluster.sample, collapse.plan) and the pool's manifest: a pool drawn by another version is refused,
# never mixed with this one's. Change it whenever the guided DDIM step changes what it draws.
GUIDED_DDIM = "ddim-clipped-eps-v2"

# fields hashed only when set: () balanced classes; "" the unversioned step of an unguided sampler
OPTIONAL_FIELDS = {"class_weights": (), "sampler": ""}


def sampler_variant(method: str, guidance_scale: float) -> str:
    """The version of the step that ``sample(method=..., guidance_scale=...)`` takes: ``GUIDED_DDIM`` for
    guided DDIM (guidance_scale != 1), else "" (diffusers' own step, unchanged since pools were first drawn)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return GUIDED_DDIM if method == "ddim" and float(guidance_scale) != 1.0 else ""


def hashed_fields(spec: dict) -> dict:
    """``spec`` without the optional fields that hold their defaults (OPTIONAL_FIELDS)."""
    return {k: v for k, v in spec.items() if k not in OPTIONAL_FIELDS or (v and v != OPTIONAL_FIELDS[k])}
