"""Tooling around the suite: the demo (demo), the embedded detection data (synthetic_det), the detectron2
installer and import shim (d2compat) and the benchmarks (benchmark, cifar_bench, grid_bench, rehearsal_bench)."""
