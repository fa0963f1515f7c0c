"""The NumPy forward passes (policies/numpy_inference.py) against the torch policies they mirror.

The ROS node drives the robot with ``policy.numpy_forward()`` instead of ``policy.act``; these
tests keep the two equal on every actor configuration the configs can produce, on perturbed
weights (both signs, every clamp active), with and without observation normalisation, and on
the trained fixtures' real observations.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

import envs  # noqa: F401  (registers the embodied/ env ids)
from envs.swimmer.env import swimmer_layout
from policies import numpy_inference, registry
from policies.mlp import MLPActor, MLPConfig
from policies.ncap import NCAP, NCAPConfig
from policies.protocol import PolicyMeta
from policies.registry import load_policy
from policies.run_dir import RunDir
from policies.vector_policy import VectorPolicy as InferencePolicy

ATOL = 1e-5
N_RANDOM = 500
ENV = {"name": "swimmer", "id": "embodied/Swimmer-v0"}


# --- building policies ----------------------------------------------------------------------


def wrap(actor: nn.Module, kind: str, actor_config: dict, obs_dim: int, action_dim: int,
         normalize: bool, seed: int, low: float = -1.0, high: float = 1.0) -> InferencePolicy:
    """A VectorPolicy around ``actor`` with its kind's NumPy forward; with ``normalize`` random statistics and
    clip 5."""
    meta = PolicyMeta(kind=kind, config=actor_config, env=dict(ENV), observation={"shape": [obs_dim]},
                      action_low=[low] * action_dim, action_high=[high] * action_dim)
    mean = var = None
    if normalize:
        gen = torch.Generator().manual_seed(1000 + seed)
        mean = 0.2 * torch.randn(obs_dim, generator=gen)
        var = 0.25 + 2.0 * torch.rand(obs_dim, generator=gen)
        meta.normalization = {"clip": 5.0}
    forward = registry.KINDS[kind].numpy_forward if kind in registry.KINDS else None
    return InferencePolicy(actor.eval(), meta, mean, var, numpy_actor=forward)


def numpy_policy(policy: InferencePolicy, atol: float = 1e-4):
    return policy.numpy_forward(atol=atol)


def perturb(actor: nn.Module, seed: int) -> None:
    """Redraw every parameter around its current mean, so both signs and all clamps occur."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in actor.parameters():
            nn.init.normal_(p, mean=float(p.mean()), std=1.0)


def informative(policy: InferencePolicy) -> bool:
    """Whether most joints' torques vary over random observations (no circuit silenced by a clamp)."""
    actions = policy.act(observations(policy, n=100, sweep=False))
    return bool((np.ptp(actions, axis=0) > 0.05).mean() >= 0.5)


def ncap_policy(n_joints: int = 5, task: str = "swim", normalize: bool = False, seed: int = 0,
                randomize: bool = True, **switches) -> InferencePolicy:
    """An NCAP wired to the ``n_joints + 1``-link swimmer's layout, as agents.builders does.

    With ``randomize`` the parameters are redrawn (see :func:`perturb`) until the circuit is
    informative: a draw whose clamps silence every muscle would make the comparison vacuous.
    """
    layout = swimmer_layout(n_joints + 1, task)
    cfg = NCAPConfig(n_joints=n_joints, joint_slice=layout.joints, joint_limit=layout.joint_limit,
                     time_index=layout.time, time_scale_steps=layout.time_scale_steps,
                     target_slice=layout.to_target, **switches)
    torch.manual_seed(seed)  # the learned task map's initial values come from the global generator
    actor = NCAP(cfg)
    policy = wrap(actor, "ncap", cfg.to_dict(), layout.size, n_joints, normalize, seed)
    if randomize:
        for attempt in range(100):
            perturb(actor, 100 * seed + attempt)
            if informative(policy):
                break
    return policy


def mlp_policy(hidden: list[int], activation: str, normalize: bool = False, seed: int = 0,
               obs_dim: int = 24, action_dim: int = 5) -> InferencePolicy:
    """An MLP with weights scaled so outputs are O(1): some actions clip, some do not."""
    cfg = MLPConfig(obs_dim=obs_dim, action_dim=action_dim, hidden=list(hidden), activation=activation)
    actor = MLPActor(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in actor.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=1.5 / m.in_features**0.5)
                nn.init.normal_(m.bias, std=0.5)
    return wrap(actor, "mlp", cfg.to_dict(), obs_dim, action_dim, normalize, seed, low=-0.9, high=0.8)


