"""Applications built on the engine core: the `steer` CLI, the generation pipeline, LoRA
fine-tuning, sweeps and the evaluation metrics. The core never imports this package."""
