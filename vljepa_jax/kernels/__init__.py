"""Pallas kernels. `flash_attention` is reached through `models.attention.attention(impl="pallas")`."""
from vljepa_jax.kernels.flash import flash_attention

__all__ = ["flash_attention"]
