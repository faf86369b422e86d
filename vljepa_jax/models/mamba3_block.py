"""Mamba-3 mixer, block and stack (Linen): an attention-free predictor backbone.

The mixer follows Mamba-3 §3.4 / the official `Mamba3` module: projections of the normed input
give the gate z, the SSM input x, B and C, and per head Δ, A (data-dependent) and the trapezoid
weight λ, plus rotation rates shared across heads. There is no short convolution and no
activation on x (the trapezoid's look-back and the B/C biases replace it). Then

    B, C  <- RMSNorm over the state dim, + per-head bias (init 1), rotated by the cumulative
             phase φ_t = Σ_{i≤t} Δ_i π tanh(θ_i) (wrapped mod 2π; the complex state realised as
             data-dependent RoPE on interleaved pairs (2i, 2i+1) of the first 2·M state dims)
    y     =  (SSM(x) + D x) ⊙ silu(z)  ->  out_proj

with the core in `models/mamba3.py`. Δ = softplus(dd_dt + dt_bias), A = −f(dd_A) with the
heavy-tailed f(u) = 1 + u (u ≥ 0), 1 / (1 − u) (u < 0) of the current official code, clamped to
≤ −1e-4, λ = σ(trap). MIMO of rank R (`mimo_rank`) gives B and C a rank axis and expands x, the gate
and the output per rank with learned per-(head, rank, channel) vectors (App. C; inits 1/R, 1, 1/R),
so `mimo_rank=1` equals SISO (`mimo_rank=None`) at init. Ablations: `trapezoid=False` fixes λ = 1
(Mamba-2's Euler rule), `rotation=False` and `bc_bias=False` drop those parts; their parameters
are then not created.

A layer is Llama-style pre-norm: `h = x + mixer(norm(x))`, then `h + SwiGLU(norm(h))` unless
`intermediate_size` is 0. The stack implements the predictor-backbone interface of
`models/predictor_backbones.py` (`embed(ids)`, `__call__(*, inputs_embeds, attention_mask,
causal)`).

Padding. At a masked position Δ := 0 and x := 0, which makes the SSM step the identity (no
decay, no input, no phase advance, no look-back weight for the next token): padding cannot reach
a valid position in either direction, whatever its embeddings hold.

Bidirectional (`causal=False`). A second direction runs the same core over the time-reversed
sequence, stacked on the batch axis so both directions are one chunked call. The directions
share z, x, D and the output projection and each has its own B, C, Δ, A, λ and rotation
projections, B/C biases and Δ bias (Hydra's split: the per-direction part is a few percent of the
parameters). Fully tied weights would make the layer reversal-equivariant, so mean-pooled
"a b" and "b a" would be indistinguishable. The two SSM outputs are summed (as Vim v2 and Hydra
do) before the D skip, which is added once; a learned mix would be redundant, since each
direction's C projection and bias already scale its contribution. The current token is thus read
by both directions' diagonal (γ) terms, which the separate B/C let the model weigh. The
direction-specific parameters exist (and get zero gradient) in a causal stack too, so one
parameter tree serves both modes.

Streaming (`Mamba3Stack.step`, causal): each layer carries `LayerState(h, bx, phase)`: the SSM
state, the last token's input term (for the trapezoid's look-back) and the running phase.
Stepping token by token equals the full-sequence call.

Logical axis names: the shared vocabulary of `models/layers.py` (embed, heads, head_dim, mlp,
vocab, norm) plus `direction` (forward / backward), `mimo_rank`, `ssm_groups` and `ssm_state`, which no
rule set lists, so they stay replicated.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vljepa_jax.models import layers
from vljepa_jax.models import mamba3
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models.config import ArchConfig

DIRECTIONS = 2  # forward, backward


@dataclasses.dataclass(frozen=True)
class Mamba3Config(ArchConfig):
  vocab_size: int = 128256
  hidden_size: int = 2048
  num_layers: int = 8
  num_heads: int = 64  # d_inner = num_heads * head_dim (expand 2 at these defaults)
  head_dim: int = 64
  state_size: int = 128
  num_groups: int = 1  # B/C projection groups (heads per group share B and C before the per-head bias)
  mimo_rank: int | None = None  # None: SISO; R >= 1: MIMO of rank R
  rope_fraction: float = 0.5  # fraction of the state dims that rotate (in pairs)
  intermediate_size: int = 8192  # SwiGLU MLP after each mixer; 0: mixer-only layers
  rms_norm_eps: float = 1e-5
  chunk_size: int = 64  # tokens per chunk of the chunked SSD
  trapezoid: bool = True  # False: λ = 1 (exponential Euler, Mamba-2-like)
  rotation: bool = True  # data-dependent rotation of B and C (the complex state)
  bc_bias: bool = True  # learned per-head B/C biases, initialised to 1
  causal: bool = True  # default when the call does not say; the VL-JEPA predictor passes causal=False
  remat: bool | str = False  # see layers.REMAT_POLICIES

  def __post_init__(self):
    positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "head_dim", "state_size", "num_groups",
                "chunk_size")
    for name in positive:
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"Mamba3Config.{name} must be a positive int, got {getattr(self, name)!r}")
    if self.num_heads % self.num_groups:
      raise ValueError(f"Mamba3Config.num_groups ({self.num_groups}) must divide num_heads ({self.num_heads})")
    if self.mimo_rank is not None and (not isinstance(self.mimo_rank, int) or self.mimo_rank < 1):
      raise ValueError(f"Mamba3Config.mimo_rank must be None (SISO) or a positive int, got {self.mimo_rank!r}")
    if self.intermediate_size < 0:
      raise ValueError(f"Mamba3Config.intermediate_size must be >= 0, got {self.intermediate_size}")
    if self.rotation:
      pairs = self.state_size * self.rope_fraction / 2
      if not 0 < self.rope_fraction <= 1 or pairs != int(pairs) or pairs < 1:
        raise ValueError(f"Mamba3Config.rope_fraction={self.rope_fraction} with state_size={self.state_size}: "
                         "expected a fraction in (0, 1] giving a whole number (>= 1) of rotated pairs")
    if self.remat not in (False, True, "none") and self.remat not in layers.REMAT_POLICIES:
      raise ValueError(f"Mamba3Config.remat={self.remat!r}: expected False/'none', True/'full' or one of "
                       f"{sorted(layers.REMAT_POLICIES)}")

  @property
  def num_angles(self) -> int:
    """Rotated pairs of state dims (0 without rotation)."""
    return int(self.state_size * self.rope_fraction / 2) if self.rotation else 0

  @property
  def rank(self) -> int:
    return self.mimo_rank or 1


PRESETS = {
    "default": Mamba3Config(),
    "tiny": Mamba3Config(vocab_size=256, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, state_size=8,
                         num_groups=2, intermediate_size=64, chunk_size=8),
}


class LayerState(NamedTuple):
  """What one causal layer carries between streamed tokens (float32)."""
  h: jax.Array  # (batch, heads, state, head_dim) SSM state
  bx: jax.Array  # (batch, heads, state, head_dim) last token's B xᵀ (rotated B)
  phase: jax.Array  # (batch, heads, num_angles) cumulative rotation angle, mod 2π


def initial_state(config: Mamba3Config, batch: int) -> list[LayerState]:
  """The empty history of every layer, for `Mamba3Stack.step`."""
  h, bx = mamba3.zero_state(batch, config.num_heads, config.state_size, config.head_dim)
  phase = jnp.zeros((batch, config.num_heads, config.num_angles), jnp.float32)
  return [LayerState(h, bx, phase) for _ in range(config.num_layers)]


def dt_bias_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Mamba-2's Δ bias: the inverse softplus of a log-uniform draw in [1e-3, 0.1], floored at 1e-4."""
  dt = jnp.exp(jax.random.uniform(key, shape, jnp.float32, math.log(1e-3), math.log(0.1)))
  dt = jnp.maximum(dt, 1e-4)
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


