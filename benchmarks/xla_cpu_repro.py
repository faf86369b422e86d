r"""Minimal, standalone reproductions of the XLA:CPU gaps behind the train-step comparison with PyTorch.

  python benchmarks/xla_cpu_repro.py                 # matmuls, batched matmuls, attention, GELU, wgrad, transpose
  taskset -c 0 python benchmarks/xla_cpu_repro.py    # the same on one core
  python benchmarks/xla_cpu_repro.py --parts=step --step_config=configs/small.py --dtype=float32
  python benchmarks/xla_cpu_repro.py --parts=bmm --devices=2   # + the batched products over 2 CPU devices

Seven parts, each JAX against torch on the same float32 random inputs, median of `--rounds` rounds:
  1. plain 2-D GEMMs at the towers' shapes (the machine's matmul speed: equal in both);
  2. batched matmuls at attention shapes (`einsum("bmk,bkn->bmn")` vs `torch.bmm`): with several
     threads XLA:CPU's batched dot runs at about its one-core speed up to jaxlib 0.10, torch's
     scales. The same product with a row max of its result fused in (`+ 0·max`, the value
     unchanged) runs in a YNNPACK fusion on every core: what attention's logits product, which the
     softmax's row max follows, already gets. With `--devices=N` also the same product with its
     batch split over N CPU devices, which does scale (the workaround: `config.cpu_devices`,
     vljepa_jax/cpu_devices.py);
  3. one attention block (q/k/v/o projections + masked softmax attention), forward and forward +
     backward: `models.attention.attention` (impl "xla") against `F.scaled_dot_product_attention`;
  4. `step`: every matrix product of one config's train step (forward, backward, frozen towers),
     read from the step's jaxpr with its operand shapes and dimension numbers, and timed alone on
     row-major operands: `lax.dot_general` as the jaxpr has it, against `torch.matmul` of permuted
     views of the same buffers. The sums, weighted by how often each product occurs, are what the
     step's products cost each library with nothing else running;
  5. `gelu`: exact GELU, forward and with its gradient, at the towers' MLP shapes: `jax.nn.gelu(
     approximate=False)`, which XLA:CPU lowers from erfc into two branches and two loop fusions,
     against the same function written with erf (`models.layers.gelu_exact`, the workaround the
     models use) and `F.gelu`;
  6. `wgrad`: the weight gradient `xᵀ·dy` of a narrowing projection (an MLP's output) at the
     towers' shapes. It contracts the tokens, the rows of both operands. Written as that one
     product, XLA:CPU runs it in Eigen (YNNPACK refuses a left operand contracted over its rows);
     the library transposes `dy` itself and fences the `(out, in)` product, so the product runs in
     YNNPACK and only the weight-sized result is transposed (`models/projection.py`); torch's
     `x.t() @ dy` takes the transpose by stride.
  7. `transpose`: the operand part 6 transposes, at the step's shapes. A transpose of a buffer in
     memory (`x.T`) runs at memory speed. The same transpose of an elementwise result (`(x*a+b).T`,
     as a norm's recomputed output or an activation's gradient reaches the weight gradient in the
     step) is emitted as one loop fusion that computes the elementwise op in the transposed order,
     1.6-4x slower than the transpose alone in our runs; an optimisation barrier does not keep the
     two apart (XLA:CPU removes barriers before fusion). torch's `.t().contiguous()` of either, for
     scale.
Nothing from the library is timed except the attention function in part 3, the GELU in part 5
and the projection's backward in part 6.
Like the train step, both sides run with XLA's temporaries kept mapped
(`host_memory.retain_freed_memory`, set before JAX starts; process-wide, so torch's allocations are
kept as well).
"""
import os
import statistics
import sys
import time

from absl import app
from absl import flags

_PARTS = flags.DEFINE_list("parts", ["gemm", "bmm", "attention", "gelu", "wgrad", "transpose"],
                           "Which parts to run (also: step).")
_TOKENS_DIVISOR = flags.DEFINE_integer(
    "tokens_divisor", 1, "Divide the token counts of the gelu, wgrad and transpose parts' shapes, and the bmm "
    "part's batch, by this: a quick run of the script (its tests use 16). The recorded figures are at 1.",
    lower_bound=1)
_STEP_CONFIG = flags.DEFINE_string("step_config", "configs/small.py", "Config (last stage) whose step's products "
                                   "--parts=step times; --dtype and --batch_size apply.")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

