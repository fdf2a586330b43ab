"""The named settings that a plan and a config check read without torch or diffusers: the UNet
presets (built by ``collapse.diffusion.models``, whose docstring tabulates them) and the name of the
training batch scheme (implemented by ``collapse.diffusion.batches``).

The driver and the stage runners only check and hash these names; importing the models for them
cost each of those processes ~3 s of torch and diffusers imports (docs/PLATFORM.md).
"""
from __future__ import annotations

from dataclasses import dataclass

# The name of ``collapse.diffusion.batches``'s scheme (its docstring says what enters the training
# stage's hash and why). Change it whenever the scheme changes.
BATCH_ORDER = "global-batch-v1"


@dataclass(frozen=True)
class UNetPreset:
    """Hyperparameters of one ``UNet2DModel``; ``down_attention[i]``: block i has self-attention."""

    sample_size: int
    channels: int
    widths: tuple[int, ...]
    layers_per_block: int
    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    norm_num_groups: int = 32
    attention_head_dim: int = 8
    dropout: float = 0.0


UNET_PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset(16, 1, (32, 64), 1, (False, False), (False, False)),
    "narrow": UNetPreset(16, 1, (16, 32), 1, (False, False), (False, False), norm_num_groups=8),
    "small-28": UNetPreset(28, 1, (32, 64, 64), 1, (False, False, True), (True, False, False)),
    "small-32": UNetPreset(32, 1, (32, 64, 64), 1, (False, False, True), (True, False, False)),
    "cifar10-paper": UNetPreset(
        32, 3, (48, 48, 96, 96, 192, 192), 2,
        (False, False, False, False, True, False), (False, True, False, False, False, False),
        norm_num_groups=16),
}
