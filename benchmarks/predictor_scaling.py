r"""Predictor backbones against sequence length: Llama (attention, O(L²)) vs Mamba-3 (SSM, O(L)).

  python benchmarks/predictor_scaling.py                       # llama vs mamba3, 1k-32k tokens, width 256, 2 layers
  python benchmarks/predictor_scaling.py --lengths=256,512,1024 --repeats=1        # smoke
  python benchmarks/predictor_scaling.py --json=/tmp/scaling.json --plot=/tmp/scaling.png
  python benchmarks/predictor_scaling.py --backbones=llama,mamba3,hybrid --layers=4   # hybrid attends in layer 4

The backbones run at matched size: the Llama config is built from the flags (`--width`, `--layers`,
`--intermediate_size`, multi-head attention in `--head_dim`-wide heads, plain RoPE), and every other
backbone is `predictor_backbones.matched_config(name, llama_config)` (same width, depth, vocabulary,
MLP size and dtypes). Each is called as the VL-JEPA predictor calls it: `inputs_embeds (B, L, D)`
(random), a full `attention_mask`, `causal=False`. The token-embedding table is unused with
`inputs_embeds`; the vocabulary is kept small (`_VOCAB`) so its zero gradient costs nothing.

Per (backbone, length) two programs are compiled once each: the forward, and forward + backward
(`jax.value_and_grad` of the output's mean with respect to all parameters). Each is called once as a
warm-up, then `--repeats` times with `jax.block_until_ready`; the median is reported. "temp MiB" is
XLA's compiled temporary allocation of the forward + backward program
(`memory_analysis().temp_size_in_bytes`). Before anything runs, its temporaries, arguments and
outputs are compared with the memory available (the device's free memory on an accelerator; on a
CPU the system's available memory plus what this process's heap holds free, since `--host_memory`
keeps freed memory): a length that would not fit is compiled for its temp MiB but not run. A length
whose compilation or run fails (out of memory) is reported as failed, and the script goes on.
`--max_seconds`: once one length's forward + backward took longer, the backbone's longer lengths are
compiled (temp MiB) but not timed.

Attention: the Llama stack uses `--llama_attention` (default "xla", the library's default
`LlamaConfig.attention_impl`), which materialises the (L, L) logits per head: O(L²) time and memory.
On a GPU or TPU, "pallas" (or "auto", "cudnn", "splash") gives the flash kernels' O(L) memory. On a
CPU the Pallas kernels run in interpret mode, which is not a timing, so the script refuses them
there. The hybrid's attention layers always run "xla" (its config has no attention_impl), and at
`attention_every=4` a stack of fewer than 4 layers has none.

Output: a progress line per (backbone, length), then a table (length | per backbone: fwd s,
fwd+bwd s, temp MiB | llama/<other> fwd+bwd), the crossover length of each other backbone (the
first length where its forward + backward is faster than Llama's), and the scaling check: forward +
backward µs per token at each length and the log-log slope of time against length (≈ 1: linear,
≈ 2: quadratic; small lengths are dominated by fixed costs, so the slope over the longest lengths
is printed too).

`--json=PATH` writes
  {"llama": {"<length>": {"fwd_s": float, "fwd_bwd_s": float, "temp_mib": float}, ...}, "mamba3": {...},
   "meta": {machine, device, jax version, dtype, batch, repeats, attention, configs, parameter counts}}
A length that was not timed (failed, would not fit, or skipped by `--max_seconds`) has null for what
was not measured (temp_mib is kept when the compilation succeeded) and an "error" string.
`--plot=PATH` writes a PNG: forward + backward time and temp MiB against length, log-log.

`--dtype` and `--host_memory` are train_step.py's flags (imported below): one definition each.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # vljepa_jax from a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # train_step
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

_LENGTHS = flags.DEFINE_list("lengths", ["1024", "2048", "4096", "8192", "16384", "32768"], "Sequence lengths.")
_BACKBONES = flags.DEFINE_list("backbones", ["llama", "mamba3"], "Predictor backbones (predictor_backbones.BACKBONES): "
                               "Llama's config is built from the flags, every other one matched to it.")
_WIDTH = flags.DEFINE_integer("width", 256, "hidden_size of every backbone.")
_LAYERS = flags.DEFINE_integer("layers", 2, "num_layers of every backbone.")
_INTERMEDIATE = flags.DEFINE_integer("intermediate_size", 1024, "SwiGLU MLP width of every backbone.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "Llama's head width (heads = width / head_dim, no GQA).")
_BATCH = flags.DEFINE_integer("batch", 1, "Sequences per call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per program after one warm-up; the median is reported.")
_LLAMA_ATTENTION = flags.DEFINE_enum("llama_attention", "xla", ["xla", "pallas", "cudnn", "splash", "auto"],
                                     "Llama's attention_impl (models/attention.py); the Pallas and splash kernels "
                                     "are refused on a CPU (interpret mode is not a timing).")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 120.0, "Once a length's forward + backward takes longer than this, "
                                  "the backbone's longer lengths are compiled (temp MiB) but not timed (0: no limit).")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_PLOT = flags.DEFINE_string("plot", None, "Write a log-log PNG of fwd+bwd time and temp MiB against length here.")

_VOCAB = 256  # the token-embedding table is unused with inputs_embeds; small so its (zero) gradient costs nothing
# Run a program only if it needs at most this fraction of the memory available: the peak of an XLA:CPU run exceeds
# its compiled temp size (a 16k-token Llama step, 18 GiB of temp, was killed on a 24 GiB machine at 0.9).
_HEADROOM = 0.6
_INTERPRETED = ("pallas", "splash")  # kernels that a CPU runs in interpret mode
_MIB = 2 ** 20
_RNG = "rbg"  # key implementation for the parameters and inputs, see `initial_params`


def _positive_lengths(values) -> list[int]:
  try:
    lengths = sorted({int(v) for v in values})
  except ValueError as e:
    raise app.UsageError(f"--lengths={','.join(values)}: expected positive integers") from e
  if not lengths or lengths[0] < 1:
    raise app.UsageError(f"--lengths={','.join(values)}: expected positive integers")
  return lengths


def build_configs(backbones, *, width, layers, intermediate_size, head_dim, dtype, attention) -> dict:
  """Backbone name -> its config: Llama from the arguments, every other backbone matched to it."""
  from vljepa_jax.models import llama  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  for name in backbones:
    predictor_backbones.get(name)  # an unknown name fails here, naming the registered ones
  if width % head_dim:
    raise app.UsageError(f"--width={width} is not a multiple of --head_dim={head_dim}")
  heads = width // head_dim
  reference = llama.LlamaConfig(vocab_size=_VOCAB, hidden_size=width, intermediate_size=intermediate_size,
                                num_layers=layers, num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                                rope_theta=10000.0, rope_scaling_factor=None, causal=False, attention_impl=attention,
                                dtype=dtype, param_dtype="float32")
  return {name: predictor_backbones.matched_config(name, reference) for name in backbones}


def _available_bytes(device) -> int | None:
  """Memory a program could use now: the device's free memory, or on a CPU the system's plus our heap's free part."""
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
  try:
    with open("/proc/meminfo") as f:
      available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
  except (OSError, StopIteration):
    return None
  return available + _heap_free_bytes()


