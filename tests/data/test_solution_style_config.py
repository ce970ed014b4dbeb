"""data.solution_style in a composed `sposd train` config: the records it loads and the methods it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sposd.config import register_configs, register_resolvers, to_object
from sposd.errors import UserError
from sposd.loop.build import check_reference_solutions, load_data

CONF = Path(__file__).resolve().parents[2] / "conf"
register_resolvers()
register_configs()


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_object(compose("train", overrides=["data.limit=20", *overrides]))


def test_default_is_own_and_styles_reach_the_records():
    assert _compose().data.solution_style == "own"
    own = load_data(_compose())
    foreign = load_data(_compose("data.solution_style=foreign"))
    none = load_data(_compose("data.solution_style=none"))
    assert [r["problem"] for r in own] == [r["problem"] for r in foreign] == [r["problem"] for r in none]
    assert all("boxed" in r["solution"] for r in own) and all("; answer " in r["solution"] for r in foreign)
    assert all(r["solution"] is None for r in none)


@pytest.mark.parametrize("algo", ["grpo", "ssopd", "uopsd", "sdpo"])
def test_answer_only_data_runs_methods_without_a_reference(algo):
    cfg = _compose(f"algo={algo}", "data.solution_style=none")
    check_reference_solutions(cfg, load_data(cfg))


@pytest.mark.parametrize("algo", ["opsd", "paint"])
def test_answer_only_data_refuses_reference_methods_in_one_line(algo):
    cfg = _compose(f"algo={algo}", "data.solution_style=none")
    with pytest.raises(UserError) as e:
        check_reference_solutions(cfg, load_data(cfg))
    msg = str(e.value)
    assert "\n" not in msg and "data.solution_style=none" in msg and "grpo, ssopd, uopsd, sdpo" in msg


def test_bad_style_and_non_toy_style_fail_with_one_line():
    with pytest.raises(Exception, match="data.solution_style"):
        _compose("data.solution_style=mine")
    with pytest.raises(Exception, match="applies to the toy task only"):
        _compose("data=local", "data.path=x.jsonl", "data.solution_style=foreign")
