"""open-vljepa `best.pt` -> VLJEPA: Ŝ_Y and S_Y against a PyTorch forward written the way open-vljepa
computes them, on a small checkpoint in best.pt's exact layout; clean failures; the --x_encoder option."""
import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from torch import nn

from conftest import REPO, run_cli
from vljepa_jax import convert
from vljepa_jax.convert import checkpoint
from vljepa_jax.convert import open_vljepa
from vljepa_jax.models import params as params_lib
from vljepa_jax.models import vit

VISION, EMBED, KEEP = 1024, 48, 2  # V-JEPA 2 ViT-L token width; shared space; kept Llama layers
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _redraw(module, seed):
  """HF init leaves norms at 1 (Llama) or 0 (Gemma): draw everything so every weight matters."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      scale = 0.5 if "norm" in name else 0.1
      p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if "norm" in name and "layers" not in name else 0))


def _build_reference():
  """open-vljepa's module tree at small sizes: predictor (last KEEP layers of a Llama) and y_encoder."""
  torch.manual_seed(0)
  base = transformers.LlamaModel(transformers.LlamaConfig(
      vocab_size=96, hidden_size=128, intermediate_size=192, num_hidden_layers=KEEP + 1, num_attention_heads=2,
      num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE),
      max_position_embeddings=8192, attn_implementation="sdpa")).eval()
  gemma = transformers.Gemma3TextModel(transformers.Gemma3TextConfig(
      vocab_size=80, hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=2,
      num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
      use_bidirectional_attention=True, max_position_embeddings=512, attn_implementation="eager")).eval()
  _redraw(base, 1)
  _redraw(gemma, 2)
  predictor = nn.Module()
  predictor.embed_tokens, predictor.norm, predictor.rotary_emb = base.embed_tokens, base.norm, base.rotary_emb
  predictor.layers = nn.ModuleList(list(base.layers[-KEEP:]))
  predictor.vis_proj, predictor.out_proj = nn.Linear(VISION, 128), nn.Linear(128, EMBED)
  y_encoder = nn.Module()
  y_encoder.model, y_encoder.projector = gemma, nn.Linear(64, EMBED)
  root = nn.Module()
  root.predictor, root.y_encoder = predictor, y_encoder
  return root.eval()


def _masked_mean(h, mask):
  m = mask.unsqueeze(-1).to(h.dtype)
  return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def _reference_s_hat(p, visual, q_ids, q_mask):
  """open-vljepa's Predictor.forward: [vis_proj(v); embed(q)], key-padding 4-D mask, positions 0..L-1."""
  h = torch.cat([p.vis_proj(visual), p.embed_tokens(q_ids)], dim=1)
  batch, length = h.shape[:2]
  keep = torch.cat([torch.ones(batch, visual.shape[1]), q_mask.float()], dim=1)
  mask = ((1.0 - keep) * torch.finfo(h.dtype).min)[:, None, None, :].expand(batch, 1, length, length).contiguous()
  positions = torch.arange(length)[None].expand(batch, -1)
  rope = p.rotary_emb(h, positions)
  for layer in p.layers:
    out = layer(h, attention_mask=mask, position_ids=positions, use_cache=False, position_embeddings=rope)
    h = out[0] if isinstance(out, tuple) else out
  return p.out_proj(_masked_mean(p.norm(h), keep))


def _reference_s_y(y, t_ids, t_mask):
  h = y.model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
  return y.projector(_masked_mean(h, t_mask))


def _train_config(**predictor):
  return {"encoder": {"model_name": "facebook/vjepa2-vitl-fpc64-256", "output_dim": None},
          "y_encoder": {"model_name": "tiny/gemma3", "proj_dim": EMBED},
          "predictor": {"llama_name": "tiny/llama", "n_keep_layers": KEEP, "proj_dim": EMBED,
                        "disable_causal_mask": True, **predictor},
          "data": {"num_frames": 8, "max_query_len": 64, "max_caption_len": 64}}


def _save(path, state, config=None):
  torch.save({"epoch": 3, "model_state_dict": state, "loss": 1.25, "config": config or _train_config()}, path)


