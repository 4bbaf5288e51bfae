"""Pretraining: the trainer loop, optimizers and schedules, checkpoints, stability guard,
monitoring, distributed wrappers, and the `pretrain`, `generate` and `estimate` commands."""
