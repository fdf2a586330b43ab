"""An exponential moving average of a model's parameters (the weights DDPM samples from).

    theta_ema <- d_t * theta_ema + (1 - d_t) * theta            after optimiser step t = 0, 1, ...

with d_t = decay, or, with ``warmup``, d_t = min(decay, (1 + t) / (10 + t)) (the warm-up of
TensorFlow's ExponentialMovingAverage with ``num_updates``, also diffusers' ``EMAModel`` with
``use_ema_warmup=False``): the average forgets the untrained start after tens of steps instead of
~1/(1 - decay), so a short run (hundreds of steps at decay 0.999) samples from trained weights.

The average is kept in float32 whatever the model's dtype, keyed by parameter name. Buffers are
not averaged (the UNet has none that train). Parameters must be whole on this process (DDP or
ZeRO stage 1/2; not ZeRO-3, where a rank holds only a shard).
"""
from __future__ import annotations

import torch


class EMA:
    """``EMA(model, decay, warmup=False)``; ``update(model)`` after each step; ``copy_to(model)`` at the end."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def _check(self, names) -> None:
        if set(names) != set(self.shadow):
            missing, extra = set(self.shadow) - set(names), set(names) - set(self.shadow)
            raise ValueError(f"model parameters differ from the EMA's: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(extra)[:3]}")

    def current_decay(self) -> float:
        """d_t of the next update."""
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        self._check(params)
        d = self.current_decay()
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach().float().to(self.shadow[n].device), 1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        """Write the averaged weights into ``model`` (in place) and return it."""
        params = dict(model.named_parameters())
        self._check(params)
        for n, p in params.items():
            p.copy_(self.shadow[n].to(device=p.device, dtype=p.dtype))
        return model

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates,
                "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._check(state["shadow"])
        self.decay = float(state["decay"])
        self.warmup, self.updates = bool(state.get("warmup", False)), int(state.get("updates", 0))
        self.shadow = {n: t.float().clone().to(self.shadow[n].device) for n, t in state["shadow"].items()}
