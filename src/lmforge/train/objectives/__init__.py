"""What a training run optimises: one objective per task, all driven by the same Trainer."""