GEMMS = ((2048, 2048, 2048), (8192, 384, 384), (8192, 384, 1536), (8192, 1536, 384), (768, 384, 1536))
BMMS = ((192, 256, 64, 256), (192, 256, 256, 64), (256, 44, 32, 44), (256, 44, 44, 32))
# MLP activations (tokens, hidden): the demo's MiniLM Y-encoder and ViT, small's ViT.
GELU_SHAPES = ((768, 1536), (2048, 256), (8192, 1536))
# Narrowing projections (tokens, fan_in, fan_out): the demo's ViT and predictor MLP outputs, small's.
WGRAD_SHAPES = ((2048, 512, 128), (2816, 256, 128), (8192, 1536, 384), (8704, 1536, 512))
# Operands the weight gradients transpose (tokens, width): the demo's predictor and ViT, small's ViT.
TRANSPOSE_SHAPES = ((2816, 128), (2048, 128), (8192, 384))
# (batch, length, width, heads, kv heads): small's ViT and predictor, the demo's predictor.
BLOCKS = ((32, 256, 384, 6, 6), (32, 272, 512, 8, 2), (64, 44, 128, 4, 2))


def _fewer_tokens(shapes):
  """`shapes` (tokens first) with the token counts divided by `--tokens_divisor`."""
  divisor = _TOKENS_DIVISOR.value
  uneven = sorted({shape[0] for shape in shapes if shape[0] % divisor})
  if uneven:
    raise app.UsageError(f"--tokens_divisor={divisor} does not divide the token counts {uneven}")
  return [(shape[0] // divisor, *shape[1:]) for shape in shapes]


def _seconds(fn, calls: int = 5) -> float:
  fn()
  times = []
  for _ in range(flags.FLAGS.rounds):  # train_step.py's flag: one definition
    start = time.perf_counter()
    for _ in range(calls):
      out = fn()
    if hasattr(out, "block_until_ready"):
      out.block_until_ready()
    times.append((time.perf_counter() - start) / calls)
  return statistics.median(times)


def gemm_and_bmm(parts):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  if "gemm" in parts:
    print("| GEMM m×k×n | JAX GFLOP/s | torch GFLOP/s |\n|---|---|---|")
    mm = jax.jit(jnp.matmul)
    for m, k, n in GEMMS:
      a, b = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
      ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
      flop = 2 * m * k * n
      print(f"| {m}×{k}×{n} | {flop / _seconds(lambda: mm(ja, jb)) / 1e9:.1f} | "
            f"{flop / _seconds(lambda: ta @ tb) / 1e9:.1f} |", flush=True)
  if "bmm" in parts:
    # With several CPU devices (--devices), also the same product with its batch split over all of them.
    split = jax.device_count() > 1
    if split:
      mesh = jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
      batch_split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    print("\n| batched matmul b, m×k×n | JAX GFLOP/s | JAX fused with a row max |"
          + (f" JAX over {jax.device_count()} devices |" if split else "") + " torch GFLOP/s |\n|---|---|---|---|"
          + ("---|" if split else ""))
    bmm = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))

    @jax.jit
    def bmm_with_row_max(a, b):
      # 0·max leaves the (finite) product as it is, but puts a reduction of it in the product's fusion.
      out = jnp.einsum("bmk,bkn->bmn", a, b)
      return out + 0.0 * jnp.max(out, axis=-1, keepdims=True)

    for b, m, k, n in _fewer_tokens(BMMS):
      x, y = rng.random((b, m, k), np.float32), rng.random((b, k, n), np.float32)
      jx, jy, tx, ty = jnp.asarray(x), jnp.asarray(y), torch.from_numpy(x), torch.from_numpy(y)
      np.testing.assert_allclose(np.asarray(bmm_with_row_max(jx, jy)), np.einsum("bmk,bkn->bmn", x, y), rtol=1e-4)
      flop = 2 * b * m * k * n
      row = (f"| {b}, {m}×{k}×{n} | {flop / _seconds(lambda: bmm(jx, jy), 20) / 1e9:.1f} | "
             f"{flop / _seconds(lambda: bmm_with_row_max(jx, jy), 20) / 1e9:.1f} |")
      if split:
        sx, sy = jax.device_put(x, batch_split), jax.device_put(y, batch_split)
        row += f" {flop / _seconds(lambda: bmm(sx, sy), 20) / 1e9:.1f} |"
      print(row + f" {flop / _seconds(lambda: torch.bmm(tx, ty), 20) / 1e9:.1f} |", flush=True)


