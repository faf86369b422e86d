"""V-JEPA 2.1 encoder: parity with a PyTorch transcription of Meta's `app/vjepa_2_1` through the CLI.

The reference below is written from Meta's `VisionTransformer.forward`
(app/vjepa_2_1/models/vision_transformer.py) and `RoPEAttention` / `rotate_queries_or_keys`
(app/vjepa_2_1/models/utils/modules.py): textbook (`repeat_interleave`) RoPE on row / column
positions stretched to the pretraining grid, a tubelet-1 patch embedding and image modality
embedding for single frames, and per-layer norms instead of a final one. Its state dict has
Meta's names, so the native `.pt` is written from it directly, as torch hub ships it.
"""
from __future__ import annotations

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import run_cli
import vljepa_jax.convert as convert_lib
from vljepa_jax.convert import vjepa2_1 as vjepa2_1_family
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import rope
from vljepa_jax.models import vit
from vljepa_jax.models import vljepa
from vljepa_jax.train import model_setup

jax.config.update("jax_default_matmul_precision", "highest")

TINY = vit.PRESETS["tiny_2_1"]  # width 80, 4 heads: head_dim 20 -> RoPE chunks 6/6/6 + 2 unrotated
WIDTH, PATCH = TINY.hidden_size, TINY.patch_size
ATOL = 1e-4
PREFIX = "module.backbone."  # DDP and hub wrappers, as Meta's files have them


# --- the PyTorch reference ---------------------------------------------------------------------


class _PatchEmbed(torch.nn.Module):
  """Conv3d with kernel = stride, tokens time-major (V-JEPA 2's PatchEmbed3D)."""

  def __init__(self, tubelet: int, patch: int, width: int):
    super().__init__()
    self.proj = torch.nn.Conv3d(3, width, (tubelet, patch, patch), stride=(tubelet, patch, patch))

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


def _rotate(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
  """One RoPE chunk: angles repeated per pair (f0, f0, f1, f1, ...), pairs (x[2i], x[2i+1]) rotated."""
  d = x.shape[-1]
  omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=x.dtype) / (d / 2.0))
  angles = (pos[:, None] * omega).repeat_interleave(2, dim=-1)
  pairs = x.unflatten(-1, (-1, 2))
  partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
  return x * angles.cos() + partner * angles.sin()


