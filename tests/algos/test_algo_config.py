import pytest

from sposd.algos.config import AlgoCfg, ExposureCfg, PartialCfg, TipCfg


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


@pytest.mark.parametrize(
    "distill, field",
    [
        ({"select": "tip", "tip": lambda: TipCfg(ratio=0.0)}, "algo.distill.tip.ratio"),
        ({"select": "tip", "token_weight": "teacher_entropy"}, "token_weight"),
        ({"select": "tip", "interp_gamma": 0.1}, "interp_gamma"),
        ({"tip": lambda: TipCfg(region="q4")}, "algo.distill.tip.region"),
        ({"divergence": "sg_topk_rkl"}, "sg_topk_rkl"),  # needs support student_topk / teacher_topk
        ({"support": "student_topk"}, "student_topk"),  # serves only sg_topk_rkl
        ({"divergence_after": "sg_topk_rkl"}, "divergence_after"),
        ({"divergence_switch_frac": 0.0}, "divergence_switch_frac"),
        ({"token_weight_tau": 0.0}, "token_weight_tau"),
        ({"prompt_weight_norm": "sum"}, "prompt_weight_norm"),
        ({"exposure": lambda: ExposureCfg(window=10, update_every=10)}, "exposure.update_every"),
        ({"exposure": lambda: ExposureCfg(progress="reward")}, "algo.distill.exposure.progress"),
        ({"partial": lambda: PartialCfg(overlap="rouge")}, "algo.distill.partial.overlap"),
        ({"wrapper": "chatml"}, "wrapper"),
    ],
)
def test_new_distillation_slots_validate(distill, field):
    from sposd.algos.config import DistillCfg, ExposureCfg, PartialCfg, TipCfg  # noqa: F401  (the lambdas above)

    with pytest.raises(ValueError, match=field):
        DistillCfg(
            **{
                "coef": 1.0,
                "context": "reference_solution",
                **{k: v() if callable(v) else v for k, v in distill.items()},
            }
        )


def test_shared_teacher_and_group_needs():
    from sposd.algos.config import AdvModCfg, DistillCfg

    with pytest.raises(ValueError, match="share one teacher"):
        AlgoCfg(
            distill=DistillCfg(coef=1.0, context="reference_solution", teacher="ema"),
            adv_mod=AdvModCfg(kind="cepo"),
        )
    with pytest.raises(ValueError, match="group_size >= 2"):
        AlgoCfg(group_size=1, rl_coef=0.0, distill=DistillCfg(coef=1.0, context="successful_sibling"))
    with pytest.raises(ValueError, match="cepo_eps"):
        AdvModCfg(kind="cepo", cepo_eps=1.0)
