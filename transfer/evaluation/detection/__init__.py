"""Detection transfer on detectron2's public API; the stage's entry point is transfer.evaluation.detect.

config: defaults, presets, overrides, the norm policy and the input normalisation of the weights; heads: the C4
ROI head with MoCo's extra norm (R50 / R18) and the zero-init of residual blocks; weights: the weights a run
starts from (converted on the fly, read without running code) and their loading with its report; trainer: the
training loop, its DDP wrapping, hooks, writers and evaluators, and one trial; trials: a run's trials, their
results.json files and the summary; shim: importing detectron2 (an official build or the pure-Python wheel).
Importing this package, config or trials imports no detectron2.
"""