def decay_rate(u: jax.Array) -> jax.Array:
  """A = −f(u), f(u) = 1 + u for u ≥ 0 and 1 / (1 − u) below; each branch sees only its own side
  (no inf in the branch `where` drops, so no NaN gradient), clamped to A ≤ −1e-4."""
  positive = u >= 0
  f = jnp.where(positive, 1.0 + jnp.where(positive, u, 0.0), 1.0 / (1.0 - jnp.where(positive, 0.0, u)))
  return jnp.minimum(-f, -1e-4)


def rotate_pairs(v: jax.Array, phase: jax.Array) -> jax.Array:
  """Rotates interleaved pairs (2i, 2i+1) of v's first 2·M dims by `phase` (..., M); the rest pass."""
  m = phase.shape[-1]
  if m == 0:
    return v
  pairs = v[..., :2 * m].reshape(v.shape[:-1] + (m, 2))
  even, odd = pairs[..., 0], pairs[..., 1]
  cos, sin = jnp.cos(phase), jnp.sin(phase)
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], -1).reshape(v.shape[:-1] + (2 * m,))
  return jnp.concatenate([rotated, v[..., 2 * m:]], -1)


class Mamba3Mixer(nn.Module):
  """`(B, L, D) -> (B, L, D)` Mamba-3 token mixer; `step` for one causal token (see module docstring)."""

  config: Mamba3Config

  def setup(self):
    cfg = self.config
    kw = dict(use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    heads, rank = cfg.num_heads, cfg.rank
    self.z_proj = layers.dense((heads, cfg.head_dim), ("embed", "heads", "head_dim"), **kw)
    self.x_proj = layers.dense((heads, cfg.head_dim), ("embed", "heads", "head_dim"), **kw)
    bc = (DIRECTIONS, rank, cfg.num_groups, cfg.state_size)
    bc_axes = ("embed", "direction", "mimo_rank", "ssm_groups", "ssm_state")
    self.b_proj = layers.dense(bc, bc_axes, **kw)
    self.c_proj = layers.dense(bc, bc_axes, **kw)
    self.dt_proj = layers.dense((DIRECTIONS, heads), ("embed", "direction", "heads"), **kw)
    self.a_proj = layers.dense((DIRECTIONS, heads), ("embed", "direction", "heads"), **kw)
    if cfg.trapezoid:
      self.lam_proj = layers.dense((DIRECTIONS, heads), ("embed", "direction", "heads"), **kw)
    if cfg.rotation:
      self.angle_proj = layers.dense((DIRECTIONS, cfg.num_angles), ("embed", "direction", "ssm_state"), **kw)
    norm_kw = dict(dtype=jnp.float32, param_dtype=cfg.weight_dtype)
    self.b_norm = layers.RMSNorm(cfg.rms_norm_eps, **norm_kw)
    self.c_norm = layers.RMSNorm(cfg.rms_norm_eps, **norm_kw)
    param = lambda name, init, shape, axes: self.param(name, nn.with_logical_partitioning(init, axes), shape,
                                                       cfg.weight_dtype)
    self.dt_bias = param("dt_bias", dt_bias_init, (DIRECTIONS, heads), ("direction", "heads"))
    if cfg.bc_bias:
      bias_axes = ("direction", "heads", "mimo_rank", "ssm_state")
      self.b_bias = param("b_bias", nn.initializers.ones, (DIRECTIONS, heads, rank, cfg.state_size), bias_axes)
      self.c_bias = param("c_bias", nn.initializers.ones, (DIRECTIONS, heads, rank, cfg.state_size), bias_axes)
    self.D = param("D", nn.initializers.ones, (heads,), ("heads",))
    if cfg.mimo_rank is not None:
      vec = lambda value: nn.initializers.constant(value)
      mimo_axes = ("heads", "mimo_rank", "head_dim")
      shape = (heads, rank, cfg.head_dim)
      self.mimo_x = param("mimo_x", vec(1.0 / rank), shape, mimo_axes)
      self.mimo_z = param("mimo_z", vec(1.0), shape, mimo_axes)
      self.mimo_o = param("mimo_o", vec(1.0 / rank), shape, mimo_axes)
    self.out_proj = layers.dense(cfg.hidden_size, ("heads", "head_dim", "embed"), axis=(-2, -1), **kw)

  def _token_terms(self, u: jax.Array, valid: jax.Array, directions: int):
    """Per-token quantities of the first `directions` directions, direction axis at 2 (after batch, length).

    Returns x `(b, L, R, H, P)` (rank-expanded, zero at padding), z `(b, L, H, P)`, and in float32
    dt / A / lam `(b, L, d, H)` (dt zero at padding), B / C `(b, L, d, R, H, N)` normed and biased but
    not yet rotated, and the phase increments `(b, L, d, H, M)`.
    """
    cfg = self.config
    f32 = lambda v: v.astype(jnp.float32)
    head = lambda v: v[:, :, :directions]
    z = self.z_proj(u)
    x = self.x_proj(u) * valid[..., None, None].astype(u.dtype)
    x = x[:, :, None] if cfg.mimo_rank is None else x[:, :, None] * jnp.swapaxes(self.mimo_x, 0, 1).astype(x.dtype)
    dt = jax.nn.softplus(f32(head(self.dt_proj(u))) + f32(self.dt_bias[:directions]))
    dt = dt * valid[..., None, None].astype(jnp.float32)
    A = decay_rate(f32(head(self.a_proj(u))))
    lam = jax.nn.sigmoid(f32(head(self.lam_proj(u)))) if cfg.trapezoid else jnp.ones_like(dt)
    per_group = cfg.num_heads // cfg.num_groups

    def bc(proj, norm, bias):
      v = jnp.repeat(norm(f32(head(proj(u)))), per_group, axis=-2)  # (b, L, d, R, H, N)
      if bias is not None:
        v = v + jnp.swapaxes(f32(bias[:directions]), 1, 2)  # (d, H, R, N) -> (d, R, H, N)
      return v

    B = bc(self.b_proj, self.b_norm, self.b_bias if cfg.bc_bias else None)
    C = bc(self.c_proj, self.c_norm, self.c_bias if cfg.bc_bias else None)
    if cfg.rotation:
      rate = jnp.pi * jnp.tanh(f32(head(self.angle_proj(u))))  # (b, L, d, M), shared by the heads
      dphase = dt[..., None] * rate[:, :, :, None, :]
    else:
      dphase = jnp.zeros(dt.shape + (0,), jnp.float32)
    return x, z, dt, A, lam, B, C, dphase

  def _output(self, y: jax.Array, x: jax.Array, z: jax.Array) -> jax.Array:
    """D skip, gate, rank reduction and output projection: y, x `(b, L, R, H, P)`, z `(b, L, H, P)`."""
    cfg = self.config
    y = y + self.D.astype(y.dtype)[:, None] * x
    if cfg.mimo_rank is None:
      out = y[:, :, 0] * jax.nn.silu(z)
    else:
      gate = jax.nn.silu(z[:, :, None] * jnp.swapaxes(self.mimo_z, 0, 1).astype(z.dtype))
      out = jnp.sum(y * gate * jnp.swapaxes(self.mimo_o, 0, 1).astype(y.dtype), axis=2)
    return self.out_proj(out)

  def _core(self, x, dt, A, lam, B, C, initial_state=None):
    """The SSM over `(batch, L, ...)` inputs with the rank axis, from `initial_state` (None: zeros)."""
    cfg = self.config
    if cfg.mimo_rank is None:
      y, state = mamba3.ssd(x[:, :, 0], dt, A, B[:, :, 0], C[:, :, 0], lam, chunk_size=cfg.chunk_size,
                            initial_state=initial_state)
      return y[:, :, None], state
    return mamba3.mimo_ssd(x, dt, A, B, C, lam, chunk_size=cfg.chunk_size, initial_state=initial_state)

  def __call__(self, u: jax.Array, mask: jax.Array | None, causal: bool, state: LayerState | None = None,
               return_state: bool = False):
    """`(B, L, D) -> (B, L, D)`; with `return_state` (causal only) also the `LayerState` after the last token.

    `state` continues a causal sequence from an earlier call's (or `step`'s) state: one call over
    a sequence equals two calls over its halves with the first's state carried. A right-padded
    position is an identity step except that it leaves no look-back (its input term is zero), so
    a sequence continued after padding starts its trapezoid afresh.
    """
    batch, length = u.shape[:2]
    valid = jnp.ones((batch, length), bool) if mask is None else mask.astype(bool)
    if not causal and (state is not None or return_state):
      raise ValueError("a Mamba-3 state is carried in causal mode only (the backward direction reads the future)")
    directions = 1 if causal else DIRECTIONS
    x, z, dt, A, lam, B, C, dphase = self._token_terms(u, valid, directions)

    def oriented(v):  # the backward direction reads the sequence reversed
      return v if causal else jnp.concatenate([v[:, :, :1], jnp.flip(v[:, :, 1:], 1)], 2)

    def to_batch(v):  # (b, L, d, ...) -> (d * b, L, ...): both directions in one core call
      v = jnp.moveaxis(v, 2, 0)
      return v.reshape((directions * batch,) + v.shape[2:])

    dt, A, lam, B, C, dphase = (to_batch(oriented(v)) for v in (dt, A, lam, B, C, dphase))
    phase = jnp.cumsum(dphase, axis=1)
    if state is not None:
      phase = phase + state.phase[:, None]
    phase = jnp.mod(phase, 2 * jnp.pi)  # (d*b, L, H, M)
    B, C = (rotate_pairs(v, phase[:, :, None]) for v in (B, C))
    xs = x if causal else jnp.concatenate([x, jnp.flip(x, 1)], 0)
    y, (h, bx) = self._core(xs, dt, A, lam, B, C, None if state is None else (state.h, state.bx))
    if not causal:
      y = y[:batch] + jnp.flip(y[batch:], 1)
    out = self._output(y, x, z)
    # Padding advances no phase, so the last position holds the last valid token's phase.
    return (out, LayerState(h, bx, phase[:, -1])) if return_state else out

  def step(self, u: jax.Array, state: LayerState) -> tuple[jax.Array, LayerState]:
    """One causal token `u (b, D)` -> `(b, D)` and the updated state."""
    cfg = self.config
    x, z, dt, A, lam, B, C, dphase = self._token_terms(u[:, None], jnp.ones(u.shape[:1] + (1,), bool), 1)
    x, z, dt, A, lam, B, C, dphase = (v[:, 0] for v in (x, z, dt, A, lam, B, C, dphase))
    dt, A, lam, B, C, dphase = (v[:, 0] for v in (dt, A, lam, B, C, dphase))  # the forward direction
    phase = jnp.mod(state.phase + dphase, 2 * jnp.pi)
    B, C = (rotate_pairs(v, phase[:, None]) for v in (B, C))
    core_state = (state.h, state.bx)
    if cfg.mimo_rank is None:
      y, (h, bx) = mamba3.ssd_step(core_state, x[:, 0], dt, A, B[:, 0], C[:, 0], lam)
      y = y[:, None]
    else:
      y, (h, bx) = mamba3.mimo_ssd_step(core_state, x, dt, A, B, C, lam)
    out = self._output(y[:, None], x[:, None], z[:, None])[:, 0]
    return out, LayerState(h, bx, phase)


class Mamba3Layer(nn.Module):
  """Pre-norm residual block: `h = x + mixer(norm(x))`, then `h + SwiGLU(norm(h))` (if intermediate_size)."""

  config: Mamba3Config

  def setup(self):
    cfg = self.config
    kw = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
    self.input_norm = layers.RMSNorm(cfg.rms_norm_eps, **kw)
    self.mixer = Mamba3Mixer(cfg)
    if cfg.intermediate_size:
      self.post_mixer_norm = layers.RMSNorm(cfg.rms_norm_eps, **kw)
      self.mlp = layers.Mlp(cfg.intermediate_size, activation="silu", gated=True, use_bias=False, **kw)

  def _mlp(self, h: jax.Array) -> jax.Array:
    return h + self.mlp(self.post_mixer_norm(h)) if self.config.intermediate_size else h

  def __call__(self, x: jax.Array, mask: jax.Array | None, causal: bool, state: LayerState | None = None,
               return_state: bool = False):
    mixed = self.mixer(self.input_norm(x), mask, causal, state, return_state)
    mixed, state = mixed if return_state else (mixed, None)
    out = layers.constrain_activations(self._mlp(x + mixed))
    return (out, state) if return_state else out

  def step(self, x: jax.Array, state: LayerState) -> tuple[jax.Array, LayerState]:
    mixed, state = self.mixer.step(self.input_norm(x), state)
    return self._mlp(x + mixed), state


class Mamba3Stack(nn.Module):
  """`apply(v, inputs_embeds=..., attention_mask=..., causal=...) -> (B, L, D)` final-normed hidden states.

  `method="embed"` gives token embeddings; `attention_mask` is 1 for tokens, 0 for padding (any
  position; padding is an identity step). `method="step"` streams one token of a causal stack:
  `hidden (B, D), state = apply(v, token_embeds (B, D), state, method="step")`, starting from
  `initial_state(config, batch)`.
  """

  config: Mamba3Config

  def setup(self):
    cfg = self.config
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        embedding_init=nn.with_logical_partitioning(layers.default_kernel_init, ("vocab", "embed")))
    self.layers = self.make_layers()
    self.final_norm = layers.RMSNorm(cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)

  def make_layers(self) -> list[nn.Module]:
    """The stack's layers (`layers_0`, `layers_1`, ...); subclasses (the hybrid) interleave other kinds."""
    # `causal` picks the directions and `return_state` the outputs: both static.
    block = layers.remat_block(Mamba3Layer, self.config.remat, static_argnums=(3, 5))
    return [block(self.config) for _ in range(self.config.num_layers)]

  def call_layer(self, index: int, layer: nn.Module, x: jax.Array, mask: jax.Array | None, causal: bool,
                 state: LayerState | None = None, return_state: bool = False):
    """Layer `index` over `x`; with `return_state`, `(x, its LayerState)` (see `Mamba3Mixer.__call__`)."""
    return layer(x, mask, causal, state, return_state)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    """Token embeddings `(B, L, D)` in the compute dtype."""
    return self.embed_tokens(input_ids)

  def __call__(self, input_ids: jax.Array | None = None, attention_mask: jax.Array | None = None, *,
               inputs_embeds: jax.Array | None = None, causal: bool | None = None,
               initial_state: list[LayerState] | None = None, return_state: bool = False):
    """Final-normed hidden states `(B, L, D)`; with `return_state`, `(hidden, per-layer states)`.

    `initial_state` (causal only) continues from an earlier call's or `step`'s states: a stream
    can be fed in chunks of any length, and stepped token by token from any chunk's end.
    """
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("pass exactly one of input_ids and inputs_embeds")
    causal = self.config.causal if causal is None else causal
    if inputs_embeds is None:
      x = self.embed(input_ids)
    else:
      if inputs_embeds.shape[-1] != self.config.hidden_size:
        raise ValueError(f"inputs_embeds has width {inputs_embeds.shape[-1]}; expected hidden_size "
                         f"{self.config.hidden_size}")
      x = inputs_embeds.astype(self.config.compute_dtype)
      if self.is_initializing():  # the table must exist in the init tree
        self.embed(jnp.zeros((1, 1), jnp.int32))
    if attention_mask is not None and attention_mask.shape != x.shape[:2]:
      raise ValueError(f"attention_mask has shape {attention_mask.shape}; expected (batch, length) = {x.shape[:2]}")
    x = layers.constrain_activations(x)
    if initial_state is not None and len(initial_state) != len(self.layers):
      raise ValueError(f"initial_state has {len(initial_state)} layer states; expected {len(self.layers)} "
                       "(initial_state(config, batch))")
    if not return_state and initial_state is None:
      for index, layer in enumerate(self.layers):
        x = self.call_layer(index, layer, x, attention_mask, causal)
      return self.final_norm(x)
    states = []
    for index, layer in enumerate(self.layers):
      x, layer_state = self.call_layer(index, layer, x, attention_mask, causal,
                                       None if initial_state is None else initial_state[index], True)
      states.append(layer_state)
    hidden = self.final_norm(x)
    return (hidden, states) if return_state else hidden

  def step(self, inputs_embeds: jax.Array, state: list[LayerState]) -> tuple[jax.Array, list[LayerState]]:
    """One token per sequence, `(B, D)`, through the causal stack; returns `(B, D)` and the new states."""
    if len(state) != len(self.layers):
      raise ValueError(f"state has {len(state)} layer states; expected {len(self.layers)} (initial_state)")
    x = inputs_embeds.astype(self.config.compute_dtype)
    new_state = []
    for layer, layer_state in zip(self.layers, state):
      x, layer_state = layer.step(x, layer_state)
      new_state.append(layer_state)
    return self.final_norm(x), new_state


