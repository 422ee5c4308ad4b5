"""Tooling around the suite: the demo (demo), the detectron2 installer and its check (d2compat; the import shim
is transfer.evaluation.detection.shim) and the benchmarks (benchmark, cifar_bench, grid_bench, rehearsal_bench)."""
