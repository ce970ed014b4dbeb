import pytest

from sposd.algos.config import AlgoCfg


def test_defaults_are_valid_grpo():
    cfg = AlgoCfg()
    assert (cfg.name, cfg.loss_agg, cfg.clip_low, cfg.clip_high, cfg.dual_clip_c) == (
        "grpo",
        "seq-mean-token-mean",
        0.2,
        0.2,
        3.0,
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"group_size": 0}, "algo.group_size"),
        ({"group_size": 1, "dynamic_sampling": True}, "algo.dynamic_sampling"),
        ({"rl_coef": -1.0}, "algo.rl_coef"),
        ({"kl_coef": -0.1}, "algo.kl_coef"),
        ({"adv_eps": 0.0}, "algo.adv_eps"),
        ({"clip_low": 0.3, "clip_high": 0.2}, "algo.clip_low"),
        ({"clip_low": -0.1}, "algo.clip_low"),
        ({"clip_low": 1.0, "clip_high": 2.0}, "algo.clip_low"),
        ({"dual_clip_c": 1.0}, "algo.dual_clip_c"),
        ({"loss_agg": "token_mean"}, "algo.loss_agg"),
        ({"loss_scale_len": 0}, "algo.loss_scale_len"),
        ({"overlong_buffer": -1}, "algo.overlong_buffer"),
        ({"overlong_penalty": -1.0}, "algo.overlong_penalty"),
        ({"max_gen_batches": 0}, "algo.max_gen_batches"),
        ({"ppo_epochs": 0}, "algo.ppo_epochs"),
        ({"num_minibatches": 0}, "algo.num_minibatches"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        AlgoCfg(**kwargs)


def test_unknown_loss_agg_lists_valid_modes():
    with pytest.raises(ValueError) as e:
        AlgoCfg(loss_agg="mean")
    assert all(m in str(e.value) for m in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"))


def test_variant_presets_validate():
    AlgoCfg(name="dapo", clip_high=0.28, loss_agg="token-mean", dynamic_sampling=True, overlong_buffer=8)
    AlgoCfg(name="dr_grpo", adv_std_norm=False, loss_agg="seq-mean-token-sum-norm", dual_clip_c=None)