class _Attention(torch.nn.Module):

  def __init__(self, width: int, heads: int):
    super().__init__()
    self.heads = heads
    self.qkv = torch.nn.Linear(width, 3 * width)
    self.proj = torch.nn.Linear(width, width)

  def forward(self, x, positions):
    batch, tokens, width = x.shape
    q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
    head_dim = width // self.heads
    d = 2 * ((head_dim // 3) // 2)

    def rotate(t):  # time, row, column chunks; the rest is not rotated
      chunks = [_rotate(t[..., a * d:(a + 1) * d], positions[a]) for a in range(3)]
      return torch.cat(chunks + [t[..., 3 * d:]], dim=-1)

    q, k = rotate(q), rotate(k)
    weights = (q @ k.transpose(-2, -1) * head_dim ** -0.5).softmax(dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, width))


class _Mlp(torch.nn.Module):

  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.fc1, self.fc2 = torch.nn.Linear(width, hidden), torch.nn.Linear(hidden, width)

  def forward(self, x):
    return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


class _Block(torch.nn.Module):

  def __init__(self, width: int, heads: int, mlp: int):
    super().__init__()
    self.norm1, self.norm2 = torch.nn.LayerNorm(width, eps=1e-6), torch.nn.LayerNorm(width, eps=1e-6)
    self.attn, self.mlp = _Attention(width, heads), _Mlp(width, mlp)

  def forward(self, x, positions):
    x = x + self.attn(self.norm1(x), positions)
    return x + self.mlp(self.norm2(x))


class Reference(torch.nn.Module):
  """The V-JEPA 2.1 encoder at eval (no masks): `(B, C, T, H, W)` -> tokens.

  `guard_single_row`: rows / columns of a 1-patch-high / -wide input at position 0 (our documented
  choice) instead of Meta's 0 / 0 = NaN.
  """

  def __init__(self, config: vit.ViTConfig, guard_single_row: bool = False):
    super().__init__()
    c = config
    self.patch, self.tubelet, self.grid_size = c.patch_size, c.tubelet_size, c.rope_reference_grid
    self.hierarchical_layers, self.guard_single_row = c.hierarchical_layers, guard_single_row
    self.patch_embed = _PatchEmbed(c.tubelet_size, c.patch_size, c.hidden_size)
    self.patch_embed_img = _PatchEmbed(1, c.patch_size, c.hidden_size)
    self.img_mod_embed = torch.nn.Parameter(torch.zeros(1, 1, c.hidden_size))
    self.video_mod_embed = torch.nn.Parameter(torch.zeros(1, 1, c.hidden_size))
    self.blocks = torch.nn.ModuleList(_Block(c.hidden_size, c.num_heads, c.mlp_dim) for _ in range(c.num_layers))
    self.norms_block = torch.nn.ModuleList(
        torch.nn.LayerNorm(c.hidden_size, eps=1e-6) for _ in c.hierarchical_layers)

  def positions(self, frames: int, rows: int, cols: int) -> list[torch.Tensor]:
    ids = torch.arange(frames * rows * cols)
    frame = ids // (rows * cols)
    row = (ids - frame * rows * cols) // cols
    col = ids - frame * rows * cols - row * cols
    frame, row, col = 1.0 * frame, 1.0 * row, 1.0 * col
    # interpolate_rope: only rows and columns are rescaled to the pretraining grid.
    if not (self.guard_single_row and rows == 1):
      row = row * (self.grid_size - 1) / (rows - 1)
    if not (self.guard_single_row and cols == 1):
      col = col * (self.grid_size - 1) / (cols - 1)
    return [frame, row, col]

  def forward(self, x, hierarchical: bool = False):
    frames, height, width = x.shape[2:]
    image = frames == 1  # img_temporal_dim_size=1
    if image:
      x = self.patch_embed_img(x) + self.img_mod_embed
    else:
      x = self.patch_embed(x) + self.video_mod_embed
      frames //= self.tubelet
    positions = self.positions(frames, height // self.patch, width // self.patch)
    outs = []
    for i, block in enumerate(self.blocks):
      x = block(x, positions)
      if i in self.hierarchical_layers:
        outs.append(self.norms_block[self.hierarchical_layers.index(i)](x))
    return torch.cat(outs, dim=2) if hierarchical else outs[-1]


def _reference(seed: int, **kwargs) -> Reference:
  """Every parameter perturbed (LayerNorms, biases, the 1e-6 modality embeddings too).

  q/k rows of qkv get a larger scale so attention is far from uniform (positions then show), and the
  modality embeddings one that makes them visible next to the patch tokens.
  """
  torch.manual_seed(seed)
  model = Reference(TINY, **kwargs)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name.endswith("attn.qkv.weight"):
        noise[:2 * WIDTH] *= 4
      p.add_((0.5 if name.endswith("mod_embed") else 0.05) * noise)
  return model.eval()


def _reference_forward(model: Reference, video: np.ndarray, hierarchical: bool = False) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(video), hierarchical).numpy()


def _native(model: torch.nn.Module, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
  return {prefix + k: v.clone() for k, v in model.state_dict().items()}


# --- ours --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, video):
  return model.apply({"params": params}, video)


def _ours(model, params, video: np.ndarray) -> np.ndarray:
  """`video` is the reference's `(B, C, T, H, W)`."""
  return np.asarray(_apply(model, params, jnp.asarray(video.transpose(0, 2, 3, 4, 1))))


def _max_err(a: np.ndarray, b: np.ndarray) -> float:
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


# (B, C, T, H, W): a video at a grid other than the reference 16x16 (6x6), a non-square one (4x7),
# an image (T=1, 5x5).
SHAPES = {"video_6x6": (2, 3, 4, 96, 96), "video_4x7": (2, 3, 2, 64, 112), "image_5x5": (2, 3, 1, 80, 80)}


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}


@pytest.fixture(scope="module")
def references() -> dict[str, Reference]:
  return {"ema_encoder": _reference(1), "target_encoder": _reference(2)}


@pytest.fixture(scope="module")
def native_pt(references, tmp_path_factory) -> str:
  """As the hub's 2.1 files: ema_encoder / target_encoder / predictor, wrapper prefixes on every name."""
  path = str(tmp_path_factory.mktemp("native") / "vjepa2_1_tiny.pt")
  torch.save({
      "ema_encoder": _native(references["ema_encoder"]),
      "target_encoder": _native(references["target_encoder"]),
      "predictor": {PREFIX + "predictor_embed.weight": torch.randn(32, WIDTH)},
  }, path)
  return path


@pytest.fixture(scope="module")
def converted(native_pt, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("conv") / "tiny_2_1")
  run_cli("vljepa_jax.convert", "--model", "vjepa2_1", "--input", native_pt, "--output", out, "--variant", "tiny_2_1")
  return (out, *convert_lib.load(out))


# --- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(converted, references, inputs, shape):
  """Default key (ema_encoder), default output (the last per-layer norm): video, non-square video, image."""
  _, model, params = converted
  video = inputs[shape]
  ours, ref = _ours(model, params, video), _reference_forward(references["ema_encoder"], video)
  frames = video.shape[2] if video.shape[2] == 1 else video.shape[2] // 2
  assert ours.shape == (2, frames * (video.shape[3] // PATCH) * (video.shape[4] // PATCH), WIDTH)
  err = _max_err(ours, ref)
  print(f"{shape}: max abs err {err:.2e}")
  assert err <= ATOL


@pytest.mark.parametrize("shape", ["video_6x6", "image_5x5"])
def test_hierarchical_output_matches_reference(converted, references, inputs, shape):
  out, model, params = converted
  hier_model, hier_params = convert_lib.load(out, output="hierarchical")
  video = inputs[shape]
  ours = _ours(hier_model, hier_params, video)
  assert ours.shape[-1] == hier_model.config.output_dim == 2 * WIDTH
  err = _max_err(ours, _reference_forward(references["ema_encoder"], video, hierarchical=True))
  print(f"hierarchical {shape}: max abs err {err:.2e}")
  assert err <= ATOL
  np.testing.assert_allclose(ours[..., -WIDTH:], _ours(model, params, video), atol=1e-6)  # the last norm is "last"


def test_single_row_input_is_position_zero(converted, inputs):
  """Meta rescales rows by (G-1)/(H'-1): NaN for one row of patches; ours puts that row at position 0."""
  _, model, params = converted
  video = inputs["video_4x7"][:, :, :, :PATCH]  # a 1x7 grid
  guarded = _reference(1, guard_single_row=True)
  ours = _ours(model, params, video)
  assert np.isnan(_reference_forward(_reference(1), video)).all()
  err = _max_err(ours, _reference_forward(guarded, video))
  print(f"single row: max abs err {err:.2e}")
  assert np.isfinite(ours).all() and err <= ATOL


def test_grid_positions_are_interpolated():
  frames, rows, cols = rope.grid_positions((2, 6, 4), reference_grid=16).reshape(3, 2, 6, 4)
  np.testing.assert_array_equal(frames[:, 0, 0], [0, 1])  # frames are never rescaled
  np.testing.assert_allclose(rows[0, :, 0], np.arange(6) * 3.0)  # 15 / 5
  np.testing.assert_allclose(cols[0, 0, :], np.arange(4) * 5.0)  # 15 / 3
  np.testing.assert_array_equal(rope.grid_positions((1, 1, 3), 16)[1], 0)
  raw = rope.grid_positions((2, 6, 4))
  assert raw.dtype == np.float32 and raw[1].max() == 5 and raw[2].max() == 3
  stretched, plain = (rope.rope_3d_tables((1, 6, 4), 20, "interleaved", g) for g in (16, 0))
  assert not np.array_equal(stretched[0], plain[0])  # the reference grid is part of the cache key


def _variant_err(converted, references, inputs, shape, params_fn=lambda p: p, **config_changes) -> float:
  _, model, params = converted
  changed = vit.VisionTransformer(model.config.replace(**config_changes))
  return _max_err(_ours(changed, params_fn(params), inputs[shape]),
                  _reference_forward(references["ema_encoder"], inputs[shape]))


@pytest.mark.parametrize("what,shape,changes", [
    ("V-JEPA 2's tiled RoPE layout", "video_6x6", dict(rope_layout="tiled")),
    ("raw (uninterpolated) RoPE positions", "video_6x6", dict(rope_reference_grid=0)),
    ("the image repeated into a video tubelet", "image_5x5", dict(image_patch_embed=False)),
    ("no modality embeddings", "video_4x7", dict(modality_embeddings=False)),
])
def test_each_2_1_feature_matters(converted, references, inputs, what, shape, changes):
  err = _variant_err(converted, references, inputs, shape, **changes)
  print(f"{what}: max abs err {err:.2e}")
  assert err > 100 * ATOL, what


def test_video_modality_embedding_on_an_image_differs(converted, references, inputs):
  def swap(params):
    return {**params, "img_mod_embed": params["video_mod_embed"]}
  err = _variant_err(converted, references, inputs, "image_5x5", params_fn=swap)
  print(f"video modality embedding on an image: max abs err {err:.2e}")
  assert err > 100 * ATOL


# --- conversion --------------------------------------------------------------------------------


def test_converted_config_is_the_tiny_2_1_preset(converted):
  out, model, params = converted
  with open(os.path.join(out, "model.json")) as f:
    meta = json.load(f)
  assert meta["family"] == "vjepa2_1"
  assert vit.ViTConfig.from_dict(meta["config"]) == model.config == TINY
  assert "norm" not in params and {"norms_block_0", "norms_block_1", "patch_embed_img"} <= set(params)
  assert params["img_mod_embed"].shape == (WIDTH,)


def test_checkpoint_key_target_encoder_reads_the_other_weights(native_pt, references, inputs):
  options = convert_lib.ConvertOptions(variant="tiny_2_1", checkpoint_key="target_encoder")
  config, params = convert_lib.convert_state("vjepa2_1", native_pt, options)
  ours = _ours(vit.VisionTransformer(config), params, inputs["video_6x6"])
  err = _max_err(ours, _reference_forward(references["target_encoder"], inputs["video_6x6"]))
  print(f"target_encoder: max abs err {err:.2e}")
  assert err <= ATOL
  assert _max_err(ours, _reference_forward(references["ema_encoder"], inputs["video_6x6"])) > 1e-2


def test_default_key_without_ema_encoder_is_target_encoder():
  assert vjepa2_1_family.default_key({"ema_encoder": {}, "target_encoder": {}}) == "ema_encoder"
  assert vjepa2_1_family.default_key({"encoder": {}, "target_encoder": {}, "predictor": {}}) == "target_encoder"


def _shape_only(config: vit.ViTConfig) -> dict[str, np.ndarray]:
  """The tensors shape inference reads, as zero-stride arrays (no memory)."""
  def zeros(*shape):
    return np.broadcast_to(np.float32(0), shape)
  d, p = config.hidden_size, config.patch_size
  return {"patch_embed.proj.weight": zeros(d, 3, 2, p, p), "blocks.0.mlp.fc1.weight": zeros(config.mlp_dim, d),
          f"blocks.{config.num_layers - 1}.mlp.fc1.weight": zeros(config.mlp_dim, d)}


@pytest.mark.parametrize("name", [n for n in vit.PRESETS if n.startswith("vjepa2_1_")])
def test_architecture_from_shapes_is_the_hub_preset(name):
  config = vit.PRESETS[name]
  got = vjepa2_1_family.config_from_source(None, _shape_only(config), convert_lib.ConvertOptions(), "ckpt.pt")
  assert got == config


def test_unknown_sizes_ask_for_a_variant():
  options, odd_depth = convert_lib.ConvertOptions(), vit.ViTConfig(hidden_size=768, num_layers=13, num_heads=12)
  with pytest.raises(convert_lib.ConversionError, match=r"width 80 .*--variant"):
    vjepa2_1_family.config_from_source(None, _shape_only(TINY), options, "ckpt.pt")
  with pytest.raises(convert_lib.ConversionError, match=r"depths \[12, 24, 40, 48\], not 13.*--variant"):
    vjepa2_1_family.config_from_source(None, _shape_only(odd_depth), options, "ckpt.pt")


def _write(tmp_path, state) -> str:
  path = str(tmp_path / f"ckpt{len(os.listdir(tmp_path))}.pt")
  torch.save(state, path)
  return path


def _vjepa2_layout(reference: Reference) -> dict[str, torch.Tensor]:
  """A V-JEPA 2 encoder: the same blocks, a final norm, none of 2.1's tensors."""
  keep = {k: v for k, v in reference.state_dict().items()
          if not k.startswith(("norms_block", "patch_embed_img")) and not k.endswith("mod_embed")}
  return {PREFIX + k: v.clone() for k, v in {**keep, "norm.weight": torch.ones(WIDTH),
                                              "norm.bias": torch.zeros(WIDTH)}.items()}


def test_2_1_checkpoint_given_to_vjepa2_fails_through_cli(native_pt, tmp_path):
  proc = run_cli("vljepa_jax.convert", "--model", "vjepa2", "--input", native_pt, "--output", str(tmp_path / "out"),
                 check=False)
  assert proc.returncode == 1
  assert "conversion failed" in proc.stderr and "V-JEPA 2.1 checkpoint" in proc.stderr, proc.stderr
  assert "--model vjepa2_1" in proc.stderr
  assert os.listdir(tmp_path) == []  # no output, no leftover temporary directory


def test_checkpoint_errors_name_the_problem(references, tmp_path):
  opts = functools.partial(convert_lib.ConvertOptions, variant="tiny_2_1")
  good = _native(references["ema_encoder"])

  def fails(state, match, **options):
    with pytest.raises(convert_lib.ConversionError, match=match):
      convert_lib.convert_state("vjepa2_1", _write(tmp_path, state), opts(**options))

  # A V-JEPA 2 checkpoint (the default key reads its target_encoder).
  v2 = _vjepa2_layout(references["ema_encoder"])
  fails({"encoder": v2, "target_encoder": v2}, r"is a V-JEPA 2 checkpoint, not V-JEPA 2.1 .*--model vjepa2$")
  # A checkpoint key the file does not have.
  fails({"target_encoder": good, "predictor": {}}, r"\['predictor', 'target_encoder'\].*got 'ema_encoder'",
        checkpoint_key="ema_encoder")
  # A missing tensor.
  fails({"ema_encoder": {k: v for k, v in good.items() if not k.endswith("video_mod_embed")}},
        r"1 missing parameters:\n\s+video_mod_embed \(80,\)")
  # A mis-shaped tensor: a video (tubelet-2) kernel where the image embedding belongs.
  bad = {**good, PREFIX + "patch_embed_img.proj.weight": good[PREFIX + "patch_embed.proj.weight"]}
  fails({"ema_encoder": bad}, r"patch_embed_img\.proj\.weight -> patch_embed_img/kernel: .*\(80, 3, 2, 16, 16\)")
  fails({"ema_encoder": {**good, PREFIX + "norms_block.1.weight": torch.ones(79)}},
        r"norms_block\.1\.weight -> norms_block_1/scale: .*\(79,\) does not fit expected \(80,\)")
  # Presets: a 2.1 one of another size, a V-JEPA 2 one.
  fails({"ema_encoder": good}, "hidden_size is 80 in the checkpoint, 1024 in the preset",
        variant="vjepa2_1_vit_large_384")
  fails({"ema_encoder": good}, r"unknown V-JEPA 2.1 variant 'tiny'", variant="tiny")
  # A single state dict takes no --checkpoint_key.
  fails(good, "single state dict; --checkpoint_key target_encoder", checkpoint_key="target_encoder")


# --- config and model --------------------------------------------------------------------------


def test_config_fields_are_validated():
  base = vit.ViTConfig(num_layers=4)
  for changes, match in [
      (dict(hierarchical_layers=(1, 2)), r"ending at the last block, 3"),
      (dict(hierarchical_layers=(2, 1, 3)), "increasing"),
      (dict(hierarchical_layers=(-1, 3)), "increasing"),
      (dict(hierarchical_layers=3), "tuple of block indices"),
      (dict(output="hierarchical"), "needs hierarchical_layers"),
      (dict(output="mean"), r"output 'mean': expected one of \('last', 'hierarchical'\)"),
      (dict(rope_reference_grid=1), "rope_reference_grid 1"),
      (dict(rope_reference_grid=-16), "rope_reference_grid -16"),
  ]:
    with pytest.raises(ValueError, match=match):
      base.replace(**changes)
  assert base.replace(hierarchical_layers=[1, 3]).hierarchical_layers == (1, 3)  # a list becomes a tuple
  with pytest.raises(ValueError, match="depths"):
    vit.vjepa2_1(num_layers=6)
  with pytest.raises(ValueError, match="patch sizes"):
    vit.vjepa2_1(patch_size=8)


def test_presets_round_trip_json_and_output_dim():
  for name, config in vit.PRESETS.items():
    again = vit.ViTConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and hash(again) == hash(config), name
  large = vit.PRESETS["vjepa2_1_vit_large_384"]
  assert large.hierarchical_layers == (5, 11, 17, 23) and large.rope_reference_grid == 16
  assert large.output_dim == 1024 and large.replace(output="hierarchical").output_dim == 4096
  assert vit.PRESETS["vit_large"].output_dim == 1024


@pytest.mark.parametrize("name", [n for n in vit.PRESETS if n.startswith("vjepa2_1_")])
def test_full_size_param_counts(name):
  """Meta's module list: two patch embeddings, two modality embeddings, the blocks, four norms, no final norm."""
  c = vit.PRESETS[name]
  d, p = c.hidden_size, c.patch_size
  block = 4 * d * d + 4 * d + 2 * d * c.mlp_dim + c.mlp_dim + d + 4 * d
  expected = (2 * p * p * 3 * d + d) + (p * p * 3 * d + d) + 2 * d + c.num_layers * block + 4 * 2 * d
  count = params_lib.count_params(params_lib.abstract_params(vit.VisionTransformer(c), jnp.zeros((1, 2, 16, 16, 3))))
  assert count == expected


def test_new_params_have_logical_axis_names():
  model, inputs = vit.VisionTransformer(TINY), (jnp.zeros((1, 2, 16, 16, 3)),)
  specs = params_lib.logical_partition_specs(model, *inputs)
  shapes = params_lib.abstract_params(model, *inputs)
  flat_specs = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: x is None)[0])
  for path, shape in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    spec = flat_specs[path]
    assert spec is not None and len(spec) == len(shape.shape), jax.tree_util.keystr(path)
  assert tuple(specs["img_mod_embed"]) == tuple(specs["video_mod_embed"]) == ("embed",)
  assert tuple(specs["patch_embed_img"]["kernel"]) == vit.CONV_AXES
  assert tuple(specs["norms_block_0"]["scale"]) == ("norm",)


# --- using it ----------------------------------------------------------------------------------


def test_model_setup_takes_a_converted_2_1_folder(converted, tmp_path):
  out = converted[0]
  assert model_setup.resolve_checkpoints({"x_encoder": out}, str(tmp_path), predictor_backbone="llama") == {
      "x_encoder": out}
  model = vljepa.tiny_config().to_dict()
  arch = model_setup.model_config(model, {"x_encoder": out}, dtype="float32", param_dtype="float32", remat="none")
  assert arch.x_encoder == TINY.replace(attention_impl=arch.x_encoder.attention_impl)
  assert arch.predictor.vision_dim == WIDTH
  # The hierarchical output is 2x wider here (4x for Meta's sizes): the predictor reads that width.
  hier = str(tmp_path / "hierarchical")
  shutil.copytree(out, hier)
  with open(os.path.join(hier, "model.json")) as f:
    meta = json.load(f)
  meta["config"]["output"] = "hierarchical"
  with open(os.path.join(hier, "model.json"), "w") as f:
    json.dump(meta, f)
  arch = model_setup.model_config(model, {"x_encoder": hier}, dtype="float32", param_dtype="float32", remat="none")
  assert arch.predictor.vision_dim == arch.x_encoder.output_dim == 2 * WIDTH
  with pytest.raises(ValueError, match=r"vision_dim \(80\) must equal the X-encoder's output width \(160\)"):
    arch.replace(predictor=arch.predictor.replace(vision_dim=WIDTH))