def observations(policy: InferencePolicy, n: int = N_RANDOM, seed: int = 0, sweep: bool = True) -> np.ndarray:
    """Random observations plus (``sweep``) a full sweep of the integer clock (k / 1000, k = 0..999).

    Joint angles reach twice the joint limit (the circuit's clamp), the target spans the
    hard-coded speed/turn thresholds, and most random rows carry an integer clock too.
    """
    rng = np.random.default_rng(seed)
    dim = policy.meta.obs_dim
    n_sweep = 1000 if sweep else 0
    obs = rng.normal(size=(n + n_sweep, dim)) * 2.0
    cfg = policy.actor.config
    if isinstance(cfg, NCAPConfig):
        lo, hi = cfg.joint_slice
        obs[:, lo:hi] = rng.uniform(-2.0, 2.0, size=(len(obs), hi - lo)) * cfg.joint_limit
        if cfg.target_slice is not None:
            tlo, thi = cfg.target_slice
            obs[:, tlo:thi] = rng.uniform(-0.3, 0.3, size=(len(obs), thi - tlo))
        t = cfg.time_index
        obs[: n // 5, t] = rng.uniform(0.0, 1.0, size=n // 5)  # some clocks between control steps
        obs[n // 5 : n, t] = rng.integers(0, 1000, size=n - n // 5) / cfg.time_scale_steps
        obs[n:, t] = np.arange(n_sweep) / cfg.time_scale_steps
    else:
        obs[:, -1] = rng.integers(0, 1000, size=len(obs)) / 1000
    return obs


def assert_matches(policy: InferencePolicy, obs: np.ndarray, atol: float = ATOL) -> None:
    fast = numpy_policy(policy, atol=max(atol, 1e-4))
    assert fast is not None, "numpy_policy rejected its own forward (self-check failed)"
    expected = policy.act(obs)  # batched torch reference
    got = np.stack([fast(o) for o in obs])
    assert got.shape == expected.shape
    err = np.abs(got - expected)
    worst = int(err.max(axis=1).argmax())
    assert err.max() <= atol, f"max |numpy - torch| = {err.max():.3g} on observation {worst}: {obs[worst].tolist()}"
    # Each single-observation torch call (the node's path) agrees as well.
    for i in range(0, len(obs), 97):
        np.testing.assert_allclose(fast(obs[i]), policy.act(obs[i]), atol=atol, rtol=0)


# --- NCAP configurations --------------------------------------------------------------------

NCAP_CASES = {
    "default_constant_init": dict(randomize=False),
    "uniform_init_seed1": dict(randomize=False, constant_init=False, init_seed=1),
    "uniform_init_seed7": dict(randomize=False, constant_init=False, init_seed=7),
    "unshared_uniform_init": dict(randomize=False, weight_sharing=False, constant_init=False, init_seed=3),
    "unsigned_pm1_init": dict(randomize=False, sign_constraints=False, init_seed=8),  # a non-silent draw
    "unsigned_uniform_init": dict(randomize=False, sign_constraints=False, constant_init=False, init_seed=6),
    "shared_signed": dict(),
    "shared_unsigned": dict(sign_constraints=False),
    "unshared_signed": dict(weight_sharing=False),
    "unshared_unsigned": dict(weight_sharing=False, sign_constraints=False),
    "learn_period": dict(learn_period=True),
    "learn_period_unshared": dict(learn_period=True, weight_sharing=False, constant_init=False),
    "9_joints_shared": dict(n_joints=9),
    "9_joints_unshared_unsigned": dict(n_joints=9, weight_sharing=False, sign_constraints=False),
    "9_joints_learn_period": dict(n_joints=9, learn_period=True),
    "navigate_none": dict(task="navigate"),
    "navigate_hardcoded": dict(task="navigate", task_control="hardcoded"),
    "navigate_hardcoded_unshared": dict(task="navigate", task_control="hardcoded", weight_sharing=False),
    "navigate_hardcoded_unsigned": dict(task="navigate", task_control="hardcoded", sign_constraints=False),
    "navigate_learned": dict(task="navigate", task_control="learned"),
    "navigate_learned_unshared_unsigned": dict(task="navigate", task_control="learned", weight_sharing=False,
                                               sign_constraints=False),
    "navigate_learned_learn_period": dict(task="navigate", task_control="learned", learn_period=True),
    "navigate_9_joints_hardcoded": dict(task="navigate", task_control="hardcoded", n_joints=9),
    "navigate_9_joints_learned_unshared": dict(task="navigate", task_control="learned", n_joints=9,
                                               weight_sharing=False),
    "navigate_hardcoded_unperturbed": dict(task="navigate", task_control="hardcoded", randomize=False),
}


@pytest.mark.parametrize("case", list(NCAP_CASES))
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_ncap_numpy_matches_torch(case, normalize):
    """Every NCAP switch combination gives the torch policy's actions in NumPy."""
    kw = dict(NCAP_CASES[case])
    seed = sorted(NCAP_CASES).index(case)
    policy = ncap_policy(normalize=normalize, seed=seed, **kw)
    assert informative(policy), "the drawn circuit is silent; the comparison would be vacuous"
    if kw.get("learn_period"):  # the smooth oscillator stays on torch (float32 clock rounding)
        assert numpy_policy(policy) is None
        return
    assert_matches(policy, observations(policy, seed=seed), atol=ATOL)


def test_ncap_cases_exercise_clamps_and_signs():
    """Guard on the test itself: the cases hold weights on the wrong side of their sign clamp,
    unsigned circuits with weights of both signs, and uniform inits that are not all ±1."""
    wrong_side = both_signs = 0
    for case, kw in NCAP_CASES.items():
        policy = ncap_policy(seed=sorted(NCAP_CASES).index(case), **kw)
        actor = policy.actor
        raw = {name: getattr(actor, name).detach() for name in actor.signs}
        if actor.config.sign_constraints:
            wrong_side += any(bool((sign * raw[name] < 0).any()) for name, sign in actor.signs.items())
        else:
            values = torch.cat([w.ravel() for w in raw.values()])
            both_signs += bool((values > 0).any() and (values < 0).any())
    assert wrong_side >= 3 and both_signs >= 3
    uniform = ncap_policy(randomize=False, constant_init=False, init_seed=1)
    assert not torch.all(uniform.actor.bneuron_prop.detach().abs() == 1.0)


def test_ncap_cases_reach_both_torque_limits():
    """Guard on the test itself: over the NCAP cases the sampled actions hit +1, -1 and the interior."""
    actions = []
    for case, kw in NCAP_CASES.items():
        policy = ncap_policy(seed=sorted(NCAP_CASES).index(case), **kw)
        actions.append(policy.act(observations(policy, n=100)).ravel())
    actions = np.concatenate(actions)
    assert (actions == 1.0).any() and (actions == -1.0).any()
    assert ((np.abs(actions) > 0.01) & (np.abs(actions) < 0.99)).mean() > 0.1


# --- MLP configurations ---------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu"])
@pytest.mark.parametrize("hidden", [[64, 64], [32]], ids=["64x64", "32"])
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
def test_mlp_numpy_matches_torch(activation, hidden, normalize):
    """MLP actors of every activation and depth, with and without normalisation, clip alike."""
    seed = ["tanh", "relu", "elu"].index(activation) + 3 * len(hidden)
    policy = mlp_policy(hidden, activation, normalize=normalize, seed=seed)
    obs = observations(policy, seed=seed)
    actions = policy.act(obs)
    assert (actions == np.float32(0.8)).any() and (actions == np.float32(-0.9)).any(), "clipping not exercised"
    assert_matches(policy, obs)


def test_mlp_navigate_sizes():
    """Observation and action sizes come from the actor, not from the 6-link swim layout."""
    policy = mlp_policy([32], "elu", normalize=True, seed=11, obs_dim=42, action_dim=9)
    assert_matches(policy, observations(policy, seed=11))


def test_normalization_clip_is_applied():
    """Normalised observations beyond obs_clip are clipped before the actor in both paths."""
    policy = mlp_policy([32], "relu", normalize=True, seed=5)
    policy.meta.obs_clip = 0.5
    obs = observations(policy, seed=5) * 10.0
    assert_matches(policy, obs)


# --- what numpy_forward refuses --------------------------------------------------------------


class TinyActor(nn.Module):
    """An actor type registered nowhere (no NumPy forward exists for it)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(24, 5)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.linear(obs)


def test_unknown_actor_type_returns_none():
    """A kind without a NumPy forward stays on torch instead of failing."""
    policy = wrap(TinyActor(), "tiny", {}, 24, 5, normalize=False, seed=0)
    assert numpy_policy(policy) is None


def test_subclass_of_known_actor_returns_none():
    """Only the exact registered types qualify: a subclass may override forward."""

    class ScaledMLP(MLPActor):
        def forward(self, obs):
            return 2.0 * super().forward(obs)

    actor = ScaledMLP(MLPConfig())
    policy = wrap(actor, "mlp", MLPConfig().to_dict(), 24, 5, normalize=False, seed=0)
    assert numpy_policy(policy) is None


def test_corrupted_mlp_forward_is_rejected(monkeypatch):
    """A NumPy forward that disagrees with torch (here: all zeros) is never returned."""
    policy = mlp_policy([64, 64], "tanh", seed=1)
    policy._numpy_actor = lambda actor: lambda obs: np.zeros(5)
    assert numpy_policy(policy) is None


def test_corrupted_ncap_forward_is_rejected(monkeypatch):
    """An NCAP forward with the wrong torque sign fails the self-check."""
    policy = ncap_policy(seed=0)
    real = numpy_inference.ncap_forward
    assert numpy_policy(policy) is not None
    policy._numpy_actor = lambda actor: lambda obs: -real(actor)(obs)
    assert numpy_policy(policy) is None


def phase_shifted(actor: NCAP):
    """The real NumPy NCAP forward, but one control step ahead on the clock."""
    forward = numpy_inference.ncap_forward(actor)
    t, scale = actor.config.time_index, actor.config.time_scale_steps

    def wrong(obs):
        obs = np.array(obs, dtype=np.float64)
        obs[t] += 1.0 / scale
        return forward(obs)

    return wrong


def test_phase_shifted_ncap_forward_differs_on_the_clock_sweep():
    """Guard for the test below: the off-by-one oscillator does differ from torch on some clocks."""
    policy = ncap_policy(randomize=False)
    obs = np.zeros((1000, policy.meta.obs_dim))
    obs[:, policy.actor.config.time_index] = np.arange(1000) / 1000
    wrong = phase_shifted(policy.actor)
    differs = [not np.allclose(wrong(o), policy.act(o), atol=1e-4) for o in obs]
    assert 0 < sum(differs) < 100  # only at the oscillator's phase boundaries


def test_phase_shifted_ncap_forward_is_rejected(monkeypatch):
    """A NumPy NCAP forward with the oscillator one step off is rejected by the self-check."""
    policy = ncap_policy(randomize=False)
    policy._numpy_actor = phase_shifted
    assert numpy_policy(policy) is None


def test_corrupted_forward_rejected_within_tolerance(monkeypatch):
    """Differences above ``atol`` are rejected; below it they are accepted."""
    policy = mlp_policy([32], "tanh", seed=2)
    real = numpy_inference.mlp_forward
    policy._numpy_actor = lambda actor: lambda obs: real(actor)(obs) + 1e-3
    assert numpy_policy(policy, atol=1e-4) is None
    # Outputs pushed past the clip bounds stay clipped, so a tolerance above the shift accepts it.
    assert numpy_policy(policy, atol=1e-2) is not None


# --- the trained fixtures on real rollouts --------------------------------------------------


def rollout_observations(policy: InferencePolicy, n: int = 200, seed: int = 0) -> np.ndarray:
    """Observations of a 6-link swim episode driven by the policy plus exploration noise."""
    env = gym.make("embodied/Swimmer-v0")
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    try:
        for _ in range(n):
            out.append(obs)
            action = np.clip(policy.act(obs) + 0.3 * rng.normal(size=env.action_space.shape), -1.0, 1.0)
            obs, *_ = env.step(action)
    finally:
        env.close()
    return np.asarray(out)


@pytest.mark.parametrize("run", ["ncap_run", "mlp_run"])
def test_trained_policy_numpy_matches_torch(run, request):
    """The deployed (trained, loaded from disk) policies run identically in NumPy."""
    policy = load_policy(RunDir(request.getfixturevalue(run)).policy())
    fast = numpy_policy(policy)
    assert fast is not None
    obs = rollout_observations(policy)
    assert obs.shape == (200, policy.meta.obs_dim)
    for o in obs:
        np.testing.assert_allclose(fast(o), policy.act(o), atol=ATOL, rtol=0)