def forward_flops(config: Mamba3Config, tokens: int) -> float:
  """Forward matmul FLOPs over one sequence (see models/flops.py), both directions when not causal.

  Per layer: projections (both directions' B/C/Δ/A/λ/angle projections always run), the chunked
  SSD per direction (within-chunk C·B and its application to x, chunk states, state outputs; MIMO
  multiplies the chunk's tokens by R), the output projection and the SwiGLU MLP.
  """
  c = config
  inner = c.num_heads * c.head_dim
  small = DIRECTIONS * (2 * c.rank * c.num_groups * c.state_size + 3 * c.num_heads + c.num_angles)
  projections = 2 * tokens * c.hidden_size * (2 * inner + small) + 2 * tokens * inner * c.hidden_size
  chunk = min(c.chunk_size, tokens) * c.rank  # rank-expanded tokens per chunk
  per_direction = (2 * tokens * c.rank * chunk * c.num_heads * (c.state_size + c.head_dim)
                   + 4 * tokens * c.rank * c.num_heads * c.state_size * c.head_dim)
  ssd = per_direction * (1 if c.causal else DIRECTIONS)
  mlp = 6 * tokens * c.hidden_size * c.intermediate_size
  return float(c.num_layers * (projections + ssd + mlp))


def matched_config(other: ArchConfig) -> Mamba3Config:
  """A Mamba-3 stack at another backbone's width, depth, vocabulary and MLP size.

  Expand 2 (inner width 2 x hidden) in 64-wide heads (narrower below width 256), state size
  hidden / 2 capped at 128 (the paper's 1.5B model: 2048 wide, state 128), one B/C group, SISO.
  """
  fields = predictor_backbones.shared_fields(other)
  hidden = fields["hidden_size"]
  head_dim = 64 if hidden >= 256 else max(1, hidden // 4)
  if "intermediate_size" not in fields:
    fields["intermediate_size"] = 4 * hidden
  state_size = max(4, min(128, hidden // 2) // 4 * 4)  # a multiple of 4: half of it rotates, in pairs
  return Mamba3Config(**fields, num_heads=max(1, 2 * hidden // head_dim), head_dim=head_dim, state_size=state_size)


PREDICTOR_BACKBONE = predictor_backbones.Backbone(module=Mamba3Stack, config=Mamba3Config,
                                                  token_embedding="embed_tokens", forward_flops=forward_flops,
                                                  matched_config=matched_config, initial_state=initial_state)
