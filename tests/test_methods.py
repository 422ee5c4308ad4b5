"""pretrain.methods: the method key picks the module; keys a method does not read are refused by name."""
from __future__ import annotations

import pytest

from pretrain import config, methods
from pretrain.config import ConfigError
from pretrain.defaults import PretrainConfig
from pretrain.loss import Objective
from pretrain.model import SimSiam


def cfg(*overrides: str) -> PretrainConfig:
    return config.resolve(PretrainConfig(), ["test_tiny"], list(overrides), kind="pretrain")


def test_simsiam_is_the_default_and_builds_the_papers_objects():
    c = cfg()
    assert c.method == "simsiam" and methods.display_name(c.method) == "SimSiam"
    methods.check(c)
    model = methods.build_model(c)
    assert isinstance(model, SimSiam)
    objective = methods.build_objective(c, model)
    assert isinstance(objective, Objective) and objective.default and not objective.stateful


def test_an_unknown_method_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^method: 'dino' is not one of simsiam, byol, simclr, moco, swav$"):
        methods.check(cfg("method=dino"))


@pytest.mark.parametrize("override, key", [("loss.temperature=0.2", "loss.temperature=0.2"),
                                           ("model.queue_size=4096", "model.queue_size=4096"),
                                           ("optim.freeze_prototypes_steps=10", "optim.freeze_prototypes_steps=10")])
def test_a_key_the_method_does_not_read_is_refused(override, key):
    with pytest.raises(ConfigError, match=rf"^method=simsiam does not read {key}: remove it"):
        methods.check(cfg(override))


def test_every_own_key_exists_and_names_known_methods():
    flat = config.flatten(config.to_dict(PretrainConfig()))
    for key, readers in methods.OWN_KEYS.items():
        assert key in flat and set(readers) <= set(methods.METHODS), key
    assert set(methods.DISPLAY) == set(methods.METHODS)


def test_every_method_reads_model_predictor():
    """model.predictor is a key of every method (MoCo's own check asks for none): never refused as foreign."""
    assert "model.predictor" not in methods.OWN_KEYS
    assert methods.foreign_keys(cfg("method=moco", "model.predictor=none", "model.target=momentum")) == []
    assert methods.foreign_keys(cfg("method=moco", "model.predictor=none", "model.queue_size=4096",
                                    "loss.similarity=cross_entropy")) == ["loss.similarity"]
