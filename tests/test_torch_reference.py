"""The PyTorch twin of the train step (benchmarks/torch_reference.py) and the speed benchmarks' plumbing.

The twin is built from stock Hugging Face towers, so it is an independent implementation of the
contrastive step: on the same parameters and batch its loss, gradients and optimizer updates must
match ours. That is what makes the side-by-side timings in `benchmarks/train_step.py` a comparison
of the same work, and it also checks `Stage.phase_fns` (what the benchmark times as the forward and
forward + backward phases) against a reference. The benchmark scripts themselves run end to end at
toy sizes (flags, table, ratio line, the accelerator suite's report), never timing anything here.
"""
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position
import harness  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step as train_step_benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position

from vljepa_jax.data import global_batch  # pylint: disable=g-import-not-at-top,wrong-import-position
from vljepa_jax.train import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = os.path.join(REPO, "tests", "tiny_train_config.py")


@pytest.fixture(scope="module")
def stage_and_twin(tmp_path_factory):
  config = harness.load_config(TINY)
  config.optimizer.grad_clip_norm = 0.5  # clipping must act: the step's gradient norms are ~1
  stage, stage_config = train_step_benchmark._stage(config, str(tmp_path_factory.mktemp("stage")))  # pylint: disable=protected-access
  host = next(stage.make_iterator())
  host = {k: host[k] for k in train_step.MODEL_INPUTS}
  twin = torch_reference.build(stage_config, arch=stage.setup.model.config)
  return stage, stage_config, host, twin


def test_parameter_counts_are_equal_and_frozen_towers_match(stage_and_twin):
  stage, stage_config, _, twin = stage_and_twin
  total, trainable = torch_reference.jax_param_counts(stage_config, stage.setup.model.config)
  assert twin.param_counts() == (total, trainable)
  # The tiny config trains the Y-encoder at 0.05x: everything is trainable, in two LR groups.
  assert trainable == total
  assert sorted({g["multiplier"] for g in twin.optimizer.param_groups}) == [0.05, 1.0]


def test_forward_and_gradients_match_the_hf_twin(stage_and_twin):
  stage, _, host, twin = stage_and_twin
  state = stage.init_state(None)
  twin.load_jax_params(state.params)
  batch = global_batch.to_global_batch(host, stage.mesh)
  forward, forward_backward = stage.phase_fns()
  jax_loss = float(forward(state.params, batch))
  torch_batch = twin.batch_from_numpy(host)
  assert abs(jax_loss - twin.forward_only(torch_batch)) < 1e-4
  loss, grads = forward_backward(state.params, batch)
  assert abs(float(loss) - jax_loss) < 1e-6
  twin.forward_backward(torch_batch)
  torch_norm = float(np.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in twin.trainable)))
  np.testing.assert_allclose(float(optax.tree.norm(grads)), torch_norm, rtol=1e-4)


def test_train_steps_track_the_hf_twin(stage_and_twin):
  """Three steps of our jitted step and of the twin's AdamW (LR groups, decay mask, clipping) stay together."""
  stage, _, host, twin = stage_and_twin
  state = stage.init_state(None)
  twin.load_jax_params(state.params)
  twin.num_updates = 0
  batch = global_batch.to_global_batch(host, stage.mesh)
  torch_batch = twin.batch_from_numpy(host)
  jax_losses, torch_losses = [], []
  for _ in range(3):
    state, metrics = stage.step_fn(state, batch)
    assert bool(metrics["finite"])
    jax_losses.append(float(metrics["loss"]))
    torch_losses.append(twin.step(torch_batch))
  np.testing.assert_allclose(jax_losses, torch_losses, rtol=1e-4)
  assert jax_losses[2] < jax_losses[0]  # the updates did something
  # The parameters after three updates, through the same name mapping the twin is built on.
  ours = jax.device_get(state.params)
  theirs = twin.to_jax_params()
  for tower in ("predictor", "y_head"):
    for a, b in zip(jax.tree.leaves(ours[tower]), jax.tree.leaves(theirs[tower])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-5)


