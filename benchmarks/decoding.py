r"""Y-decoder generation speed: greedy and beam search with the KV cache, jitted.

  python benchmarks/decoding.py                                  # demo decoder and the paper's, CPU or GPU
  python benchmarks/decoding.py --decoders=demo --batch=256 --beams=1,4

For each decoder config (`demo`: configs/demo.py's 2-layer, 128-wide decoder over MiniLM's 30,522
WordPiece ids; `paper`: configs/vljepa_sft.py:ydecoder's 4-layer, 512-wide decoder over
EmbeddingGemma's 262,144 ids) and beam size, it prints the compile time, then the time of a batch
of `--batch` conditions decoded for `--new_tokens` tokens (EOS is made unreachable, so every row
decodes every token) and the tokens/s that gives, with `jax.devices()[0]`.
"""
import os
import sys
import time

from absl import app
from absl import flags

_DECODERS = flags.DEFINE_list("decoders", ["demo", "paper"], "Which decoder configs: demo, paper.")
_BATCH = flags.DEFINE_integer("batch", 64, "Conditions decoded at once.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "Tokens generated per row.")
_BEAMS = flags.DEFINE_list("beams", ["1", "4"], "Beam sizes (1 = greedy).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls; the best is reported.")


def _decoder_config(name: str, new_tokens: int):
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import vljepa  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path, arg = {"demo": ("configs/demo.py", ""), "paper": ("configs/vljepa_sft.py", "ydecoder")}[name]
  module = config_flags.config_flags._LoadConfigModule(f"{name}_config", os.path.join(repo, path))  # pylint: disable=protected-access
  config = module.get_config(arg) if arg else module.get_config()
  decoder = vljepa.VLJEPAConfig.from_dict(config.model.to_dict()).y_decoder
  return decoder.replace(max_length=max(decoder.max_length, decoder.num_prefix_tokens + new_tokens))


def main(argv):
  del argv
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import generate  # pylint: disable=g-import-not-at-top
  from vljepa_jax.models import y_decoder  # pylint: disable=g-import-not-at-top

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print(f"{'decoder':8s} {'params':>8s} {'beam':>4s} {'compile s':>9s} {'batch s':>8s} {'tokens/s':>10s}")
  for name in _DECODERS.value:
    config = _decoder_config(name, _NEW_TOKENS.value)
    module = y_decoder.YDecoder(config)
    batch = _BATCH.value
    condition = jax.random.normal(jax.random.key(1), (batch, config.embed_dim), jnp.float32)
    params = jax.jit(module.init)(jax.random.key(0), condition, jnp.zeros((batch, 2), jnp.int32))["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    size = sum(x.size for x in jax.tree.leaves(params))
    vocab = config.llama.vocab_size
    for beam in map(int, _BEAMS.value):
      # EOS = an id whose logit is 0 while the best of the other (random) logits is well above it:
      # never among the top `beam` candidates, so every row decodes every token.
      eos = vocab - 1
      head = params["lm_head"]["kernel"].at[:, eos].set(0.0)
      run_params = {**params, "lm_head": {"kernel": head}}
      search = generate.generator(module, bos_id=0, eos_id=eos, pad_id=0, max_new_tokens=_NEW_TOKENS.value,
                                  beam_size=beam)
      start = time.perf_counter()
      compiled = search.lower(run_params, condition, jnp.float32(1.0)).compile()
      compile_s = time.perf_counter() - start
      jax.block_until_ready(compiled(run_params, condition, jnp.float32(1.0)))
      best = float("inf")
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(compiled(run_params, condition, jnp.float32(1.0)))
        best = min(best, time.perf_counter() - start)
      tokens = batch * _NEW_TOKENS.value
      print(f"{name:8s} {size / 1e6:7.1f}M {beam:4d} {compile_s:9.1f} {best:8.3f} {tokens / best:10,.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
