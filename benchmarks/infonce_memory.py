r"""Per-device memory of the sharded bidirectional InfoNCE at the paper's batch, from XLA.

  python benchmarks/infonce_memory.py                       # N=24,000, D=1,536, 8 devices
  python benchmarks/infonce_memory.py --devices=16 --chunk_sizes=1000,3000

Compiles loss + gradients (no execution) for virtual CPU devices and prints XLA's
`memory_analysis()` per device: the dense single-device loss for comparison, then the shard_map
loss for each column-chunk size. GPU/TPU buffer assignment differs; rerun there for those figures.
"""
from absl import app
from absl import flags

_N = flags.DEFINE_integer("batch", 24_000, "Global batch N.")
_D = flags.DEFINE_integer("dim", 1536, "Embedding width D.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Virtual CPU devices (the mesh's data axis).")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["1000", "3000"], "Column chunk sizes to compile.")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vljepa_jax import losses  # pylint: disable=g-import-not-at-top

  n, d = _N.value, _D.value
  mesh = jax.make_mesh((_DEVICES.value,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  emb = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharding)
  tau = jax.ShapeDtypeStruct((), jnp.float32)
  print(f"bidirectional InfoNCE loss+grads, N={n:,}, D={d:,}, {_DEVICES.value} CPU devices "
        f"(full logits would be {n * n * 4 / 2**30:.2f} GiB)")

  def report(name, fn, args):
    compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(*args).compile()
    stats = compiled.memory_analysis()
    print(f"  {name:<34} temp {stats.temp_size_in_bytes / 2**20:9.1f} MiB/device, "
          f"arguments {stats.argument_size_in_bytes / 2**20:7.1f} MiB, outputs {stats.output_size_in_bytes / 2**20:7.1f} MiB")

  single = jax.ShapeDtypeStruct((n, d), jnp.float32)
  report("dense, one device", losses.bidirectional_infonce, (single, single, tau))
  for chunk in _CHUNKS.value:
    report(f"shard_map, chunk {int(chunk):,}",
           lambda p, t, s, c=int(chunk): losses.bidirectional_infonce(p, t, s, mesh=mesh, chunk_size=c),
           (emb, emb, tau))


if __name__ == "__main__":
  app.run(main)
