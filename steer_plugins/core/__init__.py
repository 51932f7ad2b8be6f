"""The STEER engine core: settings, model sources, the negative pool, rows, the combination rule,
sampling, stopping, the decoder, the scheduler and the `SteerEngine` facade. Knows no application
(CLI, pipeline, finetune, sweep, eval) and no framework."""