def _inputs():
  rng = np.random.default_rng(0)
  visual = rng.normal(size=(2, 6, VISION)).astype(np.float32)
  q_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
  q_ids = rng.integers(0, 96, size=q_mask.shape) * q_mask + 4 * (1 - q_mask)  # any pad id: it is masked
  t_mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], np.int32)
  t_ids = rng.integers(1, 80, size=t_mask.shape) * t_mask
  return visual, q_ids.astype(np.int32), q_mask, t_ids.astype(np.int32), t_mask


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  root = _build_reference()
  state = root.state_dict()
  assert sorted(state) == sorted(open_vljepa.expected_keys(KEEP, 6))  # exactly best.pt's layout
  folder = tmp_path_factory.mktemp("open_vljepa")
  _save(folder / "best.pt", state)
  out = folder / "converted"
  run_cli("vljepa_jax.convert", "--model", "open_vljepa", "--input", str(folder / "best.pt"), "--output", str(out))
  return root, state, folder, str(out)


def test_s_hat_and_s_y_match_open_vljepa(reference):
  root, _, _, out = reference
  visual, q_ids, q_mask, t_ids, t_mask = _inputs()
  with torch.no_grad():
    want_hat = _reference_s_hat(root.predictor, torch.tensor(visual), torch.tensor(q_ids).long(),
                                torch.tensor(q_mask)).numpy()
    want_y = _reference_s_y(root.y_encoder, torch.tensor(t_ids).long(), torch.tensor(t_mask)).numpy()
  assert np.abs(want_hat).mean() > 0.05 and np.abs(want_y).mean() > 0.05  # not vanishing: the tolerance means something
  model, params = convert.load(out)
  assert "x_encoder" not in params and json.load(open(os.path.join(out, "model.json")))["omitted"] == ["x_encoder"]
  cfg = model.config
  assert not cfg.predictor.causal and cfg.predictor.pool == "all" and cfg.predictor.backbone_config.num_layers == KEEP
  assert cfg.y_encoder.dense_dims == () and not cfg.y_encoder.normalize
  got_hat = np.asarray(model.apply({"params": params}, visual, q_ids, q_mask, method="encode_visual_query"))
  got_y = np.asarray(model.apply({"params": params}, t_ids, t_mask, method="encode_text"))
  np.testing.assert_allclose(got_hat, want_hat, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got_y, want_y, atol=1e-4, rtol=1e-4)


def test_bf16_checkpoint_converts(reference, tmp_path):
  """Training saves the Llama / Gemma tensors in bf16 and the new linears in fp32: both are read."""
  _, state, _, _ = reference
  mixed = {k: (v.to(torch.bfloat16) if ".model." in k or ".layers." in k else v) for k, v in state.items()}
  _save(tmp_path / "best.pt", mixed)
  convert.convert("open_vljepa", str(tmp_path / "best.pt"), str(tmp_path / "out"))
  _, params = convert.load(str(tmp_path / "out"))
  want = mixed["predictor.layers.1.mlp.down_proj.weight"].float().numpy().T
  np.testing.assert_array_equal(np.asarray(params["predictor"]["llama"]["layers_1"]["mlp"]["wo"]["kernel"]), want)


@pytest.mark.parametrize("case", ["wrong_family", "missing_key", "bad_shape"])
def test_bad_checkpoints_fail_cleanly(reference, tmp_path, case):
  _, state, _, _ = reference
  src = tmp_path / "best.pt"
  if case == "wrong_family":  # a plain Llama state dict
    torch.save({k[len("predictor."):]: v for k, v in state.items() if k.startswith("predictor.")}, src)
    needle = "is not an open-vljepa checkpoint"
  elif case == "missing_key":
    _save(src, {k: v for k, v in state.items() if k != "y_encoder.projector.bias"})
    needle = "y_encoder.projector.bias"
  else:
    _save(src, {**state, "predictor.layers.1.self_attn.k_proj.weight": torch.zeros(32, 128)})
    needle = "predictor.layers.1.self_attn.k_proj.weight"
  out = tmp_path / "out"
  proc = run_cli("vljepa_jax.convert", "--model", "open_vljepa", "--input", str(src), "--output", str(out),
                 check=False)
  assert proc.returncode == 1, proc.stderr
  assert needle in proc.stderr and proc.stderr.count("conversion failed") == 1, proc.stderr
  assert sorted(os.listdir(tmp_path)) == ["best.pt"]