def _heap_free_bytes() -> int:
  """Free bytes held in this process's malloc heap (glibc `mallinfo2`; 0 elsewhere): memory the
  system does not count as available while `--host_memory` keeps the freed temporaries of earlier runs."""
  import ctypes  # pylint: disable=g-import-not-at-top

  class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
  try:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
  except (OSError, AttributeError):
    return 0
  mallinfo2.restype = MallInfo2
  return int(mallinfo2().fordblks)


def _median_seconds(compiled, args, repeats: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _first_line(e: Exception) -> str:
  lines = str(e).strip().splitlines()
  return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def initial_params(name: str, config):
  """Backbone `name`'s initialised parameters: once per backbone, since they do not depend on the length."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  module = predictor_backbones.get(name).module(config)
  init = lambda key: nn.meta.unbox(module.init(key, inputs_embeds=jnp.zeros((1, 8, config.hidden_size)),
                                               attention_mask=jnp.ones((1, 8), jnp.int32), causal=False))["params"]
  # RBG keys: XLA:CPU compiles threefry's unrolled rounds slowly (a 1-layer, 32-wide Llama's init: 11 s with
  # threefry, 2.7 s with RBG on a 2-core CPU); the parameters' distributions are the same.
  return jax.jit(init)(jax.random.key(0, impl=_RNG))


def parameter_counts(name: str, params) -> dict:
  """{"total", "without_embedding_table"}: backbone `name`'s parameters, and those outside its token embedding."""
  import jax  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  token_embedding = predictor_backbones.get(name).token_embedding
  total = table = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    total += leaf.size
    if "/".join(str(getattr(k, "key", k)) for k in path).startswith(token_embedding + "/"):
      table += leaf.size
  return {"total": total, "without_embedding_table": total - table}


def measure(name: str, config, params, length: int, *, batch: int, repeats: int, skip_reason: str | None = None
            ) -> tuple[dict, float | None]:
  """({"fwd_s", "fwd_bwd_s", "temp_mib"}, plus "error" where not timed; forward + backward compile seconds)
  of backbone `name` with `params` at `length` tokens. `skip_reason`: compile for the temp MiB only, and say why."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import predictor_backbones  # pylint: disable=g-import-not-at-top
  module = predictor_backbones.get(name).module(config)
  result = {"fwd_s": None, "fwd_bwd_s": None, "temp_mib": None}

  def forward(params, embeds, mask):
    return module.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask, causal=False)

  def mean_output(params, embeds, mask):
    return jnp.mean(forward(params, embeds, mask).astype(jnp.float32))

  # The inputs are compiled for as shapes, so that nothing of the length's size is allocated before the memory check.
  embeds = jax.ShapeDtypeStruct((batch, length, config.hidden_size), config.compute_dtype)
  mask = jax.ShapeDtypeStruct((batch, length), jnp.int32)
  try:
    start = time.perf_counter()
    fwd_bwd = jax.jit(jax.value_and_grad(mean_output)).lower(params, embeds, mask).compile()
    compile_s = time.perf_counter() - start
    memory = fwd_bwd.memory_analysis()
    result["temp_mib"] = memory.temp_size_in_bytes / _MIB
  except Exception as e:  # pylint: disable=broad-except
    return {**result, "error": f"compile failed: {_first_line(e)}"}, None
  if skip_reason is not None:
    return {**result, "error": skip_reason}, compile_s
  needed = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
  available = _available_bytes(jax.devices()[0])
  if available is not None and needed > _HEADROOM * available:
    return {**result, "error": f"not run: needs {needed / _MIB:,.0f} MiB, {available / _MIB:,.0f} MiB "
                               "available"}, compile_s
  try:
    fwd = jax.jit(forward).lower(params, embeds, mask).compile()
    args = (params, jax.random.normal(jax.random.key(1, impl=_RNG), embeds.shape, embeds.dtype),
            jnp.ones(mask.shape, mask.dtype))
    result["fwd_s"] = _median_seconds(fwd, args, repeats)
    result["fwd_bwd_s"] = _median_seconds(fwd_bwd, args, repeats)
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError RESOURCE_EXHAUSTED and the like)
    return {**result, "error": f"run failed: {_first_line(e)}"}, compile_s  # a forward already timed is kept
  return result, compile_s


def run(lengths, configs, params, *, batch, repeats, max_seconds) -> dict:
  """Backbone -> length -> `measure`'s result, printing a line each; `max_seconds` as the flag."""
  results = {name: {} for name in configs}
  for name in configs:
    too_slow = None
    for length in lengths:
      skip = None if too_slow is None else f"not timed: --max_seconds={max_seconds:g} exceeded at length {too_slow}"
      r, compile_s = measure(name, configs[name], params[name], length, batch=batch, repeats=repeats, skip_reason=skip)
      results[name][length] = r
      temp = "n/a" if r["temp_mib"] is None else f"{r['temp_mib']:,.1f} MiB"
      compiled = "" if compile_s is None else f" (fwd+bwd compiled in {compile_s:.1f} s)"
      if "error" in r:
        print(f"  {name} L={length}: temp {temp}{compiled}; {r['error']}", flush=True)
        continue
      print(f"  {name} L={length}: fwd {r['fwd_s']:.4f} s, fwd+bwd {r['fwd_bwd_s']:.4f} s, temp {temp}{compiled}",
            flush=True)
      if max_seconds and r["fwd_bwd_s"] > max_seconds and too_slow is None:
        too_slow = length
        print(f"  {name}: fwd+bwd took {r['fwd_bwd_s']:.1f} s > --max_seconds={max_seconds:g} at L={length}; "
              "longer lengths are compiled for temp MiB only", flush=True)
  return results


def _seconds(value) -> str:
  return "-" if value is None else f"{value:.4f}"


def _slope(points) -> float | None:
  """Least-squares slope of log(time) against log(length) over (length, seconds) points."""
  if len(points) < 2:
    return None
  xs, ys = [math.log(p[0]) for p in points], [math.log(p[1]) for p in points]
  mx, my = statistics.fmean(xs), statistics.fmean(ys)
  return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def report(results: dict, lengths) -> None:
  """The table, the crossover lengths and the scaling check (see the module docstring)."""
  names = list(results)
  others = [n for n in names if n != "llama"] if "llama" in names else []
  header = ["length"]
  for n in names:
    header += [f"{n} fwd s", f"{n} fwd+bwd s", f"{n} temp MiB"]
  header += [f"llama/{n} fwd+bwd" for n in others]
  rows = []
  for length in lengths:
    row = [f"{length:,}"]
    for n in names:
      r = results[n][length]
      row += [_seconds(r["fwd_s"]), _seconds(r["fwd_bwd_s"]), "-" if r["temp_mib"] is None else f"{r['temp_mib']:,.1f}"]
    for n in others:
      a, b = results["llama"][length]["fwd_bwd_s"], results[n][length]["fwd_bwd_s"]
      row.append("-" if a is None or b is None else f"{a / b:.2f}")
    rows.append(row)
  print()
  harness.print_table(header, rows)
  for n in others:
    faster = [length for length in lengths if results["llama"][length]["fwd_bwd_s"] is not None
              and results[n][length]["fwd_bwd_s"] is not None
              and results[n][length]["fwd_bwd_s"] < results["llama"][length]["fwd_bwd_s"]]
    print(f"crossover {n}: " + (f"L = {faster[0]:,} (first length where {n} fwd+bwd is faster than llama's)"
                                if faster else "none in these lengths"))
  print()
  print("scaling (fwd+bwd µs per token, and the log-log slope of time against length: 1 = linear, 2 = quadratic)")
  harness.print_table(
      ["length"] + [f"{n} µs/token" for n in names],
      [[f"{length:,}"] + ["-" if results[n][length]["fwd_bwd_s"] is None
                          else f"{results[n][length]['fwd_bwd_s'] * 1e6 / length:.2f}" for n in names]
       for length in lengths])
  for n in names:
    points = [(length, results[n][length]["fwd_bwd_s"]) for length in lengths if results[n][length]["fwd_bwd_s"]]
    slope, tail = _slope(points), _slope(points[-3:])
    print(f"slope {n}: " + ("-" if slope is None else f"{slope:.2f} over all timed lengths, {tail:.2f} over the "
                            f"longest {min(3, len(points))}"))


def plot(results: dict, lengths, path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
  for name, by_length in results.items():
    for ax, key in ((ax_time, "fwd_bwd_s"), (ax_mem, "temp_mib")):
      points = [(length, by_length[length][key]) for length in lengths if by_length[length][key]]
      if points:
        ax.plot(*zip(*points), marker="o", label=name)
  for ax, label in ((ax_time, "forward + backward, s"), (ax_mem, "XLA temp memory (fwd+bwd), MiB")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  host_memory_note = train_step_benchmark._retain_host_memory()  # pylint: disable=protected-access
  import jax  # pylint: disable=g-import-not-at-top
  lengths = _positive_lengths(_LENGTHS.value)
  for name, value in (("width", _WIDTH.value), ("layers", _LAYERS.value), ("intermediate_size", _INTERMEDIATE.value),
                      ("head_dim", _HEAD_DIM.value), ("batch", _BATCH.value), ("repeats", _REPEATS.value)):
    if value < 1:
      raise app.UsageError(f"--{name}={value}: expected a positive integer")
  dtype = flags.FLAGS.dtype or "float32"
  backend = jax.default_backend()
  attention = _LLAMA_ATTENTION.value
  if not _BACKBONES.value:
    raise app.UsageError("--backbones is empty: expected names from predictor_backbones.BACKBONES")
  if attention != "xla" and "llama" not in _BACKBONES.value:
    raise app.UsageError(f"--llama_attention={attention} applies to the llama backbone, which --backbones="
                         f"{','.join(_BACKBONES.value)} does not run (the hybrid's attention layers always run xla)")
  if backend == "cpu" and attention in _INTERPRETED:
    raise app.UsageError(f"--llama_attention={attention}: on a CPU the Pallas kernels run in interpret mode, "
                         "which is not a timing; use xla here and pallas on a GPU or TPU")
  configs = build_configs(_BACKBONES.value, width=_WIDTH.value, layers=_LAYERS.value,
                          intermediate_size=_INTERMEDIATE.value, head_dim=_HEAD_DIM.value, dtype=dtype,
                          attention=attention)
  machine = harness.machine_line() + host_memory_note
  print(machine)
  print(f"{dtype} compute, float32 parameters, batch {_BATCH.value}, causal=False, full mask, median of "
        f"{_REPEATS.value} after a warm-up; llama attention_impl={attention}")
  params = {name: initial_params(name, config) for name, config in configs.items()}
  counts = {}
  for name, config in configs.items():
    counts[name] = parameter_counts(name, params[name])
    table = counts[name]["total"] - counts[name]["without_embedding_table"]
    print(f"{name}: {counts[name]['without_embedding_table']:,} parameters (+{table:,} in the unused "
          f"{_VOCAB}-row embedding table); {config}")
  results = run(lengths, configs, params, batch=_BATCH.value, repeats=_REPEATS.value,
                max_seconds=_MAX_SECONDS.value)
  report(results, lengths)
  if _JSON.value:
    meta = {"machine": machine, "device": jax.devices()[0].device_kind, "backend": backend, "jax": jax.__version__,
            "python": platform.python_version(), "dtype": dtype, "batch": _BATCH.value, "repeats": _REPEATS.value,
            "llama_attention": attention, "parameters": counts,
            "configs": {name: config.to_dict() for name, config in configs.items()}}
    data = {name: {str(length): r for length, r in by_length.items()} for name, by_length in results.items()}
    with open(_JSON.value, "w") as f:
      json.dump({**data, "meta": meta}, f, indent=1)
    print(f"wrote {_JSON.value}")
  if _PLOT.value:
    plot(results, lengths, _PLOT.value, f"{', '.join(configs)}: width {_WIDTH.value}, {_LAYERS.value} layers, "
         f"batch {_BATCH.value}, {dtype}; {machine}")
    print(f"wrote {_PLOT.value}")


if __name__ == "__main__":
  app.run(main)
