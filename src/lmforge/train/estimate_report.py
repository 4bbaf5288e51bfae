"""The `lmforge estimate` table (rich)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmforge.train.estimate import GIB, Estimate, duration, human


def print_estimate(est: Estimate, console: Console | None = None) -> None:
    console = console or Console(highlight=False)
    cfg = est.cfg
    head = (f"model: {est.params / 1e9:.3g}B parameters"
            + (f" ({est.active_params / 1e9:.3g}B active)" if est.active_params != est.params
               else "")
            + f", {cfg.n_layers} layers, dim {cfg.dim}, vocab {cfg.vocab:,}; "
            f"{est.gpus} x {est.gpu.name} ({est.gpu.memory_gib:g} GiB, "
            f"{est.gpu.bf16_tflops:g} bf16 TFLOPS); seq {est.seq_len}, micro-batch "
            f"{est.micro_batch}")
    console.print(head)
    table = Table(title="memory per GPU (GiB), bf16 mixed precision + Adam; ZeRO 0 = DDP, "
                        "3 = FSDP; ckpt = activation checkpointing")
    for col in ("ZeRO", "weights", "grads", "optim", "activ", "activ ckpt", "total",
                "total ckpt", "fits"):
        table.add_column(col, justify="right")
    for row in est.memory():
        fits = ("yes" if row.total <= est.gpu.memory_gib * GIB else
                "with ckpt" if row.total_ckpt <= est.gpu.memory_gib * GIB else "no")
        chosen = row.zero == est.zero
        sizes = (row.weights, row.grads, row.optimizer, row.activations, row.activations_ckpt,
                 row.total, row.total_ckpt)
        table.add_row(f"{row.zero}{' *' if chosen else ''}", *(f"{v / GIB:.2f}" for v in sizes),
                      fits, style="bold" if chosen else None)
    console.print(table)
    cost = Table(title=f"compute for {human(est.tokens)} tokens at {est.mfu:.0%} MFU")
    for col in ("FLOPs (6ND)", "wall time", "GPU-hours", "on-demand", "spot"):
        cost.add_column(col, justify="right")
    on_demand, spot = est.cost(est.price), est.cost(est.spot_price)
    cost.add_row(f"{est.flops:.3e}", duration(est.seconds), f"{est.gpu_hours:,.1f}",
                 f"${on_demand:,.2f}" if on_demand is not None else "- (pass --price)",
                 f"${spot:,.2f}" if spot is not None else "-")
    console.print(cost)
