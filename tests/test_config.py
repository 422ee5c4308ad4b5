"""Presets resolve to the paper's numbers; unknown keys are errors; the CLI reports them."""
import pytest

from pretrain import config
from pretrain.defaults import PretrainConfig, init_lr
from pretrain.main import main


def _preset(name, *overrides):
    return config.resolve(PretrainConfig(), [name], list(overrides), kind="pretrain")


def test_defaults_are_the_paper_recipe():
    c = PretrainConfig()
    assert (c.model.arch, c.model.dim, c.model.pred_dim, c.model.proj_layers) == ("resnet50", 2048, 512, 3)
    assert (c.optim.base_lr, c.optim.momentum, c.optim.weight_decay) == (0.05, 0.9, 1e-4)
    assert c.optim.fix_pred_lr and c.optim.schedule == "cosine" and c.model.stop_gradient
    assert (c.train.batch_size, c.train.epochs) == (512, 100)
    assert (c.data.image_size, c.data.min_scale, c.data.blur) == (224, 0.2, True)
    assert (c.monitor.knn_k, c.monitor.knn_t) == (200, 0.1)
    assert c.data.root == ""  # the recipe has defaults, the dataset has none: a run names it


def test_only_the_demo_and_test_presets_name_a_dataset():
    """The presets of a real dataset leave data.root to the user; the embedded data only by name."""
    roots = {p.stem: _preset(p.stem).data.root for p in (config.CONFIG_ROOT / "pretrain").glob("*.yaml")}
    assert {name for name, root in roots.items() if root} == {"demo", "test_tiny"}
    assert roots["demo"] == roots["test_tiny"] == "embedded"
    assert {"imagenet_r50_100ep", "imagenet_r50_200ep", "cifar10_r18", "cifar10_r18_fast"} <= set(roots)
    assert _preset("cifar10_r18", "data.root=embedded").data.root == "embedded"


def test_imagenet_presets():
    c100 = _preset("imagenet_r50_100ep")
    assert c100.model == PretrainConfig().model and c100.optim == PretrainConfig().optim
    assert (c100.train.epochs, c100.train.batch_size, init_lr(c100)) == (100, 512, pytest.approx(0.1))
    assert c100 == PretrainConfig()
    c200 = _preset("imagenet_r50_200ep")
    assert c200.train.epochs == 200 and init_lr(c200) == pytest.approx(0.1)


def test_cifar_preset_is_the_appendix_recipe():
    c = _preset("cifar10_r18")
    assert (c.model.arch, c.model.proj_layers, c.model.dim, c.model.pred_dim) == ("resnet18_cifar", 2, 2048, 512)
    assert (c.data.image_size, c.data.blur, c.data.val_split) == (32, False, "test")
    assert c.data.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and c.data.std == pytest.approx((0.2023, 0.1994, 0.2010))
    assert (c.train.batch_size, c.train.epochs) == (512, 800)
    assert (c.optim.base_lr, c.optim.weight_decay, init_lr(c)) == (0.03, 5e-4, pytest.approx(0.06))


def test_demo_preset_and_overrides():
    c = _preset("demo", "train.epochs=7", "data.workers=0")
    assert (c.data.root, c.model.arch, c.data.image_size, c.monitor.knn) == ("embedded", "resnet18", 32, True)
    assert (c.train.epochs, c.data.workers) == (7, 0)


def test_unknown_keys_are_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(config.ConfigError, match=r"bad.yaml: unknown key 'train.epoch'"):
        config.resolve(PretrainConfig(), [str(bad)], kind="pretrain")
    with pytest.raises(config.ConfigError, match=r"unknown key 'optim.lr'"):
        config.resolve(PretrainConfig(), overrides=["optim.lr=0.1"])
    with pytest.raises(config.ConfigError, match="no_such_preset"):
        config.resolve(PretrainConfig(), ["no_such_preset"], kind="pretrain")


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["--output", str(tmp_path / "run"), "model.archh=resnet18"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'model.archh'" in err
    assert not (tmp_path / "run").exists()
    assert main(["--config", "cifar10_r18", "--output", str(tmp_path / "run"), "--print-config",
                 "train.epochs=5"]) == 0
    out = capsys.readouterr().out
    assert "arch: resnet18_cifar" in out and "epochs: 5" in out


def test_cli_print_config_needs_no_dataset(capsys):
    assert main(["--config", "imagenet_r50_100ep", "--output", "unused", "--print-config"]) == 0
    assert "root: ''" in capsys.readouterr().out
