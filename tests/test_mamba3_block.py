"""Mamba-3 mixer and stack (`models/mamba3_block.py`) on tiny configs.

The mixer is checked against `naive_mixer`, a float64 NumPy reading of its parameters written from
the Mamba-3 block description (projections, BCNorm, per-head B/C biases, cumulative rotation,
the trapezoidal recurrence of `test_mamba3.naive`, D skip, SiLU gate), for each ablation switch
and MIMO; the stack for padding invariance, streaming, directionality and axis names.
"""
from __future__ import annotations

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_mamba3 import naive

from vljepa_jax.models import mamba3_block

jax.config.update("jax_default_matmul_precision", "highest")

TINY = mamba3_block.PRESETS["tiny"]


def _rms(v, scale, eps):
  return v / np.sqrt(np.mean(v * v, -1, keepdims=True) + eps) * scale


def _rotate(v, phase):
  """Rotates interleaved pairs (2i, 2i+1) of the first 2M dims by phase (..., M), unwrapped."""
  m = phase.shape[-1]
  out = v.copy()
  even, odd = v[..., 0:2 * m:2], v[..., 1:2 * m:2]
  out[..., 0:2 * m:2] = even * np.cos(phase) - odd * np.sin(phase)
  out[..., 1:2 * m:2] = even * np.sin(phase) + odd * np.cos(phase)
  return out


def naive_mixer(cfg, p, u, mask, causal):
  """float64 reference of `Mamba3Mixer` from its parameters `p` (the mixer's param dict)."""
  p = jax.tree.map(lambda v: np.asarray(v, np.float64), p)
  u = np.asarray(u, np.float64)
  m = np.asarray(mask, np.float64)
  heads = cfg.num_heads
  z = np.einsum("bld,dhp->blhp", u, p["z_proj"]["kernel"])
  x = np.einsum("bld,dhp->blhp", u, p["x_proj"]["kernel"]) * m[..., None, None]
  xr = x[:, :, None] if cfg.mimo_rank is None else x[:, :, None] * p["mimo_x"].transpose(1, 0, 2)
  y = 0.0
  for d in range(1 if causal else 2):
    flip = (lambda v: v) if d == 0 else (lambda v: v[:, ::-1])
    ud, md, xd = flip(u), flip(m), flip(xr)
    proj = lambda name: np.einsum("bld,d...->bl...", ud, p[name]["kernel"][:, d])
    dt = np.log1p(np.exp(proj("dt_proj") + p["dt_bias"][d])) * md[..., None]
    a_raw = proj("a_proj")
    A = np.minimum(-np.where(a_raw >= 0, 1 + a_raw, 1 / (1 - np.minimum(a_raw, 0))), -1e-4)
    lam = 1 / (1 + np.exp(-proj("lam_proj"))) if cfg.trapezoid else np.ones_like(dt)
    group = np.arange(heads) // (heads // cfg.num_groups)

    def bc(name, norm, bias):
      v = _rms(proj(name), p[norm]["scale"], cfg.rms_norm_eps)[:, :, :, group]  # (b, L, R, H, N)
      if cfg.bc_bias:
        v = v + p[bias][d].transpose(1, 0, 2)
      if cfg.rotation:
        rate = np.pi * np.tanh(proj("angle_proj"))  # (b, L, M)
        phase = np.cumsum(dt[..., None] * rate[:, :, None], axis=1)  # (b, L, H, M)
        v = _rotate(v, phase[:, :, None])
      return v

    yd, _ = naive(xd, dt, A, bc("b_proj", "b_norm", "b_bias"), bc("c_proj", "c_norm", "c_bias"), lam)
    y = y + flip(yd)
  y = y + p["D"][:, None] * xr
  silu = lambda v: v / (1 + np.exp(-v))
  if cfg.mimo_rank is None:
    out = y[:, :, 0] * silu(z)
  else:
    gate = silu(z[:, :, None] * p["mimo_z"].transpose(1, 0, 2))
    out = np.sum(y * gate * p["mimo_o"].transpose(1, 0, 2), axis=2)
  return np.einsum("blhp,hpd->bld", out, p["out_proj"]["kernel"])


def random_params(module, seed, *args, **kwargs):
  """Random values (NumPy, N(0, 0.3²)) in the shapes `module.init` would give, so that every parameter
  matters (biases, mimo vectors and D away from their inits). `jax.eval_shape` skips compiling the
  initialisers (their RNG alone takes seconds to compile on CPU); the real inits are covered below."""
  abstract = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs)))
  r = np.random.default_rng(seed)
  return jax.tree.map(lambda a: (0.3 * r.normal(size=a.shape)).astype(a.dtype), abstract)