def test_named_models_must_have_their_shapes(reference, tmp_path):
  """A config naming Llama-3.2-1B holds it to that preset: a small stand-in is refused, by name."""
  _, state, _, _ = reference
  config = _train_config(llama_name="meta-llama/Llama-3.2-1B")
  _save(tmp_path / "best.pt", state, config)
  with pytest.raises(convert.ConversionError, match="meta-llama/Llama-3.2-1B.*hidden_size"):
    convert.convert("open_vljepa", str(tmp_path / "best.pt"), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_x_encoder_option_completes_the_model(reference, tmp_path):
  _, _, folder, _ = reference
  vit_cfg = vit.ViTConfig(hidden_size=VISION, num_layers=1, num_heads=16, mlp_dim=64)
  encoder = vit.VisionTransformer(vit_cfg)
  video = np.random.default_rng(1).normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
  vit_params = params_lib.unbox(encoder.init(jax.random.key(0), video)["params"])
  with checkpoint.atomic_directory(str(tmp_path / "vitl")) as tmp:
    checkpoint.save(tmp, family="vjepa2", config=vit_cfg.to_dict(), params=vit_params, source="test")
  out = tmp_path / "full"
  convert.convert("open_vljepa", str(folder / "best.pt"), str(out),
                  convert.ConvertOptions(x_encoder=str(tmp_path / "vitl")))
  assert "omitted" not in json.load(open(out / "model.json"))
  model, params = convert.load(str(out))
  jax.tree.map(np.testing.assert_array_equal, params["x_encoder"], vit_params)
  _, q_ids, q_mask, _, _ = _inputs()
  tokens = encoder.apply({"params": vit_params}, video)
  from_video = model.apply({"params": params}, video, q_ids, q_mask, method="encode_visual_query")
  from_tokens = model.apply({"params": params}, tokens, q_ids, q_mask, method="encode_visual_query")
  np.testing.assert_allclose(np.asarray(from_video), np.asarray(from_tokens), atol=1e-5)
  with pytest.raises(convert.ConversionError, match="holds a 'open_vljepa' model"):
    convert.convert("open_vljepa", str(folder / "best.pt"), str(tmp_path / "bad"),
                    convert.ConvertOptions(x_encoder=str(out)))


def test_init_checkpoint_reads_a_converted_model(reference):
  """`config.init.checkpoint=DIR` (checkpointing.restore_params) takes a converted open-vljepa folder at step 0;
  the X-encoder it left out must be supplied by the caller (the trainer's config.init.x_encoder): without it
  the restore fails instead of leaving a random X-encoder."""
  from vljepa_jax.train import checkpointing  # pylint: disable=g-import-not-at-top
  _, _, _, out = reference
  model, params = convert.load(out)
  device = jax.sharding.make_single_device_sharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          params_lib.abstract_params(model, *open_vljepa.example_inputs(model.config)))
  assert "x_encoder" in abstract
  with pytest.raises(ValueError, match=r"has no \['x_encoder'\] parameters \(left out at conversion\): pass "
                                       r"config.init.x_encoder=<converted folder>"):
    checkpointing.restore_params(out, abstract)
  restored, step = checkpointing.restore_params(out, abstract, supplied=("x_encoder",))
  assert step == 0 and set(restored) == {"predictor", "y_encoder", "y_head"}
  jax.tree.map(np.testing.assert_array_equal, restored, params)


# --- configs/eval_open_vljepa.py end to end: the X-encoder supplied by config.init, open-vljepa's protocol ---------

QUERY_WORDS = ["Describe", "the", "video."]
CAPTION_WORDS = ["a", "red", "blue", "green", "circle", "square", "moves", "left", "right", "spins", "grows", "slowly"]
POOL, CAPTIONS_PER_VIDEO, VIDEO_FRAMES, SIZE = 3, 4, 17, 32


