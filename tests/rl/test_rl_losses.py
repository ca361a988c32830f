"""Each loss against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from selftrain.training import losses


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_matches_hand_computation_with_padding():
    # γ = λ = 0.5. Row 0, all real: A2 = 1 − .5 = .5; δ1 = .25 − .5 = −.25, A1 = −.25 + .25·.5 = −.125;
    # δ0 = −.25, A0 = −.25 + .25·(−.125) = −.28125. Row 1, last token padding (its 9 and 7 ignored):
    # A1 = 1 − .5 = .5 (no next value), A0 = −.25 + .25·.5 = −.125.
    rewards, values = t([0, 0, 1], [0, 1, 9]), t([.5, .5, .5], [.5, .5, 7])
    mask = t([1, 1, 1], [1, 1, 0])
    adv, ret = losses.gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert torch.allclose(adv, t([-0.28125, -0.125, 0.5], [-0.125, 0.5, 0]))
    assert torch.allclose(ret, t([0.21875, 0.375, 1.0], [0.375, 1.0, 0]))


def test_gae_single_terminal_reward_with_spec_defaults():
    # Values 0: A_t = (γλ)^(T−1−t) · r_T.
    adv, _ = losses.gae(t([0, 0, 2]), t([0, 0, 0]), t([1, 1, 1]))
    g = 0.99 * 0.95
    assert torch.allclose(adv, t([2 * g * g, 2 * g, 2]))


def test_policy_loss_clips_and_reports_fraction():
    # ratios 1.5 and 0.5, advantages +1: token 0 −1.5 vs −1.2 → −1.2 (clipped);
    # token 1 −0.5 vs −0.8 → −0.5 (not clipped); token 2 is padding.
    logp = torch.log(t([1.5, 0.5, 3.0]))
    loss, frac = losses.policy_loss(logp, torch.zeros(1, 3), t([1, 1, 1]), t([1, 1, 0]))
    assert loss.item() == pytest.approx((-1.2 - 0.5) / 2)
    assert frac.item() == pytest.approx(0.5)
    # A = −1, ratio 0.5: 0.5 vs 0.8 → 0.8 (the pessimistic, clipped term).
    loss, frac = losses.policy_loss(torch.log(t([0.5])), torch.zeros(1, 1), t([-1]), t([1]))
    assert loss.item() == pytest.approx(0.8) and frac.item() == 1.0


def test_policy_loss_gradient_flows_only_through_unclipped_tokens():
    logp = torch.log(t([1.5, 1.0])).requires_grad_()
    loss, _ = losses.policy_loss(logp, torch.zeros(1, 2), t([1, 1]), t([1, 1]))
    loss.backward()
    # d/dlogp of −A·ρ/2 = −ρ/2 on the unclipped token, 0 on the clipped one.
    assert torch.allclose(logp.grad, t([0.0, -0.5]))


def test_value_loss_takes_the_larger_of_clipped_and_unclipped():
    # V = 1, V_old = 0, R = .5, c = .2: (1 − .5)² = .25 vs (.2 − .5)² = .09 → ½·.25.
    loss, frac = losses.value_loss(t([1.0]), t([0.0]), t([0.5]), t([1]))
    assert loss.item() == pytest.approx(0.125) and frac.item() == 0.0
    # V = 1, V_old = 0, R = 2: (1 − 2)² = 1 vs (.2 − 2)² = 3.24 → ½·3.24, clipped.
    loss, frac = losses.value_loss(t([1.0]), t([0.0]), t([2.0]), t([1]))
    assert loss.item() == pytest.approx(1.62) and frac.item() == 1.0


def test_kl_estimators():
    # π = .5, π_ref = .25: k1 = log 2; k3 = (.5 − 1) + log 2.
    logp, ref = torch.log(t([0.5])), torch.log(t([0.25]))
    assert losses.kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert losses.kl_penalty(logp, ref, "k3").item() == pytest.approx(math.log(2) - 0.5, abs=1e-6)
    assert losses.kl_penalty(ref, logp, "k3").item() >= 0  # k3 is never negative
    with pytest.raises(ValueError):
        losses.kl_penalty(logp, ref, "k2")


def test_entropy_from_logits():
    assert losses.entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    # softmax([0, ln 3]) = [.25, .75]
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert losses.entropy_from_logits(torch.tensor([0.0, math.log(3)])).item() == pytest.approx(h, abs=1e-6)


def test_token_logprobs():
    logits = torch.tensor([[[0.0, math.log(3)]]])
    assert losses.token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))


def test_whiten_ignores_padding():
    # mean 2, population variance 2/3 over the three real values.
    out = losses.whiten(t([1, 2, 3, 100]), t([1, 1, 1, 0]))
    s = math.sqrt(1.5)
    assert torch.allclose(out, t([-s, 0, s, 0]), atol=1e-5)
    kept = losses.whiten(t([1, 2, 3]), t([1, 1, 1]), shift_mean=False)
    assert torch.allclose(kept, t([2 - s, 2, 2 + s]), atol=1e-5)


def test_adaptive_kl_controller():
    # KL 12 vs target 6: error clipped to .2; β = .1 · (1 + .2 · 100/10000).
    c = losses.AdaptiveKLController(value=0.1, target=6.0, horizon=10_000)
    assert c.update(12.0, 100) == pytest.approx(0.1002)
    # KL 5.4: error −.1; β = .1002 · (1 − .1 · .01).
    assert c.update(5.4, 100) == pytest.approx(0.1002 * 0.999)


def test_bradley_terry_loss():
    # −log σ(1) = log(1 + e^−1)
    loss = losses.bradley_terry_loss(t(1.0), t(0.0))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1)))
    assert losses.pairwise_accuracy(t(1.0, 0.0), t(0.0, 0.0)) == 0.5


def test_dpo_loss():
    # β = .1: chosen .1·(−1 + 2) = .1, rejected .1·(−3 + 2) = −.1, z = .2 → log(1 + e^−.2).
    loss, chosen, rejected = losses.dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)
