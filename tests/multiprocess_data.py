"""One of two `jax.distributed` CPU processes for test_data_pipeline (not a test module itself).

usage: multiprocess_data.py PROCESS_ID NUM_PROCESSES PORT OUTPUT_JSON
Each process reads its own shard of the embedded dataset, puts it on a (data=2, fsdp=2) mesh over
both processes' devices, gathers the global batch back and writes what it saw to OUTPUT_JSON.
"""
import json
import sys

import jax

process_id, num_processes, port, output = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.config.update("jax_num_cpu_devices", 2)
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                           process_id=process_id)

from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
from vljepa_jax.data import pipeline  # pylint: disable=g-import-not-at-top

config = {"sources": [{"type": "shapes", "size": 40, "image_size": 32, "num_frames": 4}],
          "num_frames": 4, "crop_size": 32, "num_threads": 1}
batch = next(pipeline.make_iterator(config, global_batch_size=8))  # process index/count from JAX
mesh = jax.make_mesh((2, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
arrays = global_batch.to_global_batch(batch, mesh)
gathered = multihost_utils.process_allgather(arrays["source_index"], tiled=True)
video = multihost_utils.process_allgather(arrays["video"], tiled=True)
lo = process_id * 4
np.testing.assert_array_equal(video[lo:lo + 4], batch["video"])
with open(output, "w") as f:
  json.dump({"local": batch["source_index"].tolist(), "gathered": np.asarray(gathered).tolist(),
             "global_shape": list(arrays["video"].shape), "sharding": [list(axes) if isinstance(axes, tuple) else axes
                          for axes in arrays["video"].sharding.spec]}, f)
jax.distributed.shutdown()