def _word_tokenizer(folder, model_type, specials, template, words):
  """A Hugging Face tokenizer.json (word level) and a config.json naming its family, in `folder`."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors  # pylint: disable=g-import-not-at-top
  vocab = {token: i for i, token in enumerate(specials + words)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.post_processor = processors.TemplateProcessing(
      single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template])
  os.makedirs(folder)
  tok.save(os.path.join(folder, "tokenizer.json"))
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": model_type}, f)
  return tok


def _padded(tok, text, length=64):
  ids = tok.encode(text).ids
  return np.array([ids + [0] * (length - len(ids))]), np.array([[1] * len(ids) + [0] * (length - len(ids))])


@pytest.fixture(scope="module")
def msrvtt(reference, tmp_path_factory):
  """The converted model without its X-encoder, a 1-layer 1024-wide ViT as `init.x_encoder`, word-level query and
  target tokenizers, and MSR-VTT in open-vljepa's layout: 4 test videos (the pool is the first 3), 1 train video."""
  import media_files  # pylint: disable=g-import-not-at-top
  _, _, _, converted = reference
  root = tmp_path_factory.mktemp("msrvtt")
  vit_cfg = vit.ViTConfig(hidden_size=VISION, num_layers=1, num_heads=16, mlp_dim=64)
  vit_params = params_lib.unbox(vit.VisionTransformer(vit_cfg).init(
      jax.random.key(3), np.zeros((1, 2, SIZE, SIZE, 3), np.float32))["params"])
  # Larger weights than the init's, so that the videos' tokens differ enough to rank them.
  vit_params = jax.tree.map(lambda x: x * 8.0 if x.ndim > 1 else x, vit_params)
  with checkpoint.atomic_directory(str(root / "vitl")) as tmp:
    checkpoint.save(tmp, family="vjepa2", config=vit_cfg.to_dict(), params=vit_params, source="test")
  query_tok = _word_tokenizer(str(root / "query_tok"), "llama", ["<|finetune_right_pad_id|>", "[UNK]",
                                                                 "<|begin_of_text|>"],
                              "<|begin_of_text|> $A", QUERY_WORDS + CAPTION_WORDS)
  target_tok = _word_tokenizer(str(root / "target_tok"), "gemma3_text", ["<pad>", "[UNK]", "<bos>", "<eos>"],
                               "<bos> $A <eos>", CAPTION_WORDS)
  rng = np.random.default_rng(5)
  annotations = {"video9": {"captions": ["a red circle"], "split": "train", "url": ""}}
  os.makedirs(root / "videos")
  for i in range(POOL + 1):
    video_id = f"video{7090 - 7 * i}"  # ids descending: the pool follows the file's order
    frames = rng.integers(0, 256, size=(VIDEO_FRAMES, SIZE, SIZE, 3)).astype(np.uint8)
    media_files.write_video(str(root / "videos" / f"{video_id}.mp4"), frames, fps=10)
    annotations[video_id] = {"split": "test", "url": "", "captions": [
        " ".join(rng.choice(CAPTION_WORDS, size=rng.integers(2, 6))) for _ in range(CAPTIONS_PER_VIDEO)]}
  with open(root / "annotations.json", "w") as f:
    json.dump(annotations, f)
  run_cli("vljepa_jax.data.benchmarks", "msrvtt", "--annotations", str(root / "annotations.json"), "--split", "test",
          "--media-root", str(root / "videos"), "--output", str(root / "msrvtt.jsonl"))
  flags = [f"--config.init.checkpoint={converted}", f"--config.init.x_encoder={root / 'vitl'}",
           f"--config.tokenizers.query={root / 'query_tok'}", f"--config.tokenizers.target={root / 'target_tok'}",
           f"--config.evals.msrvtt.data.sources.main.manifest={root / 'msrvtt.jsonl'}",
           f"--config.evals.msrvtt.data.sources.main.media_root={root / 'videos'}",
           f"--config.evals.msrvtt.data.sources.main.limit={POOL}",
           f"--config.data.crop_size={SIZE}", f"--config.data.short_side={SIZE}", "--config.dtype=float32"]
  return dict(root=root, annotations=annotations, vit_cfg=vit_cfg, vit_params=vit_params, query_tok=query_tok,
              target_tok=target_tok, flags=flags)


