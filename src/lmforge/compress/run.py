"""Compress one model into a directory, and measure what it cost.

    OUT/model/         the compressed model: model.safetensors, model_config.json,
                       quantization.json (quantized methods) or config.json (pruned: a plain,
                       smaller or sparser model transformers loads), the tokenizer files
    OUT/compress.json  what was done: method, settings, calibration, per-module choices
    OUT/eval/original, OUT/eval/compressed   `lmforge eval` of both on the same sets
    OUT/report.json    size, perplexities, task metrics with the paired CI, decode speed
    OUT/report.html    the same as a page (report.py)

`compress_model` is what `lmforge compress` and the compress stage run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmforge.compress.config import CompressConfig
from lmforge.errors import UserError
from lmforge.io import atomic_path, atomic_write_json
from lmforge.progress import console


def compress_model(source: Path, out: Path, ccfg: CompressConfig, data_dir: Path | None,
                   tasks: list[str], tokenizer: Path | None = None) -> dict[str, Any]:
    """Compress `source` into OUT/model, evaluate both, gate on perplexity, write reports."""
    from lmforge.compress.report import write_report

    started = time.perf_counter()
    model, tokenizer_dir, source_file = _load(source, tokenizer)
    original_params = model.num_params()
    model, done = apply_method(model, ccfg, tokenizer_dir, data_dir)
    model_dir = out / "model"
    save_compressed(model, model_dir, tokenizer_dir, ccfg)
    atomic_write_json(out / "compress.json", {"source": str(source_file), **done})
    seconds = time.perf_counter() - started
    console.print(f"compress: {ccfg.method} in {seconds:.1f} s -> {model_dir}")
    quality = measure_quality(source, model_dir, out / "eval", ccfg, data_dir, tasks)
    report = {"method": ccfg.method, "settings": done, "seconds": round(seconds, 2),
              "size": sizes(source_file, model_dir, original_params), **quality}
    if ccfg.speed_tokens:
        from lmforge.compress.speed import decode_speed

        report["speed"] = decode_speed(source, model_dir, ccfg.speed_tokens)
    atomic_write_json(out / "report.json", report)
    write_report(out, report)
    gate(report, ccfg)
    return report


def _load(source: Path, tokenizer: Path | None) -> tuple[torch.nn.Module, Path, Path]:
    from lmforge.model.files import load_model
    from lmforge.model.quant import is_quantized
    from lmforge.sources import find_tokenizer

    model, loaded_from = load_model(source)
    if is_quantized(model):
        raise UserError(f"{source} is quantized already; compress the original model")
    from lmforge.model.lora import lora_modules, merge_lora

    if lora_modules(model):
        merge_lora(model)
    return model, tokenizer or find_tokenizer(loaded_from), loaded_from


def apply_method(model: torch.nn.Module, ccfg: CompressConfig, tokenizer_dir: Path,
                 data_dir: Path | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The compressed model (the same one, changed in place, except after structured
    pruning, which builds a smaller one) and what was done."""
    from lmforge.compress import prune
    from lmforge.compress.quantize import quantize_model

    stats, windows, calibration = None, None, None
    if ccfg.needs_calibration or ccfg.recovery_steps:
        windows, calibration = calibration_set(ccfg, tokenizer_dir, data_dir, model.cfg)
    if ccfg.needs_calibration:
        from lmforge.compress.calibrate import collect

        stats = collect(model, windows, hessian=ccfg.calibration == "gptq" and ccfg.quantizes)
    done: dict[str, Any] = {"method": ccfg.method, "calibration": calibration}
    if ccfg.quantizes:
        done |= quantize_model(model, ccfg.method, ccfg.group_size, stats, ccfg.embeddings,
                               ccfg.calibration)
        return model, done
    masks = None
    if ccfg.method == "structured":
        model, pruned = prune.prune_structured(model, stats, ccfg.head_ratio,
                                                   ccfg.channel_ratio)
        done["structured"] = pruned
    else:
        masks = prune.prune_unstructured(model, ccfg.method, ccfg.sparsity, stats)
    if ccfg.recovery_steps:
        from lmforge.compress.recover import recover

        losses = recover(model, windows, ccfg.recovery_steps, ccfg.recovery_lr,
                         ccfg.recovery_batch_size, ccfg.recovery_method, masks)
        done["recovery"] = {"steps": ccfg.recovery_steps, "method": ccfg.recovery_method,
                            "first_loss": losses[0], "last_loss": losses[-1]}
    done["sparsity"] = prune.sparsity_of(model)
    done["params"] = model.num_params()
    return model, done


