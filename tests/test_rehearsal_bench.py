"""transfer.tooling.rehearsal_bench: the projection of measured per-image costs to ImageNet scale."""
import pytest

from transfer.tooling import rehearsal_bench as rb


def test_projection_arithmetic():
    """With a training step costing 10 forwards, the kNN monitor's defaults (100 bank + 10 query images per
    class) cost 110,000 forwards per epoch of 1,281,167 training steps: 0.86 % of an epoch."""
    p = rb.projection({"forward_s_per_image": 0.01, "train_step_s_per_image": 0.1}, 100, 10)
    assert (p["monitor_bank_images"], p["monitor_query_images"]) == (100_000, 10_000)
    assert p["train_step_per_forward"] == pytest.approx(10.0)
    assert p["monitor_share_of_epoch"] == pytest.approx(110_000 / (10 * 1_281_167))
    assert p["monitor_feature_mb_per_rank"] == pytest.approx(110_000 * 2048 * 4 / 2**20)
    assert p["stages_in_pretrain_epochs"]["pretrain epoch"] == pytest.approx(1.0)
    # a cap above what a class holds takes the whole split
    assert rb.projection({"forward_s_per_image": 1, "train_step_s_per_image": 1}, 10**6, 10**6)[
        "monitor_query_images"] == 50_000


def test_per_image_costs_are_measured():
    c = rb.per_image_costs(size=32, batch=2, repeats=1)
    assert c["train_step_s_per_image"] > 0 and c["forward_s_per_image"] > 0 and c["size"] == 32


def test_chain_names_every_stage(tmp_path):
    names = [n for n, _ in rb.chain(tmp_path)]
    assert names == ["generate", "pretrain (reference)", "pretrain (fast mode)", "convert", "knn",
                     "linear (fast mode)", "detect"]
    assert all(str(tmp_path) in " ".join(argv) for _, argv in rb.chain(tmp_path))
