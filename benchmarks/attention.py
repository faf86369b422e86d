r"""Attention implementations: time, TFLOP/s and compiled temporary memory, forward and forward+backward.

  python benchmarks/attention.py                        # on a GPU: pallas vs cudnn vs xla, D 64/128, L 512-8192
  python benchmarks/attention.py --impls=pallas --blocks=64x64,128x64,128x128   # tile sweep
  python benchmarks/attention.py --check                # any machine (CPU: interpret mode): max error vs float64

Shapes follow the FlashAttention papers: `batch * length = --tokens` (16k) and `heads * head_dim =
--width` (2048), bf16, non-causal unless `--causal` (the X-encoder and predictor are bidirectional).
FLOPs: forward 4·B·L²·H·D (halved when causal); forward+backward 3.5x that (backward = 2.5x forward).
"temp MiB" is XLA's compiled temporary allocation (`memory_analysis().temp_size_in_bytes`): O(L²)
for xla, O(L) for the flash kernels. Timings are the median of `--repeats` calls after a warm-up.

`--check` compares each available implementation with the XLA reference attention in fp32 at full
matmul precision (on the same bf16-rounded inputs) at small shapes, forward and gradients; this is
what a CPU machine can report, since Pallas kernels there run in interpret mode. (The reference
itself is tested against float64 NumPy in tests/test_attention.py.)
"""
import functools
import os
import statistics
import sys
import time

from absl import app
from absl import flags

_IMPLS = flags.DEFINE_list("impls", None, "Implementations (default: those this backend runs: pallas, cudnn, "
                           "splash, xla).")
_HEAD_DIMS = flags.DEFINE_list("head_dims", ["64", "128"], "Head dims (ViT-L and Llama-3.2-1B use 64; 128 is common).")
_LENGTHS = flags.DEFINE_list("lengths", ["512", "1024", "2048", "4096", "8192"], "Sequence lengths.")
_TOKENS = flags.DEFINE_integer("tokens", 16384, "batch * length.")
_WIDTH = flags.DEFINE_integer("width", 2048, "heads * head_dim.")
_CAUSAL = flags.DEFINE_bool("causal", False, "Causal masking.")
_MODES = flags.DEFINE_list("modes", ["fwd", "fwd_bwd"], "fwd and/or fwd_bwd.")
_BLOCKS = flags.DEFINE_list("blocks", [], "Pallas tiles to sweep as QxK, e.g. 128x64 (default: the kernel's).")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per configuration.")
_CHECK = flags.DEFINE_bool("check", False, "Report max error against float64 NumPy instead of timing.")


def _available(backend: str) -> list[str]:
  return {"gpu": ["pallas", "cudnn", "xla"], "tpu": ["pallas", "splash", "xla"]}.get(backend, ["pallas", "xla"])


def _attention_fn(impl: str, causal: bool, block):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vljepa_jax.kernels import flash  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import attention as attention_lib  # pylint: disable=g-import-not-at-top
  if impl == "pallas" and block is not None:
    return lambda q, k, v: flash.flash_attention(q, k, v, causal=causal, block_q=block[0], block_k=block[1])
  return lambda q, k, v: attention_lib.attention(q, k, v, causal=causal, impl=impl).astype(jnp.float32)


def _timed(fn, args, repeats: int):
  import jax  # pylint: disable=g-import-not-at-top
  jitted = jax.jit(fn)
  compiled = jitted.lower(*args).compile()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times), temp


