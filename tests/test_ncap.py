"""The NCAP swimmer circuit (policies/ncap.py) against the paper's spec (Bhattasali, Zador & Engel 2022, §2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policies.ncap import NCAP, NCAPConfig, count_parameters
from policies.registry import build_module as build_actor

J = 5
LIMIT = 2 * math.pi / 6  # joint limit of the 6-link body
WEIGHTS = ("bneuron_osc", "bneuron_prop", "muscle_ipsi", "muscle_contra")
EXCITATORY = ("bneuron_osc", "bneuron_prop", "muscle_ipsi")


def make_obs(joints=None, step=0, n_joints=J, extra=None):
    """A 6-link swim observation: joints, 18 body velocities (noise), time = step / 1000."""
    joints = np.zeros(n_joints) if joints is None else np.asarray(joints, dtype=float)
    vel = np.random.default_rng(0).normal(size=3 * (n_joints + 1)) if extra is None else extra
    return torch.tensor(np.concatenate([joints, vel, [step / 1000]]), dtype=torch.float32)


def ncap(**kw) -> NCAP:
    return NCAP(NCAPConfig(**kw))


def set_weight(model: NCAP, name: str, value: float) -> None:
    with torch.no_grad():
        getattr(model, name).fill_(value)


# --- forward pass against hand-computed cases ----------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 15, 29, 60, 89, 120, 989])
def test_head_torque_plus_one_in_dorsal_phase(step):
    out = ncap()(make_obs(step=step))
    torch.testing.assert_close(out, torch.tensor([1.0, 0, 0, 0, 0]))


@pytest.mark.parametrize("step", [30, 31, 45, 59, 90, 119, 150, 999])
def test_head_torque_minus_one_in_ventral_phase(step):
    out = ncap()(make_obs(step=step))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0, 0, 0, 0]))


def test_oscillator_square_wave_has_period_60_and_half_duty():
    model = ncap()
    steps = torch.arange(240)
    obs = torch.stack([make_obs(step=int(s)) for s in steps])
    head = model(obs)[:, 0]
    expected = torch.where((steps % 60) < 30, 1.0, -1.0)
    torch.testing.assert_close(head, expected)


def test_clock_is_read_from_a_float32_time_feature():
    """steps/1000 in float32 is not exact (0.029 * 1000 = 28.999998): the phase must round."""
    model = ncap()
    for step in (29, 30, 59, 60, 589, 590):
        obs = make_obs(step=step)
        assert obs.dtype == torch.float32
        expected = 1.0 if step % 60 < 30 else -1.0
        assert model(obs)[0].item() == expected, step


def test_oscillator_period_from_config():
    model = ncap(oscillator_period=80)
    assert model(make_obs(step=39))[0].item() == 1.0
    assert model(make_obs(step=40))[0].item() == -1.0
    assert model(make_obs(step=79))[0].item() == -1.0
    assert model(make_obs(step=80))[0].item() == 1.0


def test_proprioception_half_dorsal_bend_gives_half_torque():
    # joint 1's front neighbour (joint 0) is bent dorsally by half the limit; ventral phase so
    # the head is driven the other way and does not mask anything.
    obs = make_obs([0.5 * LIMIT, 0, 0, 0, 0], step=30)
    out = ncap()(obs)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.5, 0, 0, 0]))


def test_proprioception_weight_two_saturates():
    model = ncap()
    set_weight(model, "bneuron_prop", 2.0)
    out = model(make_obs([0.5 * LIMIT, 0, 0, 0, 0], step=30))
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, 0, 0, 0]))


def test_proprioception_carries_wave_head_to_tail():
    """Each joint follows the bend of the joint in front; the last joint's bend drives nothing."""
    q = [0.25 * LIMIT, -0.75 * LIMIT, 0.1 * LIMIT, -3.0 * LIMIT, 0.9 * LIMIT]
    out = ncap()(make_obs(q, step=0))
    # head: oscillator (+1); joint i: clip(q_{i-1}/limit, -1, 1) (ventral bend -> negative torque)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.25, -0.75, 0.1, -1.0]), atol=1e-6, rtol=0)