def _open_vljepa_t2v_recall(root_module, msrvtt):
  """open-vljepa's scripts/eval.py on the same inputs, from PyAV frames up: linspace frames, Ŝ_Y per video with
  "Describe the video.", S_Y per caption, cosine, rank = the number of videos scoring strictly higher."""
  import av  # pylint: disable=g-import-not-at-top
  pool = [v for v, info in msrvtt["annotations"].items() if info["split"] == "test"][:POOL]
  q_ids, q_mask = _padded(msrvtt["query_tok"], "Describe the video.")
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  videos, captions, owners = [], [], []
  for row, video_id in enumerate(pool):
    with av.open(str(msrvtt["root"] / "videos" / f"{video_id}.mp4")) as container:
      frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    clip = frames[np.linspace(0, len(frames) - 1, 8, dtype=int)]
    clip = ((clip / 255.0 - mean) / std).astype(np.float32)[None]
    tokens = np.asarray(vit.VisionTransformer(msrvtt["vit_cfg"]).apply({"params": msrvtt["vit_params"]}, clip))
    with torch.no_grad():
      s_hat = _reference_s_hat(root_module.predictor, torch.tensor(tokens), torch.tensor(q_ids), torch.tensor(q_mask))
    videos.append(torch.nn.functional.normalize(s_hat, dim=-1).numpy()[0])
    for caption in msrvtt["annotations"][video_id]["captions"]:
      t_ids, t_mask = _padded(msrvtt["target_tok"], caption)
      with torch.no_grad():
        s_y = _reference_s_y(root_module.y_encoder, torch.tensor(t_ids), torch.tensor(t_mask))
      captions.append(torch.nn.functional.normalize(s_y, dim=-1).numpy()[0])
      owners.append(row)
  sim = np.stack(captions) @ np.stack(videos).T
  own = sim[np.arange(len(owners)), owners]
  higher = (sim > own[:, None]).sum(axis=1)
  return float((higher < 1).mean()), sim


def test_eval_config_reproduces_open_vljepa_retrieval_with_the_x_encoder_from_init(reference, msrvtt, tmp_path):
  """configs/eval_open_vljepa.py on a converted model that left its X-encoder out: `init.x_encoder` supplies it,
  the architecture comes from the converted model, and text->video R@1 over the first 3 test videos and all their
  captions equals open-vljepa's evaluation computed from the same weights."""
  root_module, _, _, _ = reference
  want, sim = _open_vljepa_t2v_recall(root_module, msrvtt)
  margins = np.sort(sim, axis=1)
  assert np.all(margins[:, -1] - margins[:, -2] > 1e-4), "a near-tie would make the comparison fragile"
  run_cli("vljepa_jax.main", "--mode=eval", "--config=configs/eval_open_vljepa.py", f"--workdir={tmp_path}",
          *msrvtt["flags"])
  with open(tmp_path / "eval_results.json") as f:
    results = json.load(f)
  got = results["0"]["tasks"]["msrvtt"]
  assert (results["0"]["stage"], got["num_videos"], got["num_captions"]) == ("init", POOL, POOL * CAPTIONS_PER_VIDEO)
  assert got["t2v_R@1"] == pytest.approx(want, abs=1e-9), (got, want)
  assert 0 < want < 1  # neither all right nor all wrong: a wrong frame, prompt or tower would show


def test_a_converted_model_with_a_tower_named_twice_or_no_tokenizer_fails(reference, msrvtt, tmp_path):
  """No silent trap: the embedded dataset's tokenizer is not put in for a missing one, and a tower the model
  holds is not also loaded from config.init (one of the two would be overwritten)."""
  from vljepa_jax.train import model_setup  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import stages  # pylint: disable=g-import-not-at-top
  _, _, folder, converted = reference
  config = _eval_config(msrvtt, **{"tokenizers.query": "predictor"})
  with pytest.raises(ValueError, match="is a converted whole model, which carries no tokenizer: set "
                                       "config.tokenizers.query"):
    model_setup.build(stages.resolve(config)[0][1], str(tmp_path))
  whole = tmp_path / "whole"
  convert.convert("open_vljepa", str(folder / "best.pt"), str(whole),
                  convert.ConvertOptions(x_encoder=str(msrvtt["root"] / "vitl")))
  config = _eval_config(msrvtt, **{"init.checkpoint": str(whole)})
  with pytest.raises(ValueError, match=r"holds the x_encoder, so config.init.x_encoder=.* would be overwritten"):
    model_setup.build(stages.resolve(config)[0][1], str(tmp_path))
  assert converted != str(whole)


