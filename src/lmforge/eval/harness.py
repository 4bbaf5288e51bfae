"""`lmforge eval --harness TASKS`: lm-evaluation-harness's hf backend on the model's HF
export, its results folded into results.json under "harness".

A task is an lm-eval task name or a local task YAML. Local YAMLs are copied with their
data_files made absolute (lm-eval resolves them against the working directory), and the
run is offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE): nothing is downloaded for a local task.
A model that is not an HF directory is exported first, into OUT/hf.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import UserError
from lmforge.eval.config import EvalConfig
from lmforge.progress import console
from lmforge.sources import local_path

HF_DIR = "hf"
TASK_DIR = "harness_tasks"
OURS_ONLY = {"macro_f1", "rouge1", "rouge2", "rougeL"}  # metrics lm-eval does not have


def hf_model_dir(model: str | Path, out: Path) -> Path:
    """The model as a directory transformers loads: itself if it is one, else an export."""
    path = local_path(model)
    if (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        return path
    from lmforge.export.stage import export_model

    export_model(path, out / HF_DIR, merge_lora=True)
    return out / HF_DIR


def local_task_copy(spec: str, task_dir: Path) -> str:
    """A local YAML copied into task_dir with absolute data_files; returns its task name.
    Anything else is taken to be a task lm-eval knows by name."""
    from lmforge.eval.stage import BUILTIN, task_file

    if not spec.startswith(BUILTIN) and Path(spec).suffix not in (".yaml", ".yml"):
        return spec

    path = task_file(spec)
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        files = {"train": files}
    absolute = {split: [str((path.parent / f).resolve()) for f in ([names] if isinstance(
        names, str) else names)] for split, names in (files or {}).items()}
    config.setdefault("dataset_kwargs", {})["data_files"] = absolute
    if config.get("metric_list"):
        kept = [m for m in config["metric_list"] if m.get("metric") not in OURS_ONLY]
        dropped = [m["metric"] for m in config["metric_list"] if m not in kept]
        if dropped:
            console.print(f"harness: lm-eval has no {', '.join(dropped)}; scored by lmforge only")
        config["metric_list"] = kept
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / path.name).write_text(yaml.safe_dump(config), encoding="utf-8")
    return str(config["task"])


def run_harness(model: str | Path, ecfg: EvalConfig, out: Path) -> dict[str, Any]:
    """{task: {metric: {value, stderr}}} from lm_eval.simple_evaluate."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("--harness needs lm-evaluation-harness: pip install lm-eval") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    hf_dir = hf_model_dir(model, out)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # lm-eval's default is cuda
    names = [local_task_copy(t, out / TASK_DIR) for t in ecfg.harness]
    manager = TaskManager(include_path=str(out / TASK_DIR)) if (out / TASK_DIR).is_dir() \
        else TaskManager()
    try:
        results = lm_eval.simple_evaluate(
            model="hf", model_args={"pretrained": str(hf_dir), "dtype": "float32",
                                    "device": device},
            tasks=names, num_fewshot=ecfg.num_fewshot, batch_size=ecfg.batch_size,
            limit=ecfg.limit, task_manager=manager, log_samples=False,
            apply_chat_template=ecfg.apply_chat_template,
            fewshot_random_seed=ecfg.fewshot_seed, bootstrap_iters=ecfg.bootstrap_iters)
    except Exception as e:  # lm-eval raises bare KeyErrors, ValueErrors... on a bad task
        first = (str(e).strip().splitlines() or [""])[0]
        raise UserError(f"lm-eval failed on {', '.join(names)} ({type(e).__name__}: {first}); "
                        "check the task files against lm-eval's task format") from None
    if results is None:
        raise UserError("lm-eval returned no results (it runs on rank 0 only)")
    return {"model_dir": str(hf_dir), "lm_eval_version": lm_eval.__version__,
            "tasks": {task: _metrics(values) for task, values in results["results"].items()}}


def _metrics(values: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """lm-eval's "acc,none" / "acc_stderr,none" keys as {acc: {value, stderr}}."""
    found: dict[str, dict[str, float | None]] = {}
    for key, value in values.items():
        name, _, _filter = key.partition(",")
        if not _filter or name.endswith("_stderr") or not isinstance(value, int | float):
            continue
        stderr = values.get(f"{name}_stderr,{_filter}")
        found[name] = {"value": float(value),
                       "stderr": float(stderr) if isinstance(stderr, int | float) else None}
    return found