def calibration_set(ccfg: CompressConfig, tokenizer_dir: Path, data_dir: Path | None,
                    cfg: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    from lmforge.compress.calibrate import calibration_windows, read_calibration_texts
    from lmforge.model.tokenizer import load_tokenizer

    spec = ccfg.calibration_data
    if spec in ("train", "val", "test"):
        if data_dir is None:
            raise UserError(f"calibration on the {spec!r} split needs a run; give "
                            "--calibration-data FILE (.txt or .jsonl) for a lone model")
        path = data_dir / spec
    else:
        path = Path(spec)
    if not path.exists():
        raise UserError(f"calibration data {path} not found; pass a .txt/.jsonl file or a "
                        "split of the run (train, val)")
    codec = load_tokenizer(tokenizer_dir)
    seq_len = min(ccfg.calibration_seq_len, cfg.max_seq_len)
    windows = calibration_windows(read_calibration_texts(path), codec.encode, seq_len,
                                  ccfg.calibration_samples)
    return windows, {"source": str(path), "windows": len(windows), "seq_len": seq_len}


def save_compressed(model: torch.nn.Module, model_dir: Path, tokenizer_dir: Path,
                    ccfg: CompressConfig) -> None:
    from lmforge.export.hf import TOKENIZER_FILES
    from lmforge.model.files import save_model_dir, save_quantized_dir

    if ccfg.quantizes:
        save_quantized_dir(model_dir, model)
    else:
        save_model_dir(model_dir, model.state_dict(), model.cfg)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            with atomic_path(model_dir / name) as tmp:
                shutil.copyfile(tokenizer_dir / name, tmp)


def sizes(source_file: Path, model_dir: Path, params: int) -> dict[str, Any]:
    """Bytes of the weights on disk, and of the original model in bf16 (the usual baseline)."""
    compressed = (model_dir / "model.safetensors").stat().st_size
    original = source_file.stat().st_size if source_file.suffix == ".safetensors" else None
    bf16 = params * 2
    return {"original_bytes": original, "compressed_bytes": compressed, "bf16_bytes": bf16,
            "ratio_to_original": compressed / original if original else None,
            "ratio_to_bf16": compressed / bf16}


def measure_quality(source: Path, model_dir: Path, eval_dir: Path, ccfg: CompressConfig,
                    data_dir: Path | None, tasks: list[str]) -> dict[str, Any]:
    """Both models through `lmforge eval` on the same sets, and the paired comparison."""
    from lmforge.eval.compare import compare_results
    from lmforge.eval.config import EvalConfig
    from lmforge.eval.results import read_results
    from lmforge.eval.stage import evaluate_model

    if not ccfg.perplexity and not tasks:
        return {"eval": None}
    ecfg = EvalConfig(tasks=tasks, perplexity=ccfg.perplexity)
    console.print("compress: evaluating the original model")
    original = evaluate_model(source, eval_dir / "original", ecfg, data_dir)
    console.print("compress: evaluating the compressed model")
    compressed = evaluate_model(model_dir, eval_dir / "compressed", ecfg, data_dir)
    comparison = compare_results(read_results(eval_dir / "original"),
                                 read_results(eval_dir / "compressed"), None, None,
                                 iters=2000)
    return {"eval": {"original": original["tasks"], "compressed": compressed["tasks"]},
            "comparison": comparison}


def gate(report: dict[str, Any], ccfg: CompressConfig) -> None:
    """Fail when the first perplexity set's perplexity rose by more than allowed."""
    if ccfg.max_ppl_increase is None or not report.get("eval"):
        return
    change = ppl_change(report)
    if change is None:
        return
    task, before, after, rise = change
    if rise > ccfg.max_ppl_increase:
        raise UserError(f"compress: {ccfg.method} raised {task} perplexity {before:.3f} -> "
                        f"{after:.3f} (+{rise:.1%}), above compress.max_ppl_increase="
                        f"{ccfg.max_ppl_increase:g}; try a gentler method (int8, int4 with "
                        "awq, lower sparsity, recovery_steps) or raise the limit")


def ppl_change(report: dict[str, Any]) -> tuple[str, float, float, float] | None:
    original, compressed = report["eval"]["original"], report["eval"]["compressed"]
    for task, metrics in original.items():
        if task.startswith("perplexity_") and "word_perplexity" in metrics:
            before, after = metrics["word_perplexity"], compressed[task]["word_perplexity"]
            return task, before, after, after / before - 1
    return None
