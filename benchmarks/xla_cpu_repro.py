r"""Minimal, standalone reproductions of the XLA:CPU gaps behind the train-step comparison with PyTorch.

  python benchmarks/xla_cpu_repro.py                 # matmuls, batched matmuls, attention blocks
  taskset -c 0 python benchmarks/xla_cpu_repro.py    # the same on one core

Three parts, each JAX against torch on the same float32 random inputs, median of 5 rounds:
  1. plain 2-D GEMMs at the towers' shapes (the machine's matmul speed: equal in both);
  2. batched matmuls at attention shapes (`einsum("bmk,bkn->bmn")` vs `torch.bmm`): with several
     threads XLA:CPU's batched dot runs at about its one-core speed, torch's scales;
  3. one attention block (q/k/v/o projections + masked softmax attention), forward and forward +
     backward: `models.attention.attention` (impl "xla") against `F.scaled_dot_product_attention`.
Nothing from the library is timed except the attention function in part 3.
"""
import os
import statistics
import sys
import time

from absl import app
from absl import flags

_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds (median).")
_PARTS = flags.DEFINE_list("parts", ["gemm", "bmm", "attention"], "Which parts to run.")

GEMMS = ((2048, 2048, 2048), (8192, 384, 384), (8192, 384, 1536), (8192, 1536, 384), (768, 384, 1536))
BMMS = ((192, 256, 64, 256), (192, 256, 256, 64), (256, 44, 32, 44), (256, 44, 44, 32))
# (batch, length, width, heads, kv heads): small's ViT and predictor, the demo's predictor.
BLOCKS = ((32, 256, 384, 6, 6), (32, 272, 512, 8, 2), (64, 44, 128, 4, 2))


def _seconds(fn, calls: int = 5) -> float:
  fn()
  times = []
  for _ in range(_ROUNDS.value):
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
    print("\n| batched matmul b, m×k×n | JAX GFLOP/s | torch GFLOP/s |\n|---|---|---|")
    bmm = jax.jit(lambda a, b: jnp.einsum("bmk,bkn->bmn", a, b))
    for b, m, k, n in BMMS:
      x, y = rng.random((b, m, k), np.float32), rng.random((b, k, n), np.float32)
      jx, jy, tx, ty = jnp.asarray(x), jnp.asarray(y), torch.from_numpy(x), torch.from_numpy(y)
      flop = 2 * b * m * k * n
      print(f"| {b}, {m}×{k}×{n} | {flop / _seconds(lambda: bmm(jx, jy), 20) / 1e9:.1f} | "
            f"{flop / _seconds(lambda: torch.bmm(tx, ty), 20) / 1e9:.1f} |", flush=True)


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


def main(argv):
  del argv
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  print(f"cores available: {len(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}, "
        f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__}")
  gemm_and_bmm(_PARTS.value)
  if "attention" in _PARTS.value:
    attention_blocks()


if __name__ == "__main__":
  app.run(main)