@pytest.mark.parametrize("causal,overrides", [
    (True, dict()), (False, dict()), (False, dict(trapezoid=False, rotation=False)),
    (True, dict(bc_bias=False, mimo_rank=2)), (False, dict(rope_fraction=1.0, num_groups=1, mimo_rank=3)),
])
def test_mixer_matches_naive_reference(causal, overrides):
  cfg = TINY.replace(**overrides)
  r = np.random.default_rng(0)
  u = r.normal(size=(2, 13, cfg.hidden_size)).astype(np.float32)
  mask = np.ones((2, 13), np.int32)
  mask[1, 9:] = 0
  mixer = mamba3_block.Mamba3Mixer(cfg)
  params = random_params(mixer, 2, u, mask, causal)["params"]
  names = set(params)
  assert ("lam_proj" in names) == cfg.trapezoid and ("angle_proj" in names) == cfg.rotation
  assert ("b_bias" in names) == cfg.bc_bias and ("mimo_x" in names) == (cfg.mimo_rank is not None)
  out = jax.jit(mixer.apply, static_argnums=3)({"params": params}, u, mask, causal)
  ref = naive_mixer(cfg, params, u, mask, causal)
  np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def _stack(cfg, batch=2, length=13, seed=0):
  r = np.random.default_rng(seed)
  embeds = r.normal(size=(batch, length, cfg.hidden_size)).astype(np.float32)
  model = mamba3_block.Mamba3Stack(cfg)
  params = random_params(model, seed, inputs_embeds=embeds, causal=False)
  run = jax.jit(lambda v, e, m, causal: model.apply(v, inputs_embeds=e, attention_mask=m, causal=causal),
                static_argnums=3)
  return model, params, embeds, run


def test_padding_does_not_reach_valid_tokens():
  causal = False  # the harder case: the backward scan starts in the padding
  _, params, embeds, run = _stack(TINY)
  valid = 9
  mask = np.ones((2, 13), np.int32)
  mask[:, valid:] = 0
  out = run(params, embeds, mask, causal)
  garbage = embeds.copy()
  garbage[:, valid:] = 100.0 * np.random.default_rng(5).normal(size=garbage[:, valid:].shape)
  np.testing.assert_array_equal(run(params, garbage, mask, causal)[:, :valid], out[:, :valid])
  # The same tokens without the padding (a different length, so different chunking) agree too.
  short = run(params, embeds[:, :valid], np.ones((2, valid), np.int32), causal)
  np.testing.assert_allclose(out[:, :valid], short, rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides", [dict(), dict(mimo_rank=2, trapezoid=False)])
def test_streaming_step_equals_full_sequence(overrides):
  cfg = TINY.replace(**overrides)
  model, params, embeds, run = _stack(cfg, length=11)
  full = run(params, embeds, None, True)
  step = jax.jit(lambda v, e, s: model.apply(v, e, s, method="step"))
  state = mamba3_block.initial_state(cfg, 2)
  outs = []
  for t in range(embeds.shape[1]):
    out, state = step(params, embeds[:, t], state)
    outs.append(out)
  np.testing.assert_allclose(np.stack(outs, 1), full, rtol=0, atol=2e-5 * np.abs(full).max())


def test_bidirectional_sees_both_directions_and_causal_does_not():
  _, params, embeds, run = _stack(TINY, length=6)  # short: random decays are strong
  changed = embeds.copy()
  changed[:, -1] += 1.0
  causal_before, causal_after = run(params, embeds, None, True), run(params, changed, None, True)
  np.testing.assert_array_equal(causal_after[:, :-1], causal_before[:, :-1])
  bi_before, bi_after = run(params, embeds, None, False), run(params, changed, None, False)
  assert np.abs(bi_after[:, 0] - bi_before[:, 0]).max() > 1e-4  # observed ~2e-3; 0 if the backward scan were blind
  # And the backward direction is not a mirror of the forward one: reversing the input is not
  # reversing the output.
  reversed_out = run(params, embeds[:, ::-1].copy(), None, False)
  assert np.abs(reversed_out[:, ::-1] - bi_before).max() > 1e-2


def test_mimo_rank_one_equals_siso():
  _, siso_params, embeds, siso_run = _stack(TINY)
  model = mamba3_block.Mamba3Stack(TINY.replace(mimo_rank=1))
  flat_mimo = traverse_util.flatten_dict(random_params(model, 0, inputs_embeds=embeds, causal=False))
  flat_siso = traverse_util.flatten_dict(siso_params)
  extra = {k for k in flat_mimo if k not in flat_siso}
  assert {k[-1] for k in extra} == {"mimo_x", "mimo_z", "mimo_o"} and set(flat_siso) <= set(flat_mimo)
  ones = {k: np.ones_like(flat_mimo[k]) for k in extra}  # the rank-1 inits (1/R = 1)
  merged = traverse_util.unflatten_dict({**flat_siso, **ones})
  mimo_run = jax.jit(lambda v, e, causal: model.apply(v, inputs_embeds=e, causal=causal), static_argnums=2)
  np.testing.assert_allclose(mimo_run(merged, embeds, False), siso_run(siso_params, embeds, None, False),
                             rtol=0, atol=1e-6)


def test_every_parameter_has_logical_axis_names():
  cfg = TINY.replace(mimo_rank=2)
  model = mamba3_block.Mamba3Stack(cfg)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs_embeds=jnp.zeros((1, 4, cfg.hidden_size)),
                                                causal=True))
  for path, leaf in traverse_util.flatten_dict(variables["params"]).items():
    assert isinstance(leaf, nn.Partitioned), path
    assert len(leaf.names) == len(leaf.value.shape) and all(isinstance(n, str) for n in leaf.names), (path, leaf.names)


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="num_groups"):
    TINY.replace(num_groups=3)
  with pytest.raises(ValueError, match="mimo_rank"):
    TINY.replace(mimo_rank=0)
  with pytest.raises(ValueError, match="rope_fraction"):
    TINY.replace(rope_fraction=0.3)
  with pytest.raises(ValueError, match="remat"):
    TINY.replace(remat="sometimes")
  assert mamba3_block.Mamba3Config.from_dict(TINY.replace(mimo_rank=2).to_dict()) == TINY.replace(mimo_rank=2)