def _eval_config(msrvtt, **overrides):
  """configs/eval_open_vljepa.py with the fixture's flags (and `overrides`, dotted keys) applied in-process."""
  from vljepa_jax.train import config_base  # pylint: disable=g-import-not-at-top
  module = config_base.sibling_config(os.path.join(REPO, "configs", "x.py"), "eval_open_vljepa")
  config = module.get_config()
  settings = dict(flag[len("--config."):].split("=", 1) for flag in msrvtt["flags"])
  settings.update(overrides)
  with config.unlocked():
    for key, value in settings.items():
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      current = node[leaf]
      node[leaf] = type(current)(value) if current is not None and not isinstance(current, str) else value
  return config


def test_training_from_a_converted_model_fills_its_x_encoder_from_init(reference, msrvtt, tmp_path):
  """The trainer starts from the converted model (`init.checkpoint`) and takes the X-encoder it left out from
  `init.x_encoder`: after a step the X-encoder is exactly those weights (frozen), the rest has moved from the
  converted ones."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import trainer  # pylint: disable=g-import-not-at-top
  _, _, _, converted = reference
  config = _eval_config(msrvtt, **{"total_steps": 1, "batch_size": 8, "checkpoint_every": 1, "log_every": 1,
                                   "data.num_threads": 1, "data.prefetch_batches": 0})
  with config.unlocked():
    config.evals = {}
    config.data.sources = {"shapes": {"type": "shapes", "kind": "video", "size": 8, "seed": 0}}
  trainer.run(config, str(tmp_path))
  state = str(tmp_path / "train" / "checkpoints" / "1" / "state")
  with ocp.PyTreeCheckpointer() as checkpointer:  # as NumPy arrays: no shardings to give or guess
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            checkpointer.metadata(state).item_metadata.tree)
    params = checkpointer.restore(state, args=ocp.args.PyTreeRestore(restore_args=as_numpy))["params"]
  jax.tree.map(np.testing.assert_array_equal, params["x_encoder"], msrvtt["vit_params"])
  _, start = convert.load(converted)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), params["y_head"],
                                       start["y_head"]))
  assert max(moved) > 0  # trained: started from the converted head, not a fresh one
  np.testing.assert_allclose(params["y_head"]["kernel"], start["y_head"]["kernel"], atol=1e-2)


def test_init_checkpoint_takes_a_hub_repo_id_converted_once(reference, msrvtt, tmp_path, monkeypatch):
  """`config.init.checkpoint=OWNER/NAME` (offline, from a cache laid out as huggingface_hub lays it out) is
  fetched (`best.pt` only), converted into `<workdir>/hub/OWNER--NAME@COMMIT` once, and read from there."""
  import shutil  # pylint: disable=g-import-not-at-top
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import model_setup  # pylint: disable=g-import-not-at-top
  from vljepa_jax.train import stages  # pylint: disable=g-import-not-at-top
  _, _, folder, _ = reference
  commit = "89abcdef0123456789abcdef0123456789abcdef"
  snapshot = tmp_path / "cache" / "models--acme--open-vljepa" / "snapshots" / commit
  os.makedirs(snapshot)
  shutil.copy(folder / "best.pt", snapshot / "best.pt")
  os.makedirs(snapshot.parent.parent / "refs")
  (snapshot.parent.parent / "refs" / "main").write_text(commit)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
  config = _eval_config(msrvtt, **{"init.checkpoint": "acme/open-vljepa"})
  setup = model_setup.build(stages.resolve(config)[0][1], str(tmp_path / "work"))
  converted = tmp_path / "work" / "hub" / f"acme--open-vljepa@{commit}"
  assert model_setup.local_init_checkpoint("acme/open-vljepa", setup.cache_dir) == str(converted)
  meta = convert.checkpoint.read_metadata(str(converted))
  assert (meta["family"], meta["source"], meta["omitted"]) == ("open_vljepa", f"hf://acme/open-vljepa@{commit}",
                                                               ["x_encoder"])
  assert setup.model.config.predictor.pool == "all"  # the architecture is the converted model's
  stamp = os.stat(converted / "model.json").st_mtime_ns
  model_setup.build(stages.resolve(config)[0][1], str(tmp_path / "work"))
  assert os.stat(converted / "model.json").st_mtime_ns == stamp  # reused, not converted again
