"""Config traps: every command-line override takes effect, or the run fails before anything is built.

Through the real entry point (`python -m vljepa_jax.main`, which must fail in its flag parsing with
exit status 2, one `error:` line naming the flag that would work, no traceback and no workdir) and
through `stages.resolve` / `stages.check_overrides` directly. Expected values are literals of the
tiny configs (tests/tiny_train_config.py:two_stage: image stage {total_steps 4, num_frames 1},
video stage {} over a top level of 8 steps, 2 frames, learning rate 1e-3).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import pytest

import tiny_train_config
from vljepa_jax.train import model_setup
from vljepa_jax.train import overrides
from vljepa_jax.train import stages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=tests/tiny_train_config.py:two_stage"

# Parses the command line exactly as `python -m vljepa_jax.main` does, then prints what each stage resolves to.
RESOLVE_SCRIPT = textwrap.dedent("""
    import json, sys
    from absl import flags
    from vljepa_jax import main
    from vljepa_jax.train import stages
    main.parse_flags(sys.argv)
    print(json.dumps({name: [c.total_steps, c.optimizer.learning_rate, c.data.num_frames]
                      for name, c in stages.resolve(flags.FLAGS.config)}))
""")


def _with_image_stage_remat(tmp_path) -> str:
  """A config file whose image stage sets the run-level `remat` (what trap 2 looked like)."""
  path = tmp_path / "remat_in_stage.py"
  path.write_text(textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {os.path.join(REPO, "tests")!r})
      import tiny_train_config

      def get_config():
        config = tiny_train_config.get_config("two_stage")
        with config.unlocked():
          config.stages.image.remat = "full"
        return config
  """))
  return f"--config={path}"


