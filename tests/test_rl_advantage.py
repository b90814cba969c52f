"""Group-relative advantages (GRPO, Dr. GRPO), zero-variance groups and masked GAE, against hand-computed values."""
import pytest
import torch

from litere.rl.advantage import gae, group_advantages, zero_variance


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_grpo_uses_the_unbiased_std():
    # mean 0.25, centred [0.75, -0.25, -0.25, -0.25], unbiased variance 0.75 / 3 = 0.25, std 0.5.
    rewards, groups = _t([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(group_advantages(rewards, groups, eps=0.0), _t([1.5, -0.5, -0.5, -0.5]))
    torch.testing.assert_close(group_advantages(rewards, groups),
                               _t([0.75, -0.25, -0.25, -0.25]) / 0.500001)


def test_interleaved_groups_of_different_sizes():
    # group 7 at 0, 2, 6: r = [1, 0, 0], std sqrt(1/3); group 3: all 0.1; group 9: alone; group 5 at 7, 8: r = [0, 1].
    groups = torch.tensor([7, 3, 7, 3, 3, 9, 7, 5, 5])
    rewards = _t([1.0, 0.1, 0.0, 0.1, 0.1, 1.0, 0.0, 0.0, 1.0])
    expected = _t([1.1547005383792515, 0.0, -0.5773502691896257, 0.0, 0.0, 0.0, -0.5773502691896257,
                   -0.7071067811865475, 0.7071067811865475])
    torch.testing.assert_close(group_advantages(rewards, groups, eps=0.0), expected)
    mean = group_advantages(rewards, groups, estimator="mean")
    torch.testing.assert_close(mean, _t([2 / 3, 0.0, -1 / 3, 0.0, 0.0, 0.0, -1 / 3, -0.5, 0.5]))
    # 0.1 + 0.1 + 0.1 is not 0.3 in binary; the all-equal group must still be exactly 0, not a rounding residue.
    for adv in (group_advantages(rewards, groups), mean):
        assert adv[[1, 3, 4, 5]].eq(0.0).all()
    assert zero_variance(rewards, groups).tolist() == [False, True, False, True, True, True, False, False, False]


def test_all_equal_groups_and_singletons_are_zero():
    for rewards in ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.7, 0.7, 0.7]):
        r = _t(rewards, torch.float32)
        adv = group_advantages(r, torch.tensor([4, 4, 4]))
        assert adv.dtype == torch.float32 and adv.eq(0.0).all()
    singles = group_advantages(_t([0.3, 1.0, 0.0]), torch.tensor([0, 1, 2]))
    assert singles.eq(0.0).all()
    assert zero_variance(_t([0.3, 1.0]), torch.tensor([0, 1])).all()


def test_advantage_arguments_are_checked():
    rewards = _t([1.0, 0.0])
    with pytest.raises(ValueError, match="estimator"):
        group_advantages(rewards, torch.tensor([0, 0]), estimator="rloo")
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(rewards, torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="group_ids"):
        zero_variance(rewards, _t([0.0, 0.0]))
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(rewards[None], torch.tensor([[0, 0]]))


def test_gae_skips_forced_tokens():
    # Tokens 2, 3 (a tool response) and 6 (a trailing forced token) are skipped; their values (9) must not be used.
    # Sampled values v = [0.5, 0.6, 0.7, 0.8], reward 1 at the last sampled token, gamma 0.9, gamma * lam = 0.45:
    #   t=3: delta = 1 - 0.8 = 0.2;                 A = 0.2
    #   t=2: delta = 0.9 * 0.8 - 0.7 = 0.02;        A = 0.02 + 0.45 * 0.2 = 0.11
    #   t=1: delta = 0.9 * 0.7 - 0.6 = 0.03;        A = 0.03 + 0.45 * 0.11 = 0.0795
    #   t=0: delta = 0.9 * 0.6 - 0.5 = 0.04;        A = 0.04 + 0.45 * 0.0795 = 0.075775
    values = _t([0.5, 0.6, 9.0, 9.0, 0.7, 0.8, 9.0])
    rewards = _t([0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    mask = torch.tensor([1, 1, 0, 0, 1, 1, 0])
    adv, ret = gae(values, rewards, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, _t([0.075775, 0.0795, 0.0, 0.0, 0.11, 0.2, 0.0]))
    torch.testing.assert_close(ret, _t([0.575775, 0.6795, 0.0, 0.0, 0.81, 1.0, 0.0]))


def test_gae_undiscounted_is_reward_minus_value():
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(50, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(50, generator=gen) < 0.7
    last = int(mask.nonzero()[-1])
    rewards = torch.zeros(50, dtype=torch.float64)
    rewards[last] = 1.0
    adv, ret = gae(values, rewards, mask, gamma=1.0, lam=1.0)
    assert not adv.requires_grad and not ret.requires_grad
    expected = torch.where(mask, 1.0 - values.detach(), torch.zeros(()).double())
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(mask, 1.0, 0.0).double())


def test_gae_arguments_are_checked():
    values = _t([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="mask"):
        gae(values, torch.zeros(3).double(), torch.ones(2), 1.0, 1.0)
    with pytest.raises(ValueError, match="rewards"):
        gae(values, _t([0.0, 1.0, 0.0]), torch.tensor([1, 0, 1]), 1.0, 1.0)