def test_hand_computed_non_default_weights():
    """§1.2 with osc=0.6, prop=1.5, ipsi=0.8, contra=-0.5 (shared)."""
    model = ncap()
    for name, v in zip(WEIGHTS, (0.6, 1.5, 0.8, -0.5)):
        set_weight(model, name, v)
    q = [0.2 * LIMIT, -0.4 * LIMIT, 0.0, 0.0, 0.0]
    out = model(make_obs(q, step=10))
    # head: B_D = g(0.6) = 0.6, B_V = 0 -> M_D = g(0.8*0.6) = 0.48, M_V = g(-0.5*0.6) = 0
    # joint 1: s^D_0 = 0.2 -> B_D = g(1.5*0.2) = 0.3 -> M_D = 0.24
    # joint 2: s^V_1 = 0.4 -> B_V = g(1.5*0.4) = 0.6 -> M_V = 0.48 -> torque -0.48
    torch.testing.assert_close(out, torch.tensor([0.48, 0.24, -0.48, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_hand_computed_unshared_with_both_sides_active():
    """Unshared weights and the smooth oscillator at phase 0 (both oscillator units at 0.5)."""
    model = ncap(weight_sharing=False, learn_period=True)
    with torch.no_grad():
        model.bneuron_osc.copy_(torch.tensor([1.0, 0.4]))  # dorsal, ventral
        model.muscle_ipsi.fill_(1.0)
        model.muscle_contra.fill_(-1.0)
        model.muscle_contra[1, 0] = -0.5  # ventral head muscle is inhibited less
    out = model(make_obs(step=0))
    # o^D = o^V = sigmoid(0) = 0.5; B_D = 0.5, B_V = 0.2
    # M_D = g(0.5 - 1*0.2) = 0.3 ; M_V = g(0.2 - 0.5*0.5) = g(-0.05) = 0 -> torque 0.3
    torch.testing.assert_close(out, torch.tensor([0.3, 0, 0, 0, 0]), atol=1e-6, rtol=0)


def test_joint_normalisation_uses_config_limit_and_slice():
    """Joint angles are read from joint_slice and divided by joint_limit (Swimmer-v5 layout)."""
    model = ncap(n_joints=2, joint_slice=(1, 3), joint_limit=math.radians(100), time_index=8)
    obs = torch.tensor([5.0, math.radians(50), 0.0, 9, 9, 9, 9, 9, 30 / 1000])
    torch.testing.assert_close(model(obs), torch.tensor([-1.0, 0.5]))


def test_outputs_always_in_unit_range():
    torch.manual_seed(0)
    for cfg in (dict(), dict(weight_sharing=False, constant_init=False), dict(sign_constraints=False)):
        model = ncap(**cfg)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(5.0)
        obs = torch.randn(256, 24) * 3
        obs[:, -1] = torch.randint(0, 1000, (256,)) / 1000
        out = model(obs)
        assert out.shape == (256, J)
        assert out.abs().max() <= 1.0


# --- navigate: speed and turn units --------------------------------------------------------


def nav_obs(target, step):
    joints = np.zeros(J)
    vel = np.zeros(18)
    return torch.tensor(np.concatenate([joints, target, vel, [step / 1000]]), dtype=torch.float32)


def nav_ncap(task_control="hardcoded") -> NCAP:
    return ncap(task_control=task_control, target_slice=(5, 7), time_index=25)


def test_hardcoded_task_control_stops_near_target():
    model = nav_ncap()
    torch.testing.assert_close(model(nav_obs([0.0, 0.05], 0)), torch.zeros(J))
    torch.testing.assert_close(model(nav_obs([0.0, 0.05], 30)), torch.zeros(J))


def test_hardcoded_task_control_swims_when_far():
    model = nav_ncap()
    torch.testing.assert_close(model(nav_obs([0.0, -1.0], 0)), torch.tensor([1.0, 0, 0, 0, 0]))
    torch.testing.assert_close(model(nav_obs([0.0, -1.0], 30)), torch.tensor([-1.0, 0, 0, 0, 0]))


def test_hardcoded_turn_biases_the_head():
    model = nav_ncap()
    # target at -x: turn-dorsal unit on. Ventral phase: B_D = g(0 + 1) = 1 = B_V -> head torque 0.
    torch.testing.assert_close(model(nav_obs([-0.5, 0.0], 30)), torch.zeros(J))
    torch.testing.assert_close(model(nav_obs([-0.5, 0.0], 0)), torch.tensor([1.0, 0, 0, 0, 0]))
    # target at +x: turn-ventral unit on; the dorsal phase is cancelled instead.
    torch.testing.assert_close(model(nav_obs([0.5, 0.0], 0)), torch.zeros(J))
    torch.testing.assert_close(model(nav_obs([0.5, 0.0], 30)), torch.tensor([-1.0, 0, 0, 0, 0]))


def test_task_control_needs_a_target_and_a_valid_mode():
    with pytest.raises(ValueError, match="target"):
        ncap(task_control="hardcoded")
    with pytest.raises(ValueError, match="task_control"):
        ncap(task_control="telepathy", target_slice=(5, 7))


def test_build_actor_rejects_bad_configs_with_value_error():
    """The registry's contract: any bad config is a ValueError naming the kind (never a KeyError)."""
    good = NCAPConfig().to_dict()
    assert isinstance(build_actor("ncap", good), NCAP)
    with pytest.raises(ValueError, match="ncap"):
        build_actor("ncap", {**good, "nonsense": 1})
    with pytest.raises(ValueError, match="unknown policy kind"):
        build_actor("transformer", {})
    with pytest.raises(ValueError, match="mlp"):
        build_actor("mlp", good)
    # An MLP config given to the NCAP (e.g. a policy.json whose kind was changed) lacks joint_slice.
    with pytest.raises(ValueError, match="ncap"):
        build_actor("ncap", {"obs_dim": 24, "action_dim": 5, "hidden": [64, 64], "activation": "tanh"})


# --- parameters -----------------------------------------------------------------------------


def test_shared_parameter_count_is_four():
    model = ncap()
    assert count_parameters(model) == 4
    assert sorted(n for n, _ in model.named_parameters()) == sorted(WEIGHTS)
    for n_joints in (1, 2, 9, 14):
        assert count_parameters(ncap(n_joints=n_joints)) == 4


@pytest.mark.parametrize("n_joints", [2, 5, 9, 14])
def test_unshared_parameter_count_is_6j(n_joints):
    model = ncap(n_joints=n_joints, weight_sharing=False, joint_slice=(0, n_joints))
    assert count_parameters(model) == 6 * n_joints
    assert model.bneuron_osc.shape == (2,)
    assert model.bneuron_prop.shape == (2, n_joints - 1)
    assert model.muscle_ipsi.shape == (2, n_joints)
    assert model.muscle_contra.shape == (2, n_joints)


def test_unshared_j5_has_30_parameters():
    assert count_parameters(ncap(weight_sharing=False)) == 30


def test_task_control_parameter_counts():
    assert count_parameters(nav_ncap("hardcoded")) == 6
    learned = nav_ncap("learned")
    assert count_parameters(learned) == 6 + 2 * 3 + 3  # + nn.Linear(2, 3)
    assert count_parameters(ncap(learn_period=True)) == 5


def test_unshared_circuit_needs_two_joints():
    with pytest.raises(ValueError):
        ncap(n_joints=1, weight_sharing=False, joint_slice=(0, 1))


# --- sign constraints -----------------------------------------------------------------------


def _push_across_zero(model: NCAP, names=WEIGHTS, steps=50, lr=0.1):
    """Gradient steps that drive every raw weight to the wrong sign."""
    opt = torch.optim.SGD([getattr(model, n) for n in names], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum((model.signs[n] * getattr(model, n)).sum() for n in names)
        loss.backward()
        opt.step()


def test_sign_constraints_hold_after_gradient_steps():
    model = ncap()
    _push_across_zero(model)
    for name in WEIGHTS:
        raw = getattr(model, name).detach()
        assert (raw * model.signs[name] < 0).all(), f"{name} was not pushed across zero"
        eff = model.weight(name).detach()
        if name in EXCITATORY:
            assert (eff >= 0).all(), name
        else:
            assert (eff <= 0).all(), name
    # The circuit still behaves: the wrong-signed weights are silent, never inverted.
    obs = torch.stack([make_obs(np.random.default_rng(s).uniform(-LIMIT, LIMIT, J), step=s) for s in range(120)])
    out = model(obs)
    assert torch.isfinite(out).all() and out.abs().max() <= 1.0
    torch.testing.assert_close(out, torch.zeros_like(out))


def test_sign_constraints_keep_torque_direction_when_muscles_flip():
    """Push only the neuromuscular weights the wrong way: constrained -> silent, unconstrained -> inverted."""
    muscles = ("muscle_ipsi", "muscle_contra")
    constrained = ncap()
    unconstrained = ncap(sign_constraints=False)
    with torch.no_grad():  # the unconstrained circuit starts from the same +1/-1 weights
        for name in WEIGHTS:
            getattr(unconstrained, name).fill_(float(constrained.signs[name]))
    _push_across_zero(constrained, muscles, steps=40, lr=0.05)
    _push_across_zero(unconstrained, muscles, steps=40, lr=0.05)
    dorsal = make_obs(step=0)
    assert constrained(dorsal)[0].item() >= 0.0  # never the wrong way
    assert constrained(dorsal)[0].item() == 0.0
    assert unconstrained.weight("muscle_ipsi").item() < 0 < unconstrained.weight("muscle_contra").item()
    assert unconstrained(dorsal)[0].item() == pytest.approx(-1.0)  # inverted


def test_sign_constraints_with_task_weights():
    model = nav_ncap("learned")
    _push_across_zero(model, tuple(model.signs), steps=40)
    assert model.weight("bneuron_speed").item() <= 0.0
    assert model.weight("bneuron_turn").item() >= 0.0


def test_gradients_reach_all_shared_weights():
    # The smooth oscillator drives both head B-neurons at once, so cross-inhibition matters too.
    model = ncap(learn_period=True)
    with torch.no_grad():  # interior values, so no clamp is saturated
        for name, v in zip(WEIGHTS, (0.5, 0.5, 0.7, -0.3)):
            getattr(model, name).fill_(v)
    obs = torch.stack([make_obs(np.random.default_rng(s).uniform(-LIMIT, LIMIT, J), step=3 * s) for s in range(40)])
    model(obs).pow(2).sum().backward()
    for name in (*WEIGHTS, "log_period"):
        g = getattr(model, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


# --- initialisation -------------------------------------------------------------------------


def test_constant_init_values():
    for sharing in (True, False):
        model = ncap(weight_sharing=sharing)
        for name in WEIGHTS:
            expected = 1.0 if name in EXCITATORY else -1.0
            assert (getattr(model, name).detach() == expected).all(), (sharing, name)


def test_uniform_init_respects_signs_and_varies():
    model = ncap(weight_sharing=False, constant_init=False, n_joints=9, joint_slice=(0, 9), init_seed=3)
    values = []
    for name in WEIGHTS:
        w = getattr(model, name).detach()
        if name in EXCITATORY:
            assert ((w >= 0) & (w <= 1)).all(), name
        else:
            assert ((w <= 0) & (w >= -1)).all(), name
        values.append(w.abs().flatten())
    values = torch.cat(values)
    assert values.std() > 0.1 and len(values.unique()) > len(values) // 2


def test_unconstrained_constant_init_is_random_plus_minus_one():
    model = ncap(weight_sharing=False, sign_constraints=False, n_joints=14, joint_slice=(0, 14), init_seed=0)
    w = torch.cat([getattr(model, n).detach().flatten() for n in WEIGHTS])
    assert set(w.abs().tolist()) == {1.0}
    assert (w > 0).sum() > 10 and (w < 0).sum() > 10


def test_unconstrained_uniform_init_spans_both_signs():
    model = ncap(weight_sharing=False, sign_constraints=False, constant_init=False, n_joints=14,
                 joint_slice=(0, 14), init_seed=0)
    w = torch.cat([getattr(model, n).detach().flatten() for n in WEIGHTS])
    assert w.min() >= -1 and w.max() <= 1
    assert (w > 0).sum() > 10 and (w < 0).sum() > 10


def test_random_init_is_seeded():
    kw = dict(weight_sharing=False, constant_init=False)
    a, b, c = ncap(init_seed=1, **kw), ncap(init_seed=1, **kw), ncap(init_seed=2, **kw)
    for name in WEIGHTS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert any(not torch.equal(getattr(a, n), getattr(c, n)) for n in WEIGHTS)


def test_unshared_constant_init_equals_shared_circuit():
    shared, unshared = ncap(), ncap(weight_sharing=False)
    obs = torch.stack([make_obs(np.random.default_rng(s).uniform(-LIMIT, LIMIT, J), step=7 * s) for s in range(50)])
    torch.testing.assert_close(shared(obs), unshared(obs))


# --- transfer across body lengths -----------------------------------------------------------


def test_shared_weights_transfer_across_n_links():
    trained = ncap()
    for name, v in zip(WEIGHTS, (0.9, 1.3, 0.7, -0.4)):
        set_weight(trained, name, v)
    state = trained.state_dict()
    for n_joints in range(2, 15):
        n_links = n_joints + 1
        model = ncap(n_joints=n_joints, joint_slice=(0, n_joints), joint_limit=2 * math.pi / n_links)
        model.load_state_dict(state)
        q = np.zeros(n_joints)
        q[0] = 0.5 * 2 * math.pi / n_links
        out = model(make_obs(q, step=0, n_joints=n_joints))
        assert out.shape == (n_joints,)
        # head: g(0.7 * 0.9) = 0.63 ; joint 1: g(0.7 * g(1.3 * 0.5)) = 0.455
        assert out[0].item() == pytest.approx(0.63, abs=1e-6)
        assert out[1].item() == pytest.approx(0.455, abs=1e-6)
        assert torch.all(out[2:] == 0)


def test_unshared_weights_do_not_load_into_other_lengths():
    state = ncap(weight_sharing=False).state_dict()
    with pytest.raises(RuntimeError):
        ncap(weight_sharing=False, n_joints=7, joint_slice=(0, 7)).load_state_dict(state)


# --- learned period -------------------------------------------------------------------------


def test_learn_period_gives_gradient_to_log_period():
    model = ncap(learn_period=True)
    assert model.log_period.item() == pytest.approx(math.log(60))
    obs = torch.stack([make_obs(step=s) for s in range(0, 120, 7)])
    model(obs)[:, 0].sum().backward()
    g = model.log_period.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().item() > 0


def test_learn_period_oscillator_approximates_square_wave():
    model = ncap(learn_period=True)
    assert model(make_obs(step=15))[0].item() == pytest.approx(1.0, abs=1e-3)
    assert model(make_obs(step=45))[0].item() == pytest.approx(-1.0, abs=1e-3)
    assert model(make_obs(step=0))[0].item() == pytest.approx(0.0, abs=1e-6)
    # a larger learned period stretches the wave
    with torch.no_grad():
        model.log_period.fill_(math.log(120))
    assert model(make_obs(step=45))[0].item() == pytest.approx(1.0, abs=5e-3)
    assert model.period().item() == pytest.approx(120.0, rel=1e-5)


def test_learn_period_can_be_optimised():
    model = ncap(learn_period=True)
    opt = torch.optim.Adam([model.log_period], lr=0.05)
    obs = make_obs(step=40)  # ventral at T = 60, dorsal for T > 80
    for _ in range(60):
        opt.zero_grad()
        loss = -model(obs)[0]
        loss.backward()
        opt.step()
    assert model.period().item() > 80
    assert model(obs)[0].item() > 0.9


# --- batching -------------------------------------------------------------------------------


def test_batched_and_unbatched_inputs_agree():
    rng = np.random.default_rng(0)
    for cfg in (dict(), dict(weight_sharing=False, constant_init=False), dict(learn_period=True)):
        model = ncap(**cfg)
        obs = torch.stack(
            [make_obs(rng.uniform(-1.5 * LIMIT, 1.5 * LIMIT, J), step=int(rng.integers(0, 1000))) for _ in range(12)]
        )
        batched = model(obs)
        single = torch.stack([model(o) for o in obs])
        torch.testing.assert_close(batched, single)
        seq = model(obs.reshape(3, 4, -1))
        torch.testing.assert_close(seq.reshape(12, J), batched)
        assert model(obs[0]).shape == (J,)
        assert model(obs[:1]).shape == (1, J)


def test_batched_task_control_agrees():
    model = nav_ncap("learned")
    rng = np.random.default_rng(1)
    obs = torch.stack([nav_obs(rng.uniform(-1, 1, 2), int(rng.integers(0, 1000))) for _ in range(10)])
    torch.testing.assert_close(model(obs), torch.stack([model(o) for o in obs]))


def test_float64_input():
    model = ncap()
    out = model(make_obs(step=0).double())
    assert out.dtype == torch.float64 or out.dtype == torch.float32
    torch.testing.assert_close(out.float(), torch.tensor([1.0, 0, 0, 0, 0]))


def test_config_round_trip():
    cfg = NCAPConfig(n_joints=9, weight_sharing=False, joint_slice=(0, 9), target_slice=(9, 11),
                     task_control="learned", time_index=39)
    d = cfg.to_dict()
    assert d["joint_slice"] == [0, 9] and d["target_slice"] == [9, 11]
    assert NCAPConfig.from_dict(d) == cfg