def attention_blocks():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import attention as attention_lib  # pylint: disable=g-import-not-at-top

  print("\n| attention block B, L, D, heads/kv | JAX fwd ms | JAX fwd+bwd ms | torch fwd ms | torch fwd+bwd ms |")
  print("|---|---|---|---|---|")
  for batch, length, width, heads, kv_heads in BLOCKS:
    head_dim = width // heads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, length, width), np.float32)
    keep = np.arange(length)[None] < rng.integers(length // 2, length + 1, (batch, 1))
    shapes = ((width, heads, head_dim), (width, kv_heads, head_dim), (width, kv_heads, head_dim),
              (heads, head_dim, width))
    weights = [(0.05 * rng.standard_normal(s)).astype(np.float32) for s in shapes]

    def block(params, x, mask):
      wq, wk, wv, wo = params
      q, k, v = (jnp.einsum("bld,dhk->blhk", x, w) for w in (wq, wk, wv))
      return jnp.einsum("blhk,hkd->bld", attention_lib.attention(q, k, v, kv_mask=mask, impl="xla"), wo)

    loss = lambda p, x, m: jnp.sum(block(p, x, m) ** 2)
    forward, backward = jax.jit(block), jax.jit(jax.grad(loss, argnums=(0, 1)))
    jp, jx, jm = [jnp.asarray(w) for w in weights], jnp.asarray(x), jnp.asarray(keep, jnp.int32)

    tw = [torch.from_numpy(w.reshape(w.shape[0], -1).T.copy() if i < 3 else w.reshape(-1, width).T.copy())
          .requires_grad_() for i, w in enumerate(weights)]
    tx, tm = torch.from_numpy(x).requires_grad_(), torch.from_numpy(keep)

    def torch_block():
      q = F.linear(tx, tw[0]).view(batch, length, heads, head_dim).transpose(1, 2)
      k = F.linear(tx, tw[1]).view(batch, length, kv_heads, head_dim).transpose(1, 2)
      v = F.linear(tx, tw[2]).view(batch, length, kv_heads, head_dim).transpose(1, 2)
      out = F.scaled_dot_product_attention(q, k, v, attn_mask=tm[:, None, None, :], enable_gqa=heads != kv_heads)
      return F.linear(out.transpose(1, 2).reshape(batch, length, width), tw[3])

    def torch_forward():
      with torch.no_grad():
        return torch_block()

    def torch_backward():
      out = (torch_block() ** 2).sum()
      out.backward()
      return out

    with torch.no_grad():  # the same function on both sides (rows of padded queries included)
      np.testing.assert_allclose(np.asarray(forward(jp, jx, jm)), torch_block().numpy(), rtol=2e-3, atol=2e-3)
    print(f"| {batch}, {length}, {width}, {heads}/{kv_heads} | {_seconds(lambda: forward(jp, jx, jm)) * 1e3:.1f} | "
          f"{_seconds(lambda: backward(jp, jx, jm)) * 1e3:.1f} | {_seconds(torch_forward) * 1e3:.1f} | "
          f"{_seconds(torch_backward) * 1e3:.1f} |", flush=True)


def _jaxpr_products(jaxpr, multiplier: int, out: dict) -> None:
  """Counts every dot_general of `jaxpr` (and of the jaxprs inside it) in `out[(lhs, rhs, dimension numbers)]`."""
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
      key = (*(tuple(v.aval.shape) for v in eqn.invars),
             ((tuple(lhs_contract), tuple(rhs_contract)), (tuple(lhs_batch), tuple(rhs_batch))))
      out[key] = out.get(key, 0) + multiplier
    inner = multiplier * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if isinstance(sub, core.ClosedJaxpr):
          _jaxpr_products(sub.jaxpr, inner, out)
        elif isinstance(sub, core.Jaxpr):
          _jaxpr_products(sub, inner, out)


def _bmk(shape, batch, contract):
  """(permutation to batch, free, contracted dims; b, m, k) of one dot_general operand."""
  import math  # pylint: disable=g-import-not-at-top
  free = tuple(d for d in range(len(shape)) if d not in batch and d not in contract)
  size = lambda dims: math.prod(shape[d] for d in dims)
  return (*batch, *free, *contract), (size(batch), size(free), size(contract))


def step_products():
  """Part 4: the step's matrix products, each timed alone in JAX and in torch, summed by count."""
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  config = train_step_benchmark._override(harness.load_config(_STEP_CONFIG.value))  # pylint: disable=protected-access
  with tempfile.TemporaryDirectory() as workdir:
    stage, stage_config, _, batch = train_step_benchmark._stage_and_batch(config, workdir)  # pylint: disable=protected-access
    with jax.set_mesh(stage.mesh):
      closed = jax.make_jaxpr(stage.step_fn.jitted)(stage.abstract_state, batch)
  products: dict = {}
  _jaxpr_products(closed.jaxpr, 1, products)
  print(f"\n{_STEP_CONFIG.value}, batch {stage_config.batch_size}, {stage_config.dtype}: "
        f"{sum(products.values())} products of {len(products)} kinds, timed in float32 (operands row-major, as the "
        "jaxpr has them; torch multiplies the same buffers through permuted views)\n")
  print("| lhs · rhs (contracted lhs/rhs dims) | b, m×k×n | per step | JAX ms | torch ms | JAX GFLOP/s | "
        "torch GFLOP/s |\n|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  totals = {"jax": 0.0, "torch": 0.0, "gflop": 0.0}
  rows = []
  for (lhs, rhs, dims), count in products.items():
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dims
    lhs_perm, (b, m, k) = _bmk(lhs, lhs_batch, lhs_contract)
    rhs_perm, (_, n, _) = _bmk(rhs, rhs_batch, rhs_contract)
    x, y = rng.random(lhs, np.float32), rng.random(rhs, np.float32)
    jx, jy = jax.numpy.asarray(x), jax.numpy.asarray(y)
    product = jax.jit(lambda a, c, dims=dims: jax.lax.dot_general(a, c, dims))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def torch_product(tx=tx, ty=ty, lhs_perm=lhs_perm, rhs_perm=rhs_perm, b=b, m=m, k=k, n=n):
      # (b, m, k) x (b, n, k)^T: the library picks the kernel for these strides, as torch code would.
      return torch.matmul(tx.permute(lhs_perm).reshape(b, m, k), ty.permute(rhs_perm).reshape(b, n, k).transpose(1, 2))

    np.testing.assert_allclose(np.asarray(product(jx, jy)).reshape(b, m, n), torch_product().numpy(), rtol=1e-3)
    gflop = 2 * b * m * k * n / 1e9
    calls = max(3, min(50, int(10 / gflop)))  # ~10 GFLOP a round, so dispatch and pool wake-up amortise
    seconds = {"jax": _seconds(lambda product=product, jx=jx, jy=jy: product(jx, jy), calls),
               "torch": _seconds(torch_product, calls)}
    for side in ("jax", "torch"):
      totals[side] += count * seconds[side]
    totals["gflop"] += count * gflop
    rows.append((count * (seconds["jax"] - seconds["torch"]),
                 f"| {lhs}·{rhs} ({lhs_contract}/{rhs_contract}) | {b}, {m}×{k}×{n} | {count} | "
                 f"{seconds['jax'] * 1e3:.2f} | {seconds['torch'] * 1e3:.2f} | {gflop / seconds['jax']:.0f} | "
                 f"{gflop / seconds['torch']:.0f} |"))
  for _, row in sorted(rows, reverse=True):  # largest JAX deficit per step first
    print(row)
  print(f"\nproducts of one step, timed alone: JAX {totals['jax']:.2f} s ({totals['gflop'] / totals['jax']:.0f} "
        f"GFLOP/s), torch {totals['torch']:.2f} s ({totals['gflop'] / totals['torch']:.0f} GFLOP/s), "
        f"{totals['gflop']:.0f} GFLOP; JAX − torch: {totals['jax'] - totals['torch']:+.2f} s per step")


def gelu_forms():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import layers  # pylint: disable=g-import-not-at-top
  forms = {"jax.nn.gelu (erfc)": lambda x: jax.nn.gelu(x, approximate=False), "erf form": layers.gelu_exact}
  print("\n| exact GELU, (tokens, hidden) | " + " | ".join(f"{n} fwd / grad µs" for n in forms)
        + " | torch fwd / grad µs |\n|---|---|---|---|")
  rng = np.random.default_rng(0)
  for shape in _fewer_tokens(GELU_SHAPES):
    x, g = rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32)
    jx, jg = jnp.asarray(x), jnp.asarray(g)
    cells = []
    for fn in forms.values():
      fwd = jax.jit(fn)
      grad = jax.jit(jax.grad(lambda a, fn=fn: jnp.sum(fn(a) * jg)))
      cells.append(f"{_seconds(lambda: fwd(jx), 20) * 1e6:.0f} / {_seconds(lambda: grad(jx), 20) * 1e6:.0f}")
    tx, tg = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(g)

    def torch_grad():
      (out,) = torch.autograd.grad((torch.nn.functional.gelu(tx) * tg).sum(), tx)
      return out
    with torch.no_grad():
      torch_fwd = _seconds(lambda: torch.nn.functional.gelu(tx), 20)
    cells.append(f"{torch_fwd * 1e6:.0f} / {_seconds(torch_grad, 20) * 1e6:.0f}")
    print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)


