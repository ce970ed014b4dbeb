"""The `train.inspect.*` keys: off by default, validated, refused for a method without a teacher."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sposd.config import register_configs, register_resolvers, to_object

CONF = Path(__file__).resolve().parents[2] / "conf"


def _compose(*overrides: str):
    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=list(overrides)))


def test_off_by_default_and_set_by_keys():
    i = _compose().train.inspect
    assert (i.every, i.rows, i.topk) == (0, 4, 3)
    i = _compose("algo=opsd", "train.inspect.every=5", "train.inspect.rows=2", "train.inspect.topk=5").train.inspect
    assert (i.every, i.rows, i.topk) == (5, 2, 5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algo=grpo", "train.inspect.every=5"],
            "train.inspect.every=5 records the distillation signal, and algo=grpo has",
        ),
        (["train.inspect.rows=0"], "train.inspect.rows"),
        (["train.inspect.every=-1"], "train.inspect.every"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        _compose(*overrides)
