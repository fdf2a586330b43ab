"""An exponential moving average of a model's parameters (the weights DDPM samples from).

    theta_ema <- decay * theta_ema + (1 - decay) * theta        after every optimiser step

The average is kept in float32 whatever the model's dtype, keyed by parameter name. Buffers are
not averaged (the UNet has none that train). Parameters must be whole on this process (DDP or
ZeRO stage 1/2; not ZeRO-3, where a rank holds only a shard).
"""
from __future__ import annotations

import torch


class EMA:
    """``EMA(model, decay)``; ``update(model)`` after each step; ``copy_to(model)`` at the end."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters()}

    def _check(self, names) -> None:
        if set(names) != set(self.shadow):
            missing, extra = set(self.shadow) - set(names), set(names) - set(self.shadow)
            raise ValueError(f"model parameters differ from the EMA's: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(extra)[:3]}")

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        self._check(params)
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach().float().to(self.shadow[n].device), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> torch.nn.Module:
        """Write the averaged weights into ``model`` (in place) and return it."""
        params = dict(model.named_parameters())
        self._check(params)
        for n, p in params.items():
            p.copy_(self.shadow[n].to(device=p.device, dtype=p.dtype))
        return model

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {n: t.clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._check(state["shadow"])
        self.decay = float(state["decay"])
        self.shadow = {n: t.float().clone().to(self.shadow[n].device) for n, t in state["shadow"].items()}
