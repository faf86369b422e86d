"""Command line: convert a PyTorch checkpoint into a vljepa-jax (Flax + Orbax) model directory.

Examples:
  python -m vljepa_jax.convert --model bert --input ~/all-MiniLM-L6-v2 --output /tmp/minilm
  python -m vljepa_jax.convert --model llama --input ~/Llama-3.2-1B --layers 8:16 --output /tmp/pred
  python -m vljepa_jax.convert --model llama --input meta-llama/Llama-3.2-1B --layers 8:16 --output /tmp/pred
  python -m vljepa_jax.convert --model vjepa2 --input vitl.pt --checkpoint_key target_encoder \
      --output /tmp/vitl
  python -m vljepa_jax.convert --model vjepa2_1 --input vjepa2_1_vitl_dist_vitG_384.pt --output /tmp/vitl_2_1
  python -m vljepa_jax.convert --model embeddinggemma --input ~/embeddinggemma-300m --output /tmp/eg
  python -m vljepa_jax.convert --model open_vljepa --input cun-bjy/open-vljepa --x_encoder /tmp/vitl \
      --output /tmp/open_vljepa
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags

from vljepa_jax import convert as convert_lib

_MODEL = flags.DEFINE_enum("model", None, list(convert_lib.FAMILIES), "Model family of the checkpoint.")
_INPUT = flags.DEFINE_string(
    "input", None, "Hugging Face model folder (config.json + *.safetensors or pytorch_model.bin), "
    "a .safetensors file, (vjepa2, vjepa2_1, open_vljepa) a native .pt checkpoint, or a Hugging Face Hub repo id "
    "OWNER/NAME[@REVISION], fetched with huggingface_hub (its cache, token and HF_HUB_OFFLINE apply).")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to create (written atomically).")
_LAYERS = flags.DEFINE_string("layers", None, "llama: keep source layers START:STOP (e.g. 8:16).")
_CHECKPOINT_KEY = flags.DEFINE_enum(
    "checkpoint_key", None, ["encoder", "target_encoder", "ema_encoder"],
    "vjepa2 / vjepa2_1 native .pt: which state dict to convert. Default: vjepa2 reads encoder; vjepa2_1 what "
    "torch hub reads, ema_encoder when present (distilled ViT-B/L), else target_encoder (ViT-g/G).")
_X_ENCODER = flags.DEFINE_string(
    "x_encoder", None, "open_vljepa: a folder converted with --model vjepa2 (facebook/vjepa2-vitl-fpc64-256), "
    "stored as the model's X-encoder; without it the output has no X-encoder parameters.")
_VARIANT = flags.DEFINE_string("variant", None, "Architecture preset when the input has no config.json.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")


def _parse_layers(spec: str | None) -> tuple[int, int] | None:
  if spec is None:
    return None
  try:
    start, stop = (int(x) for x in spec.split(":"))
  except ValueError:
    raise convert_lib.ConversionError(f"--layers {spec!r}: expected START:STOP, e.g. 8:16") from None
  if not 0 <= start < stop:
    raise convert_lib.ConversionError(f"--layers {spec!r}: expected 0 <= START < STOP")
  return start, stop


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    options = convert_lib.ConvertOptions(
        layers=_parse_layers(_LAYERS.value), checkpoint_key=_CHECKPOINT_KEY.value,
        variant=_VARIANT.value, param_dtype=_PARAM_DTYPE.value, x_encoder=_X_ENCODER.value)
    out = convert_lib.convert(_MODEL.value, _INPUT.value, _OUTPUT.value, options, overwrite=_OVERWRITE.value)
  except convert_lib.ConversionError as e:
    print(f"conversion failed: {e}", file=sys.stderr)
    return 1
  print(f"converted {_MODEL.value} checkpoint {_INPUT.value} -> {out}")
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["model", "input", "output"])
  app.run(lambda argv: sys.exit(main(argv)))