# name -> (command line after `--workdir`, what the one error line must contain); "REMAT_CONFIG" stands for
# `_with_image_stage_remat`'s file. All run at once, in `cli_runs`.
CASES = {
    # Trap 1 as reported: the image stage's own total_steps (400) would win over the top level's.
    "top_level_shadowed": (["--config=configs/demo.py:image", "--config.total_steps=6"],
                           "--config.total_steps=6 would not reach stage 'image', which set(s) its own total_steps: "
                           "pass --config.stages.image.total_steps=6 instead"),
    # Trap 3: a run-level key the stage does not declare.
    "stage_run_level": ([TINY, "--config.stages.image.remat=full"],
                        "--config.stages.image.remat: remat is read once per run from the top level (one model, mesh "
                        "and tokenizers serve every stage), so a stage cannot change it; pass --config.remat=full "
                        "instead"),
    # Trap 2: a run-level key set by a stage in the config file itself.
    "config_file_run_level": (["REMAT_CONFIG"], "config.stages.image.remat: remat is read once per run from the top "
                              "level (one model, mesh and tokenizers serve every stage), so a stage cannot change it; "
                              "set config.remat instead"),
    # ml_collections' raw AttributeError for a misspelt key.
    "unknown_key": ([TINY, "--config.optimizer.learnig_rate=0.1"],
                    "--config.optimizer.learnig_rate: config.optimizer has no key 'learnig_rate' (did you mean "
                    "'learning_rate'?"),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
  """Every case's (workdir, returncode, stdout, stderr), run as concurrent subprocesses."""
  tmp_path = tmp_path_factory.mktemp("config_traps")
  remat_config = _with_image_stage_remat(tmp_path)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = {}
  for name, (args, _) in CASES.items():
    args = [remat_config if arg == "REMAT_CONFIG" else arg for arg in args]
    workdir = str(tmp_path / name)
    procs[name] = (workdir, subprocess.Popen([sys.executable, "-m", "vljepa_jax.main", f"--workdir={workdir}", *args],
                                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True))
  procs["resolve"] = (None, subprocess.Popen(
      [sys.executable, "-c", RESOLVE_SCRIPT, TINY, "--config.total_steps=6", "--config.stages.image.total_steps=2",
       "--config.stages.video.optimizer.learning_rate=0.5", "--config.stages.video.data.num_frames=3"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  runs = {}
  for name, (workdir, proc) in procs.items():
    out, err = proc.communicate(timeout=180)
    runs[name] = (workdir, proc.returncode, out, err)
  return runs


@pytest.mark.parametrize("case", list(CASES))
def test_cli_override_that_would_be_ignored_fails_before_building(cli_runs, case):
  workdir, returncode, out, err = cli_runs[case]
  assert returncode == 2, (out, err)
  assert "Traceback" not in out + err, err
  last = err.strip().splitlines()[-1]
  assert last == "error: " + CASES[case][1] or last.startswith("error: " + CASES[case][1]), err
  assert not os.path.exists(workdir), "nothing may be built for a refused override"


@pytest.mark.parametrize("args,error", [
    (["--config.stages.video.optimizer.learnig_rate=0.1"],
     r"^--config.stages.video.optimizer.learnig_rate: config.optimizer has no key 'learnig_rate' \(did you mean "
     r"'learning_rate'\?"),
    (["--config.stages.video.total_steps=many"], r"--config.stages.video.total_steps=many: invalid literal for int"),
    # `--config.stages.video.total_steps 6`: the "6" is left to absl as a positional argument.
    (["--config.stages.video.total_steps"], r"--config.stages.video.total_steps.*KEY=VALUE"),
    (["--config.stages.audio.total_steps=1"],
     r"^--config.stages.audio.total_steps: config.stages has no stage 'audio'"),
    (["--config.stages.video.init.y_encoder=minilm"], r"init.y_encoder is read once.*--config.init.y_encoder=minilm"),
])
def test_stage_overrides_that_cannot_take_effect_name_the_key(args, error):
  config = tiny_train_config.get_config("two_stage")
  with pytest.raises(ValueError, match=error):
    overrides.apply_stage_overrides(config, args)
  assert config.stages.video.to_dict() == {}, "a refused override must leave the config as it was"


def test_stage_override_of_init_checkpoint_takes_effect():
  config = ml_collections.ConfigDict(tiny_train_config.get_config("two_stage").to_dict())
  config.stage_order = ("video",)
  overrides.apply_stage_overrides(config, ["--config.stages.video.init.checkpoint=/runs/a/image"])
  assert stages.resolve(config)[0][1].init.checkpoint == "/runs/a/image"


def test_cli_legitimate_overrides_take_effect(cli_runs):
  _, returncode, out, err = cli_runs["resolve"]
  assert returncode == 0, err
  # [total_steps, learning_rate, num_frames]: the image stage's own steps from the command line, the
  # top-level 6 steps reaching the video stage, and keys the video stage's dict did not declare.
  assert json.loads(out.strip().splitlines()[-1]) == {"image": [2, 1e-3, 1], "video": [6, 0.5, 3]}


@pytest.mark.parametrize("key,value", [
    ("remat", "full"), ("dtype", "bfloat16"), ("param_dtype", "bfloat16"), ("mesh", {"fsdp": 2}),
    ("tokenizers", {"query": "y_encoder"}), ("model", {"freeze_x_encoder": True}), ("init", {"y_encoder": "minilm"}),
    ("init", {"x_encoder": "/ckpt"}),
])
@pytest.mark.parametrize("stage", ["image", "video"])
def test_resolve_rejects_run_level_keys_in_any_stage(stage, key, value):
  config = ml_collections.ConfigDict(tiny_train_config.get_config("two_stage").to_dict())
  config.stages[stage][key] = value
  with pytest.raises(ValueError, match=rf"config\.stages\.{stage}\.{key}.*set config\.{key}"):
    stages.resolve(config)


@pytest.mark.parametrize("tower", model_setup.TOWERS)
def test_resolve_rejects_every_pretrained_tower_in_a_stage(tower):
  # model_setup.build reads `config.init.<tower>` once per run for these towers.
  config = ml_collections.ConfigDict(tiny_train_config.get_config("two_stage").to_dict())
  config.stages.video.init = {tower: "/ckpt"}
  with pytest.raises(ValueError, match=rf"config\.stages\.video\.init\.{tower}: init\.{tower} is read once per run"):
    stages.resolve(config)


def test_resolve_takes_init_checkpoint_only_in_the_first_stage():
  config = ml_collections.ConfigDict(tiny_train_config.get_config("two_stage").to_dict())
  config.stages.image.init = {"checkpoint": "/runs/a/image"}
  assert stages.resolve(config)[0][1].init.checkpoint == "/runs/a/image"
  config.stages.video.init = {"checkpoint": "/runs/a/image"}
  with pytest.raises(ValueError, match=r"config\.stages\.video\.init\.checkpoint: only the first stage"):
    stages.resolve(config)


def test_resolve_takes_evals_only_in_the_last_stage():
  config = ml_collections.ConfigDict(tiny_train_config.get_config("two_stage").to_dict())
  config.stages.video.eval_batch_size = 4
  assert stages.resolve(config)[1][1].eval_batch_size == 4
  config.stages.image.eval_batch_size = 4
  with pytest.raises(ValueError, match=r"config\.stages\.image\.eval_batch_size: only the last stage"):
    stages.resolve(config)


@pytest.mark.parametrize("overrides,error", [
    ({"total_steps": 6}, r"--config.total_steps=6 would not reach stage 'image'.*"
                         r"--config.stages.image.total_steps=6 as well \(the top-level value reaches \['video'\]\)"),
    # A whole dict over a key a stage sets inside it.
    ({"data": {"num_frames": 3}}, r"stages.image.data="),
    ({"data.num_frames": 3}, r"--config.stages.image.data.num_frames=3"),
    # Every stage has it on the command line: the top-level value would reach none.
    ({"total_steps": 6, "stages.image.total_steps": 2, "stages.video.total_steps": 3}, r"reaches no stage"),
])
def test_check_overrides_refuses_shadowed_top_level_overrides(overrides, error):
  config = tiny_train_config.get_config("two_stage")
  with pytest.raises(ValueError, match=error):
    stages.check_overrides(config, overrides)


@pytest.mark.parametrize("overrides", [
    {"data.crop_size": 8},  # no stage sets it
    {"data.sources.shapes.size": 100},  # the image stage sets only the sibling `kind`
    {"total_steps": 6, "stages.image.total_steps": 2},  # the shadowed stage is set too
    {"data.num_frames": 3, "stages.image.data": {"num_frames": 1}},  # ... as a whole dict
    {"remat": "full", "stages.image.total_steps": 2},
])
def test_check_overrides_accepts_overrides_that_take_effect(overrides):
  stages.check_overrides(tiny_train_config.get_config("two_stage"), overrides)


def test_pretrain_all_stages_names_each_stage_that_sets_its_own_steps():
  spec = importlib.util.spec_from_file_location("config_traps_pretrain", os.path.join(REPO, "configs",
                                                                                        "vljepa_pretrain.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("")  # image -> video8 -> video32; the top level is video32
  with pytest.raises(ValueError, match=r"stages \['image', 'video8'\].*--config.stages.image.total_steps=5 "
                                       r"--config.stages.video8.total_steps=5 as well.*\['video32'\]"):
    stages.check_overrides(config, {"total_steps": 5})