def weight_gradient_forms():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import projection  # pylint: disable=g-import-not-at-top

  def rows_contracted(x, dy):  # what XLA makes of the gradient when nothing fences the transpose
    return jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ())))

  def library(x, dy):  # the projection's own backward; its input gradient is left out of the timing
    _, vjp = jax.vjp(lambda k: projection.project(x, k), jnp.zeros((x.shape[1], dy.shape[1]), x.dtype))
    return vjp(dy)[0]

  forms = {"one product (Eigen)": rows_contracted, "fenced transpose (library)": library}
  print("\n| weight gradient xᵀ·dy, tokens×in×out | " + " | ".join(f"{n} GFLOP/s" for n in forms)
        + " | torch GFLOP/s |\n|---|---|---|---|")
  rng = np.random.default_rng(0)
  for tokens, fan_in, fan_out in _fewer_tokens(WGRAD_SHAPES):
    x = rng.standard_normal((tokens, fan_in), np.float32)
    dy = rng.standard_normal((tokens, fan_out), np.float32)
    jx, jdy, tx, tdy = jnp.asarray(x), jnp.asarray(dy), torch.from_numpy(x), torch.from_numpy(dy)
    flop = 2 * tokens * fan_in * fan_out
    cells = []
    for fn in map(jax.jit, forms.values()):  # `_seconds` calls each once before timing: the compile
      cells.append(f"{flop / _seconds(lambda fn=fn: fn(jx, jdy), 10) / 1e9:.1f}")
    cells.append(f"{flop / _seconds(lambda: tx.t() @ tdy, 10) / 1e9:.1f}")
    print(f"| {tokens}×{fan_in}×{fan_out} | " + " | ".join(cells) + " |", flush=True)


