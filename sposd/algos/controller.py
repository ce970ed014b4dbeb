"""ATESD's exposure controller: how much of the reference solution the teacher sees (spec section 7).

A Beta policy over the reveal ratio rho in [0, 1], conditioned on compact training-state statistics:

    (a, b) = softplus(MLP(state)) + 1,    rho ~ Beta(a, b)      (a, b > 1: unimodal, rho strictly inside (0, 1))

One draw is held for a window of K steps. Each window's mean of a progress signal m_w is recorded (rollout
accuracy, or minus the distillation loss); a decision taken for window w is scored by the discounted learning
progress that follows it,

    G_w = sum_{j >= 0} discount^j (m_{w+j+1} - m_{w+j})      (over the windows completed so far),

and every L steps (L > K) the policy takes one REINFORCE step on -mean((G_w - baseline) log Beta(rho_w | s_w)),
the baseline being the mean of all earlier returns. Decisions are used once, as soon as at least one window has
followed them. The state features, K, L, the discount and the progress signal are project defaults (the paper's
code is not public).

The controller's trainable state is plain: `state_dict()` holds the policy's and the optimiser's state dicts and
the bookkeeping lists, `load_state_dict` restores them (a checkpoint of a run can carry it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sposd.algos.config import DistillCfg

FEATURES = ("distill_loss", "difficulty", "log_grad_norm", "rho", "progress")


class BetaPolicy(nn.Module):
    """state_F -> (a, b) of a Beta distribution, both > 1: a small MLP, softplus, + 1.

    Args:
        num_features: F.
        hidden: width of the hidden layer.
    """

    def __init__(self, num_features: int = len(FEATURES), hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, state_NF: Tensor) -> tuple[Tensor, Tensor]:
        ab = nn.functional.softplus(self.net(state_NF)) + 1.0
        return ab[..., 0], ab[..., 1]

    def distribution(self, state_NF: Tensor) -> torch.distributions.Beta:
        a, b = self(state_NF)
        return torch.distributions.Beta(a, b)


class ExposureController:
    """Picks the reveal ratio rho for each window of steps and learns from the progress that follows.

    The loop calls `begin_step` before a step (a new draw at the start of each window) and `end_step` after it with
    the step's metrics (all ranks see the same global metrics and draw with the same seeded streams, so every rank
    holds the same rho).

    Args:
        cfg: the distillation config (its `exposure` block: window, update_every, discount, lr, hidden, progress).
        seed: seeds the policy's initial weights and the draws.
    """

    def __init__(self, cfg: DistillCfg, *, seed: int = 0) -> None:
        self.window, self.update_every = cfg.exposure.window, cfg.exposure.update_every
        self.discount, self.progress = cfg.exposure.discount, cfg.exposure.progress
        self.seed = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = BetaPolicy(len(FEATURES), cfg.exposure.hidden)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.exposure.lr)
        self.rho = 0.5
        self.features = [0.0] * len(FEATURES)
        self.decisions: list[dict] = []  # {"window", "state", "rho"} not yet used for an update
        self.window_means: list[float] = []  # one per completed window
        self.current: list[float] = []  # progress values of the running window
        self.past_returns: list[float] = []
        self.updates = 0

    # ---- acting -----------------------------------------------------------------------------------------
    def draw(self, state_F: Tensor, *, key: int) -> float:
        """One rho ~ Beta(a(s), b(s)) from a stream keyed by (seed, key): reproducible, global RNG untouched."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + key)
            return float(self.policy.distribution(state_F).sample())

    def begin_step(self, step: int, total_steps: int) -> dict[str, float]:
        """At the first step of each window: observe the state and draw the window's rho."""
        if (step - 1) % self.window == 0:
            self.features[FEATURES.index("progress")] = (step - 1) / max(total_steps, 1)
            self.features[FEATURES.index("rho")] = self.rho
            state = torch.tensor(self.features, dtype=torch.float32)
            self.rho = self.draw(state, key=(step - 1) // self.window)
            self.decisions.append({"window": (step - 1) // self.window, "state": state, "rho": self.rho})
        with torch.no_grad():
            a, b = self.policy(torch.tensor(self.features, dtype=torch.float32))
        return {"exposure/rho": self.rho, "exposure/beta_a": float(a), "exposure/beta_b": float(b)}

    def end_step(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Record the step's progress signal and state features; close windows; REINFORCE every L steps."""
        acc = metrics.get("reward/accuracy")
        loss = metrics.get("distill/div_mean")
        value = acc if self.progress == "accuracy" else (None if loss is None else -loss)
        if value is not None and math.isfinite(value):
            self.current.append(float(value))
        if loss is not None:
            self.features[FEATURES.index("distill_loss")] = float(loss)
        if acc is not None:
            self.features[FEATURES.index("difficulty")] = 1.0 - float(acc)
        if "actor/grad_norm" in metrics:
            self.features[FEATURES.index("log_grad_norm")] = math.log1p(max(float(metrics["actor/grad_norm"]), 0.0))
        out: dict[str, float] = {}
        if step % self.window == 0:
            prev = self.window_means[-1] if self.window_means else 0.0
            self.window_means.append(sum(self.current) / len(self.current) if self.current else prev)
            self.current = []
        if step % self.update_every == 0:
            out.update(self.update())
        return out

    # ---- learning ---------------------------------------------------------------------------------------
    def returns(self) -> list[tuple[dict, float]]:
        """(decision, G) for every pending decision followed by at least one completed window."""
        m, out = self.window_means, []
        for d in self.decisions:
            w = d["window"]
            if w + 1 < len(m):
                out.append((d, sum(self.discount**j * (m[w + j + 1] - m[w + j]) for j in range(len(m) - 1 - w))))
        return out

    def reinforce(self, states_NF: Tensor, rhos_N: Tensor, returns_N: Tensor, *, baseline: float = 0.0) -> float:
        """One REINFORCE step on -mean((G - baseline) log Beta(rho | a(s), b(s))). Returns the surrogate loss."""
        logp_N = self.policy.distribution(states_NF).log_prob(rhos_N.clamp(1e-6, 1 - 1e-6))
        loss = -((returns_N - baseline) * logp_N).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def update(self) -> dict[str, float]:
        """REINFORCE on the decisions whose progress can be scored; they are then dropped."""
        ready = self.returns()
        if not ready:
            return {}
        baseline = sum(self.past_returns) / len(self.past_returns) if self.past_returns else 0.0
        states = torch.stack([d["state"] for d, _ in ready])
        rhos = torch.tensor([d["rho"] for d, _ in ready])
        rets = torch.tensor([g for _, g in ready])
        loss = self.reinforce(states, rhos, rets, baseline=baseline)
        used = {id(d) for d, _ in ready}
        self.decisions = [d for d in self.decisions if id(d) not in used]
        self.past_returns.extend(rets.tolist())
        self.updates += 1
        return {
            "exposure/update_loss": loss,
            "exposure/return_mean": float(rets.mean()),
            "exposure/decisions": len(ready),
        }

    # ---- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rho": self.rho,
            "features": list(self.features),
            "decisions": [{**d, "state": d["state"].clone()} for d in self.decisions],
            "window_means": list(self.window_means),
            "current": list(self.current),
            "past_returns": list(self.past_returns),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rho, self.features = float(state["rho"]), list(state["features"])
        self.decisions = [{**d, "state": d["state"].clone()} for d in state["decisions"]]
        self.window_means, self.current = list(state["window_means"]), list(state["current"])
        self.past_returns, self.updates = list(state["past_returns"]), int(state["updates"])