def _run(args, env=None):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def test_train_step_benchmark_compares_against_torch():
  """In one process; `--phases=false` leaves the phases untimed (the child-process test below times them)."""
  proc = _run([sys.executable, "benchmarks/train_step.py", f"--configs={TINY}", "--compare_torch", "--torch_compile=false",
               "--phases=false", "--rounds=1", "--steps=1", "--matmul_size=64", "--batch_size=4", "--dtype=float32"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "large matmul (float32, 64^3): jax" in out and "torch" in out
  # JAX_PLATFORMS=cpu: the default --host_memory=auto keeps freed host memory, as main.py does.
  assert "host memory retained" in out.splitlines()[0], out.splitlines()[0]
  rows = [line for line in out.splitlines() if line.startswith(f"| {TINY} |")]
  # The throughput table (with the batch override) and the phase table (jax and torch eager), whose
  # forward and forward + backward columns are empty: only the step was timed.
  assert rows[0].split(" | ")[1:3] == ["float32", "4"]
  phase_rows = [r.split(" | ") for r in rows[1:]]
  assert [r[1] for r in phase_rows] == ["jax", "torch eager"], rows
  assert all(r[2:4] == ["-", "-"] and float(r[4]) > 0 for r in phase_rows), rows
  ratio = [line for line in out.splitlines() if line.startswith(f"ratio {TINY}: ")]
  assert len(ratio) == 1 and ratio[0].endswith("samples/s [eager])"), out


def test_train_step_benchmark_isolates_runtimes_in_child_processes():
  """--isolate_runtimes: each runtime is timed in its own child process; the parent prints the same tables."""
  proc = _run([sys.executable, "benchmarks/train_step.py", f"--configs={TINY}", "--compare_torch", "--torch_compile=false",
               "--isolate_runtimes", "--rounds=1", "--steps=1", "--matmul_size=0", "--batch_size=4", "--dtype=float32"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout.splitlines()
  # The twin is built only in the torch child (one per round); the JAX child never builds it.
  assert sum(line.startswith("  [torch eager] parameters (total, trainable): jax (") for line in out) == 1, out
  assert not any(line.startswith("  [jax]") for line in out), out
  rows = [line.split(" | ") for line in out if line.startswith(f"| {TINY} |")]
  assert rows[0][1:3] == ["float32", "4"] and float(rows[0][3]) > 0, rows  # the JAX child's batch and compile time
  assert [r[1] for r in rows[1:]] == ["jax", "torch eager"], rows
  assert all(cell.strip() != "-" for r in rows[1:] for cell in r[2:5]), rows  # every phase timed on both sides
  ratio = [line for line in out if line.startswith(f"ratio {TINY}: ")]
  assert len(ratio) == 1 and ratio[0].endswith("samples/s [eager])"), out


def test_accelerator_suite_writes_one_report(tmp_path):
  """The suite's plumbing on CPU at toy sizes: three parts, one markdown report, exit 0."""
  report = tmp_path / "report.md"
  proc = _run(["bash", "benchmarks/accelerator_suite.sh", str(report)], env={
      "PYTHON": sys.executable,  # this interpreter, whatever `python` on PATH is
      "ATTENTION_FLAGS": "--impls=xla --head_dims=16 --lengths=32 --tokens=64 --width=32 --repeats=1",
      "TRAIN_FLAGS": f"--configs={TINY} --steps=1 --matmul_size=0 --batch_size=4",
      "DECODING_FLAGS": "--decoders=demo --beams=1 --batch=2 --new_tokens=2 --repeats=1"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = report.read_text()
  for title in ("## Attention kernels", "## Train step", "## Y-decoder generation"):
    assert title in text
  assert text.count("exit 0)") == 3 and "FAILED" not in text


def test_train_step_benchmark_runs_each_config_on_its_own_cpu_devices(tmp_path):
  """Configs asking for different `cpu_devices` are timed in one child process per device count."""
  split = tmp_path / "tiny_split_config.py"
  split.write_text(f"import sys\nsys.path.insert(0, {os.path.dirname(TINY)!r})\nimport tiny_train_config\n\n\n"
                   "def get_config(arg=''):\n  c = tiny_train_config.get_config(arg)\n  c.cpu_devices = 2\n  return c\n")
  proc = _run([sys.executable, "benchmarks/train_step.py", f"--configs={TINY},{split}", "--steps=1", "--matmul_size=0",
               "--batch_size=4"], env={"XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert f"--- 1 CPU device(s): {TINY} (a child process)" in out, out
  assert f"--- 2 CPU device(s): {split} (a child process)" in out, out
  machines = [line for line in out.splitlines() if line.startswith("machine:")]
  assert [", cpu x 1," in machines[0], ", cpu x 2," in machines[1]] == [True, True], machines
  rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| " + TINY, "| " + str(split)))]
  assert [row[2] for row in rows] == ["4", "4"], out  # the children got the command line's flags


def test_cpu_devices_benchmark_times_one_device_against_all(tmp_path):
  proc = _run([sys.executable, "benchmarks/cpu_devices.py", f"--configs={TINY}", "--devices=2", "--steps=1",
               "--rounds=1", "--batch_size=4"], env={"XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [line for line in proc.stdout.splitlines() if line.startswith(TINY)]
  assert len(line) == 1 and "1 device " in line[0] and "2 devices " in line[0] and "speed-up" in line[0], proc.stdout
  assert "(float32, batch 4)" in line[0], line  # the children got the command line's flags


def test_optimizer_update_benchmark_runs_every_variant():
  proc = _run([sys.executable, "benchmarks/optimizer_update.py", f"--config={TINY}", "--calls=1", "--rounds=1"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  rows = [line.split(" | ")[0].strip("| ") for line in out.splitlines() if line.startswith("| ") and " | " in line]
  assert rows[1:] == ["library", "optax", "no norms", "torch fused AdamW"], out
  # The library's update makes no parameter-sized copy (the step's own test checks why); optax's may.
  assert "library: 0 parameter-sized copies" in out, out


def test_init_compile_benchmark_compares_the_library_options_with_the_default():
  proc = _run([sys.executable, "benchmarks/init_compile.py", f"--configs={TINY}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith(f"| {TINY} |")]
  assert len(rows) == 1 and len(rows[0]) == 7, proc.stdout
  assert all(float(cell) > 0 for cell in rows[0][2:4]), rows  # both compile times
  verdict = rows[0][6].rstrip(" |")
  # The same parameters either way: bit-equal here, at most rounding on another CPU.
  assert verdict.startswith("bit-equal") or float(verdict.split()[-1]) < 1e-6, verdict


def test_xla_cpu_repro_single_op_parts_print_all_forms():
  """The four parts that time single ops, in one process (one jax/torch start-up instead of four), at a
  sixteenth of their token counts (`--tokens_divisor`: the script's plumbing, not its figures, is under test)."""
  proc = _run([sys.executable, "benchmarks/xla_cpu_repro.py", "--parts=bmm,gelu,wgrad,transpose", "--rounds=1",
               "--tokens_divisor=16"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  # bmm: batch (divided by 16), m×k×n, then JAX, JAX fused with a row max (checked against NumPy's product
  # in the script) and torch, each a positive GFLOP/s
  bmm = [line for line in out.splitlines() if line[2:3].isdigit() and ", " in line.split(" | ")[0]]
  assert [row.split(" | ")[0] for row in bmm] == ["| 12, 256×64×256", "| 12, 256×256×64", "| 16, 44×32×44",
                                                  "| 16, 44×44×32"], out
  assert all(float(cell.strip(" |")) > 0 for row in bmm for cell in row.split(" | ")[1:]), bmm
  # gelu: (tokens, hidden) rows with shape, erfc, erf, torch; 768, 2048 and 8192 tokens divided by 16
  gelu = [line for line in out.splitlines() if line.startswith("| (") and len(line.split(" | ")) == 4]
  assert [row.split(" | ")[0] for row in gelu] == ["| (48, 1536)", "| (128, 256)", "| (512, 1536)"], out
  # wgrad: tokens×in×out rows with shape, Eigen, library, torch
  wgrad = [line for line in out.splitlines() if line[2:3].isdigit() and line not in bmm]
  assert [row.split(" | ")[0] for row in wgrad] == ["| 128×512×128", "| 176×256×128", "| 512×1536×384",
                                                   "| 544×1536×512"], out
  assert all(len(row.split(" | ")) == 4 for row in wgrad), wgrad
  # transpose: shape, three JAX forms, two torch forms, each a positive time in µs
  transpose = [line for line in out.splitlines() if line.startswith("| (") and len(line.split(" | ")) == 6]
  assert [row.split(" | ")[0] for row in transpose] == ["| (176, 128)", "| (128, 128)", "| (512, 384)"], out
  assert all(float(cell.strip(" |")) > 0 for row in transpose for cell in row.split(" | ")[1:]), transpose


def test_xla_cpu_repro_refuses_a_tokens_divisor_that_does_not_divide_its_shapes():
  proc = _run([sys.executable, "benchmarks/xla_cpu_repro.py", "--parts=gelu", "--tokens_divisor=3"])
  assert proc.returncode != 0
  assert "--tokens_divisor=3 does not divide the token counts [2048, 8192]" in proc.stderr, proc.stderr[-3000:]
  assert "exact GELU" not in proc.stdout  # refused before any part ran


def test_machine_line_names_the_cpu_model_with_its_family_and_model_numbers(tmp_path):
  """The "AMD EPYC" a KVM guest shows is a Zen 2, 3 or 4 part: figures name the family and model too."""
  cpuinfo = tmp_path / "cpuinfo"
  block = ("processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
           "model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz\nstepping\t: 8\n\n")
  cpuinfo.write_text(block.format(n=0) + block.format(n=1).replace("143", "999"))
  assert harness.cpu_model(str(cpuinfo)) == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (family 6, model 143)"
  cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\n")  # no family or model: the name alone
  assert harness.cpu_model(str(cpuinfo)) == "AMD EPYC"
  assert harness.cpu_model(str(tmp_path / "absent")) == (platform.processor() or platform.machine())
  assert harness.machine_line().startswith(f"machine: {harness.cpu_model()}, {os.cpu_count()} cores, ")
  assert harness.machine_line(devices=False) == (f"machine: {harness.cpu_model()}, {os.cpu_count()} cores, "
                                                 f"python {platform.python_version()}")


def test_timed_rounds_rotate_the_phase_order(monkeypatch):
  """Every round times each variant's phases in the same order, starting one phase later than the last round."""
  monkeypatch.setattr(train_step_benchmark, "_PAUSE_S", 0.0)
  calls = []
  phases = ("step", "forward", "forward+backward")
  variants = {name: {phase: (lambda name=name, phase=phase: calls.append((name, phase))) for phase in phases}
              for name in ("jax", "torch eager")}
  timed = train_step_benchmark._timed_rounds(variants, phases, 1, 4)  # pylint: disable=protected-access
  rounds = [calls[i:i + 6] for i in range(0, len(calls), 6)]
  firsts = [[phase for name, phase in r if name == "jax"] for r in rounds]
  assert firsts == [list(phases), ["forward", "forward+backward", "step"], ["forward+backward", "step", "forward"],
                    list(phases)]
  assert all([p for n, p in r if n == "jax"] == [p for n, p in r if n == "torch eager"] for r in rounds)
  assert sorted(timed) == ["jax", "jax/forward", "jax/forward+backward", "torch eager", "torch eager/forward",
                           "torch eager/forward+backward"]
  assert all(len(v) == 4 for v in timed.values())


def test_rotating_rounds_start_each_round_at_the_next_variant(monkeypatch):
  monkeypatch.setattr(train_step_benchmark, "_PAUSE_S", 0.0)
  calls = []
  steps = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
  timed = train_step_benchmark.rotating_rounds(steps, 4, 2)
  assert calls == ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["b"] * 2 + ["c"] * 2 + ["a"] * 2 + ["c"] * 2 + ["a"] * 2 \
      + ["b"] * 2 + ["a"] * 2 + ["b"] * 2 + ["c"] * 2
  assert sorted(timed) == ["a", "b", "c"] and all(len(t) == 4 and min(t) >= 0 for t in timed.values())


def test_step_compiler_options_parses_variants_and_rejects_bad_ones():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import step_compiler_options  # pylint: disable=g-import-not-at-top
  variants = step_compiler_options.parse_variants(
      ["eigen:xla_cpu_experimental_ynn_fusion_type=", "two:xla_cpu_enable_fast_math=true",
       "two:xla_cpu_parallel_codegen_split_count=4"])
  assert variants == {"default": {}, "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
                      "two": {"xla_cpu_enable_fast_math": True, "xla_cpu_parallel_codegen_split_count": 4}}
  for bad in (["no_colon"], ["name:no_equals"], ["default:xla_cpu_enable_fast_math=true"], []):
    with pytest.raises(ValueError):
      step_compiler_options.parse_variants(bad)
  with pytest.raises(ValueError, match="variant 'typo'.*xla_cpu_no_such_option"):
    step_compiler_options.check_options({"default": {}, "typo": {"xla_cpu_no_such_option": 1}})


def test_step_compiler_options_report_rows():
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  import step_compiler_options  # pylint: disable=g-import-not-at-top
  variants = {"default": {}, "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""}}
  timed = {"default": [0.30, 0.20, 0.25], "eigen": [0.28, 0.30, 0.50]}  # medians 0.25 and 0.30
  rows = step_compiler_options.report_rows(variants, timed, {"default": 9.04, "eigen": 12.0},
                                           {"default": 1.5, "eigen": 1.5000001}, {"default": "aa", "eigen": "bb"})
  assert rows == [("default", "-", "9.0", "250.0", "1.000", "-", "1.500000", "aa"),
                  ("eigen", "xla_cpu_experimental_ynn_fusion_type=''", "12.0", "300.0", "1.200", "1/3", "1.500000",
                   "bb")]
  assert len(step_compiler_options.HEADER) == len(rows[0])


def test_a_step_compiled_with_options_runs_that_program(stage_and_twin):
  """`warm_step`'s `compiler_options` (what step_compiler_options.py times): the step runs the program
  compiled with them, which differs from the default's and computes the same loss."""
  stage, stage_config, host, _ = stage_and_twin
  batch = global_batch.to_global_batch(host, stage.mesh)
  default, eigen = {}, {}
  default_step = train_step_benchmark._jax_variant(  # pylint: disable=protected-access
      stage, stage_config, batch, default, compiler_options={})["step"]
  eigen_step = train_step_benchmark._jax_variant(  # pylint: disable=protected-access
      stage, stage_config, batch, eigen, compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})["step"]
  assert default["program"] != eigen["program"]
  # Both have taken their three warm-up steps from the same initial state.
  np.testing.assert_allclose(float(eigen_step()["loss"]), float(default_step()["loss"]), rtol=1e-4)