def transpose_forms():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  forms = {
      "x.T": lambda x: x.T,
      "(x*a+b).T": lambda x: (x * 1.5 + 0.5).T,
      "barrier(x*a+b).T": lambda x: jax.lax.optimization_barrier(x * 1.5 + 0.5).T,
  }
  print("\n| transpose, (tokens, width) | " + " | ".join(f"{n} µs" for n in forms)
        + " | torch x.t() µs | torch (x*a+b).t() µs |\n|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for shape in _fewer_tokens(TRANSPOSE_SHAPES):
    x = rng.standard_normal(shape, np.float32)
    jx, tx = jnp.asarray(x), torch.from_numpy(x)
    cells = []
    for fn in map(jax.jit, forms.values()):
      cells.append(f"{_seconds(lambda fn=fn: fn(jx), 20) * 1e6:.0f}")
    cells.append(f"{_seconds(lambda: tx.t().contiguous(), 20) * 1e6:.0f}")
    cells.append(f"{_seconds(lambda: (tx * 1.5 + 0.5).t().contiguous(), 20) * 1e6:.0f}")
    print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)


def main(argv):
  del argv
  for shapes in (GELU_SHAPES, WGRAD_SHAPES, TRANSPOSE_SHAPES, BMMS):
    _fewer_tokens(shapes)  # a divisor that does not fit fails here, before anything runs
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  host_memory_note = train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  if flags.FLAGS.devices:  # train_step.py's flag: CPU devices for the split batched products
    jax.config.update("jax_num_cpu_devices", flags.FLAGS.devices)
  print(f"cores available: {len(os.sched_getaffinity(0))}{host_memory_note}, torch threads {torch.get_num_threads()}, "
        f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}")
  gemm_and_bmm(_PARTS.value)
  if "attention" in _PARTS.value:
    attention_blocks()
  if "gelu" in _PARTS.value:
    gelu_forms()
  if "wgrad" in _PARTS.value:
    weight_gradient_forms()
  if "transpose" in _PARTS.value:
    transpose_forms()
  if "step" in _PARTS.value:
    step_products()


if __name__ == "__main__":
  app.run(main)