def _benchmark():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  impls = _IMPLS.value or _available(backend)
  blocks = [tuple(int(x) for x in b.split("x")) for b in _BLOCKS.value] or [None]
  masking = "causal" if _CAUSAL.value else "bidirectional"
  print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, bf16, {masking}, "
        f"batch*length={_TOKENS.value}, heads*head_dim={_WIDTH.value}")
  if backend == "cpu":
    print("note: on CPU the Pallas kernels run in interpret mode; their times are not kernel speed")
  header = ("impl", "D", "L", "B", "H", "mode", "ms", "TFLOP/s", "temp MiB")
  print(f"{header[0]:14s} " + " ".join(f"{h:>{w}s}" for h, w in zip(header[1:], (4, 6, 3, 3, 7, 9, 8, 9))))
  for head_dim in map(int, _HEAD_DIMS.value):
    heads = _WIDTH.value // head_dim
    for length in map(int, _LENGTHS.value):
      batch = max(1, _TOKENS.value // length)
      keys = jax.random.split(jax.random.key(0), 3)
      q, k, v = (jax.random.normal(key, (batch, length, heads, head_dim), jnp.bfloat16) for key in keys)
      flops = 4 * batch * length * length * heads * head_dim * (0.5 if _CAUSAL.value else 1.0)
      for impl in impls:
        for block in (blocks if impl == "pallas" else [None]):
          name = impl if block is None else f"{impl}{block[0]}x{block[1]}"
          attend = _attention_fn(impl, _CAUSAL.value, block)
          for mode in _MODES.value:
            total_of = lambda q, k, v, attend=attend: attend(q, k, v).astype(jnp.float32).sum()
            fn = attend if mode == "fwd" else jax.grad(total_of, argnums=(0, 1, 2))
            try:
              seconds, temp = _timed(fn, (q, k, v), _REPEATS.value)
            except Exception as e:  # pylint: disable=broad-except
              print(f"{name:14s} {head_dim:4d} {length:6d} {batch:3d} {heads:3d} {mode:>7s}  failed: "
                    f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
              continue
            total = flops * (1.0 if mode == "fwd" else 3.5)
            temp_mib = "n/a" if temp is None else f"{temp / 2**20:.1f}"
            print(f"{name:14s} {head_dim:4d} {length:6d} {batch:3d} {heads:3d} {mode:>7s} {seconds * 1e3:9.3f} "
                  f"{total / seconds / 1e12:8.1f} {temp_mib:>9s}", flush=True)


def _check():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import attention as attention_lib  # pylint: disable=g-import-not-at-top
  backend = jax.default_backend()
  impls = _IMPLS.value or _available(backend)
  print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}; max |error| vs fp32 xla")
  print(f"{'impl':8s} {'dtype':>8s} {'B,L,Hq,Hkv,D':>16s} {'mask':>14s} {'out':>9s} {'dq':>9s} {'dk':>9s} {'dv':>9s}")
  shapes = [(2, 256, 4, 4, 64), (1, 333, 8, 2, 64), (2, 200, 8, 1, 128)]
  for impl in impls:
    for dtype in (jnp.float32, jnp.bfloat16):
      if impl in ("cudnn", "xla") and dtype == jnp.float32:
        continue  # cuDNN attention takes bf16/fp16 only; fp32 xla is the reference itself
      for shape in shapes:
        batch, length, q_heads, kv_heads, head_dim = shape
        for causal, padded in ((False, True), (True, False)):
          rng = np.random.default_rng(0)
          q = rng.normal(size=(batch, length, q_heads, head_dim))
          k, v = (rng.normal(size=(batch, length, kv_heads, head_dim)) for _ in range(2))
          d_out = rng.normal(size=q.shape)
          q, k, v = (np.asarray(jnp.asarray(x, dtype).astype(jnp.float32)) for x in (q, k, v))
          lengths = np.full(batch, length)
          lengths[-1] = length * 2 // 3
          kv_mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32) if padded else None

          def loss(q, k, v, kv_mask=kv_mask, causal=causal, impl=impl, d_out=d_out):
            out = attention_lib.attention(q, k, v, kv_mask=kv_mask, causal=causal, impl=impl).astype(jnp.float32)
            return jnp.sum(out * d_out), out

          (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
              *(jnp.asarray(x, dtype) for x in (q, k, v)))
          with jax.default_matmul_precision("highest"):
            (_, expected), expected_grads = jax.jit(jax.value_and_grad(
                functools.partial(loss, impl="xla"), argnums=(0, 1, 2), has_aux=True))(q, k, v)
          errors = [float(jnp.max(jnp.abs(a.astype(jnp.float32) - b)))
                    for a, b in zip((out, *grads), (expected, *expected_grads))]
          mask = ("causal" if causal else "") + ("padding" if padded else "")
          print(f"{impl:8s} {jnp.dtype(dtype).name:>8s} {','.join(map(str, shape)):>16s} {mask:>14s} "
                + " ".join(f"{e:9.2e}" for e in errors), flush=True)


def main(argv):
  del argv
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if _CHECK.value:
    _check()
  else:
    _benchmark()


if __name__ == "__main__":
  app.run(main)
