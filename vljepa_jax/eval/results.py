"""`<workdir>/eval_results.json` and the reports made from it: a markdown table, a CSV, PNG plots.

The file maps a *global* training step (stages counted one after another, so the video stage of
the demo starts at 400) to what was measured there:

    {"800": {"stage": "video", "stage_step": 400,
             "tasks": {"text_to_video": {"t2v_R@1": 0.07, "t2v_chance_R@1": 0.002, ...}, ...}}}

Training (`config.eval_every`), the final evaluation and `--mode=eval` sweeps all add to it task by
task, so an interrupted sweep re-run skips what is already there. Every write goes to a temporary
file that is renamed over the old one: a crash never leaves it half-written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from typing import Any, Mapping

RESULTS_FILE = "eval_results.json"
TABLE_FILE = "eval_results.md"
CSV_FILE = "eval_results.csv"
PLOTS_DIR = "eval_plots"

Results = dict[int, dict[str, Any]]


def write_atomic(path: str, text: str | bytes) -> None:
  """Writes `text` to `path` through a temporary file in the same folder and a rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  binary = isinstance(text, bytes)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load(workdir: str) -> Results:
  """The results recorded so far (empty when there are none), keyed by global step."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      raw = json.load(f)
    return {int(step): entry for step, entry in raw.items()}
  except (ValueError, AttributeError) as e:
    raise ValueError(f"{path} is not an evaluation results file ({{step: {{stage, stage_step, tasks}}}}): {e}; "
                     "move it aside to start a new one") from None


def save(workdir: str, results: Results) -> None:
  write_json_atomic(os.path.join(workdir, RESULTS_FILE), {str(step): results[step] for step in sorted(results)})


def record(workdir: str, step: int, *, stage: str, stage_step: int, task: str, metrics: Mapping[str, Any]) -> Results:
  """Adds one task's metrics at `step` to the file (replacing an earlier value) and returns all results."""
  results = load(workdir)
  entry = results.setdefault(int(step), {"stage": stage, "stage_step": int(stage_step), "tasks": {}})
  entry["tasks"][task] = {k: _plain(v) for k, v in metrics.items()}
  save(workdir, results)
  return results


def done_tasks(results: Results, step: int) -> set[str]:
  return set(results.get(int(step), {}).get("tasks", {}))


def _plain(value: Any) -> Any:
  """NumPy scalars -> Python numbers, so the file stays plain JSON."""
  return value.item() if hasattr(value, "item") else value


def is_reported(metric: str) -> bool:
  """Metrics shown in tables and plots: not the chance levels or bookkeeping counts."""
  return "chance" not in metric and not metric.startswith("num_")


def chance_key(metric: str) -> str:
  """The key of a metric's chance level: `top1` -> `chance_top1`, `t2v_R@1` -> `t2v_chance_R@1`, `x` -> `chance_x`."""
  if "_R@" in metric:
    return metric.replace("_R@", "_chance_R@")
  return "chance_" + metric


def format_table(tasks: Mapping[str, Mapping[str, Any]]) -> str:
  """One evaluation as aligned text: task, metric, value and chance."""
  lines = [f"{'task':20s} {'metric':34s} {'value':>8s}  {'chance':>8s}"]
  for task, values in tasks.items():
    for metric, value in values.items():
      if not is_reported(metric) or not isinstance(value, (int, float)):
        continue
      chance = values.get(chance_key(metric))
      chance_text = f"{chance:8.3f}" if isinstance(chance, (int, float)) else ""
      lines.append(f"{task:20s} {metric:34s} {value:8.3f}  {chance_text:>8s}")
  return "\n".join(lines)


def _columns(results: Results) -> list[tuple[str, str]]:
  columns = []
  for step in sorted(results):
    for task, values in results[step]["tasks"].items():
      for metric, value in values.items():
        if is_reported(metric) and isinstance(value, (int, float)) and (task, metric) not in columns:
          columns.append((task, metric))
  return columns


def _cell(results: Results, step: int, task: str, metric: str) -> float | None:
  value = results[step]["tasks"].get(task, {}).get(metric)
  return float(value) if isinstance(value, (int, float)) else None


def markdown(results: Results) -> str:
  """Steps as rows, `task/metric` as columns; the chance row first where chance levels are known."""
  columns = _columns(results)
  header = ["step", "stage"] + [f"{task}/{metric}" for task, metric in columns]
  rows = []
  chance = []
  for task, metric in columns:
    levels = [_cell(results, s, task, chance_key(metric)) for s in results]
    levels = [c for c in levels if c is not None]
    chance.append(f"{levels[-1]:.3f}" if levels else "")
  if any(chance):
    rows.append(["chance", ""] + chance)
  for step in sorted(results):
    values = [_cell(results, step, task, metric) for task, metric in columns]
    rows.append([str(step), f"{results[step]['stage']}:{results[step]['stage_step']}"]
                + ["" if v is None else f"{v:.4f}" for v in values])
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(out) + "\n"


def csv_text(results: Results) -> str:
  columns = _columns(results)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["step", "stage", "stage_step"] + [f"{task}/{metric}" for task, metric in columns])
  for step in sorted(results):
    values = [_cell(results, step, task, metric) for task, metric in columns]
    writer.writerow([step, results[step]["stage"], results[step]["stage_step"]]
                    + ["" if v is None else repr(v) for v in values])
  return buffer.getvalue()


def plot(results: Results, task: str, path: str) -> None:
  """Every reported metric of `task` against the global step, chance levels dashed; a PNG at `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  metrics = [m for t, m in _columns(results) if t == task]
  fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
  for i, metric in enumerate(metrics):
    steps = [s for s in sorted(results) if _cell(results, s, task, metric) is not None]
    values = [_cell(results, s, task, metric) for s in steps]
    color = f"C{i % 10}"
    ax.plot(steps, values, marker="o", color=color, label=metric)
    levels = [_cell(results, s, task, chance_key(metric)) for s in steps]
    if levels and all(c is not None and math.isfinite(c) for c in levels):
      ax.plot(steps, levels, linestyle="--", color=color, alpha=0.6, label=f"{metric} (chance)")
  ax.set_xlabel("training step (all stages)")
  ax.set_title(task)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  write_figure(fig, path)


def write_figure(fig: Any, path: str) -> None:
  """A matplotlib figure as a PNG at `path` (laid out, written atomically), then closed."""
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  plt.close(fig)
  write_atomic(path, buffer.getvalue())


def write_reports(workdir: str, results: Results | None = None, *, plots: bool = True) -> list[str]:
  """`eval_results.md`, `eval_results.csv` and `eval_plots/<task>.png` in `workdir`; returns their paths."""
  results = load(workdir) if results is None else results
  if not results:
    return []
  paths = [os.path.join(workdir, TABLE_FILE), os.path.join(workdir, CSV_FILE)]
  write_atomic(paths[0], markdown(results))
  write_atomic(paths[1], csv_text(results))
  if plots:
    tasks = sorted({task for entry in results.values() for task in entry["tasks"]})
    for task in tasks:
      path = os.path.join(workdir, PLOTS_DIR, f"{task}.png")
      plot(results, task, path)
      paths.append(path)
  return paths