def test_initialisers():
  dt = jax.nn.softplus(mamba3_block.dt_bias_init(jax.random.key(0), (4096,)))
  assert 1e-3 * 0.999 <= dt.min() and dt.max() <= 0.1 * 1.001 and np.median(dt) < 0.02  # log-uniform, not uniform
  u = jnp.array([-1e9, -3.0, 0.0, 1.0, 2.0])
  np.testing.assert_allclose(mamba3_block.decay_rate(u), [-1e-4, -0.25, -1.0, -2.0, -3.0], rtol=1e-6)
  grad = jax.grad(lambda v: mamba3_block.decay_rate(v).sum())(u)  # u = 1 is the pole of the unused branch
  np.testing.assert_allclose(grad, [0.0, -1 / 16, -1.0, -1.0, -1.0], rtol=1e-6)


@pytest.mark.parametrize("overrides", [dict(), dict(mimo_rank=2, trapezoid=False)])
def test_chunks_with_the_carried_state_equal_one_call_and_hand_over_to_step(overrides):
  """A causal stack fed in pieces (lengths not multiples of the chunk) with the state carried equals
  one call; the state after a piece continues token by token with `step`, and matches the state the
  next piece's call returns."""
  cfg = TINY.replace(**overrides)
  model, params, embeds, run = _stack(cfg, length=17)
  full = run(params, embeds, None, True)
  piece = jax.jit(lambda v, e, s: model.apply(v, inputs_embeds=e, causal=True, initial_state=s, return_state=True))
  state, outs = mamba3_block.initial_state(cfg, 2), []
  for begin, end in ((0, 5), (5, 6), (6, 17)):
    out, state = piece(params, embeds[:, begin:end], state)
    outs.append(out)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, rtol=0, atol=2e-5 * np.abs(full).max())
  _, mid_state = piece(params, embeds[:, :9], mamba3_block.initial_state(cfg, 2))
  step = jax.jit(lambda v, e, s: model.apply(v, e, s, method="step"))
  stepped = []
  for t in range(9, 17):
    out, mid_state = step(params, embeds[:, t], mid_state)
    stepped.append(out)
  np.testing.assert_allclose(np.stack(stepped, 1), full[:, 9:], rtol=0, atol=2e-5 * np.abs(full).max())
  for got, want in zip(jax.tree.leaves(mid_state), jax.tree.leaves(state)):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_a_state_is_carried_in_causal_mode_only():
  model, params, embeds, _ = _stack(TINY, length=5)
  with pytest.raises(ValueError, match="carried in causal mode only"):
    model.apply(params, inputs_embeds=embeds, causal=False, return_state=True)
  with pytest.raises(ValueError, match=r"initial_state has 1 layer states; expected 2"):
    model.apply(params, inputs_embeds=embeds, causal=True, initial_state=mamba3_block.initial_state(TINY, 2)[:1])
