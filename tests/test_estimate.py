"""`lmforge estimate` against hand-computed memory, FLOPs, time and cost."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.model.config import ModelConfig
from lmforge.train.estimate import activation_bytes, make_estimate, memory_table, parse_count

LLAMA2_7B = 6_738_415_616


def test_7b_on_8_a100s_zero3() -> None:
    est = make_estimate("7b", "500M", "a100-80g", 8, 3, price=2.0)
    assert est.params == LLAMA2_7B
    zero3 = est.memory()[3]
    assert zero3.weights == 2 * LLAMA2_7B / 8
    assert zero3.grads == 2 * LLAMA2_7B / 8
    assert zero3.optimizer == 12 * LLAMA2_7B / 8
    assert est.flops == pytest.approx(6 * LLAMA2_7B * 500e6)  # 2.02e19
    seconds = 6 * LLAMA2_7B * 500e6 / (8 * 312e12 * 0.4)
    assert est.seconds == pytest.approx(seconds)  # about 5.6 hours
    assert est.cost(est.price) == pytest.approx(seconds / 3600 * 8 * 2.0)  # about $90
    assert est.cost(est.spot_price) == pytest.approx(seconds / 3600 * 8 * 2.0 * 0.4)


def test_zero_stages_shard_what_they_should() -> None:
    cfg = ModelConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, ffn_dim=128)
    psi = 1000 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64  # 146,240
    rows = memory_table(cfg, gpus=4, seq_len=128, micro_batch=2)
    assert [(r.weights, r.grads, r.optimizer) for r in rows] == [
        (2 * psi, 2 * psi, 12 * psi),
        (2 * psi, 2 * psi, 3 * psi),
        (2 * psi, psi / 2, 3 * psi),
        (psi / 2, psi / 2, 3 * psi),
    ]


def test_activation_memory_by_hand() -> None:
    cfg = ModelConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, ffn_dim=128)
    tokens = 128 * 2
    per_layer = tokens * (8 * 64 + 4 * 64 + 4 * 64 + 8 * 128)  # 524,288 bytes
    logits = tokens * 6 * 1000
    without, with_ckpt = activation_bytes(cfg, 128, 2)
    assert without == 2 * per_layer + logits == 2_584_576
    assert with_ckpt == 2 * tokens * 2 * 64 + per_layer + logits == 2_125_824


def test_token_counts_parse() -> None:
    assert parse_count("500M") == 500_000_000
    assert parse_count("1.5B") == 1_500_000_000
    assert parse_count("2T") == 2 * 10**12
    assert parse_count("300k") == 300_000
    assert parse_count("12345") == 12345
    for bad in ("abc", "-5", "0", "5X"):
        with pytest.raises(UserError):
            parse_count(bad)


def test_table_prints(capsys: pytest.CaptureFixture) -> None:
    args = ["estimate", "--model", "7b", "--tokens", "500M", "--gpu", "a100-80g", "--gpus", "8",
            "--zero", "3", "--price", "2.0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "6.74B parameters" in out and "2.022e+19" in out and "5.6 h" in out
    assert "$89.99" in out and "$36.00" in out
    assert "75.31" in out  # ZeRO-0 optimizer state: 12 * 6.74e9 bytes in GiB


@pytest.mark.parametrize("args,message", [
    (["--gpu", "tpu-v9"], "unknown GPU"),
    (["--zero", "5"], "--zero must be 0, 1, 2 or 3"),
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--mfu", "1.5"], "--mfu is a fraction"),
    (["--model", "9b"], "unknown model preset"),
    (["--price", "-1"], "--price must be >= 0"),
])
def test_bad_inputs_are_one_line_errors(args: list[str], message: str,
                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["estimate", "--tokens", "1B", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_bad_token_count_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["estimate", "--tokens", "lots"]) == 2
    assert "write a number like 500M" in capsys.readouterr().err
