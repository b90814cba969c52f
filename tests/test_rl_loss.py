"""Policy/value losses, TIS weights, KL estimators and aggregation against hand-computed values."""
import pytest
import torch

from litere.rl.advantage import group_advantages
from litere.rl.loss import (AGGREGATIONS, Normalizer, aggregate, effective_sample_size, kl_penalty, policy_loss,
                            tis_weights, value_loss)


def _t(values, dtype=torch.float64, **kwargs):
    return torch.tensor(values, dtype=dtype, **kwargs)


def _seq(values):
    return torch.tensor(values, dtype=torch.long)


# One token per clip branch (clip_low 0.2, clip_high 0.4, dual clip 3; old logprobs 0 so ratio = exp(logprobs)):
#   A  ratio  -A*ratio  -A*clip(ratio)  picked                   grad d/dlogprob
#   2  0.5    -1.0      -1.6            unclipped -1.0           -1.0
#   2  1.2    -2.4      -2.4            inside the band -2.4     -2.4
#   2  2.0    -4.0      -2.8            clip high -2.8            0
#  -1  0.5     0.5       0.8            clip low 0.8              0
#  -1  1.2     1.2       1.2            inside the band 1.2       1.2
#  -1  2.0     2.0       1.4            unclipped 2.0, below the dual bound 3    2.0
#  -1  5.0     5.0       1.4            unclipped 5.0, dual clip -> 3.0          0 (5.0 without the dual clip)
#   0  2.0     0         0              0                         0
RATIOS = [0.5, 1.2, 2.0, 0.5, 1.2, 2.0, 5.0, 2.0]
ADVANTAGES = [2.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0, 0.0]


def _branch_loss(**kwargs):
    logprobs = _t(RATIOS).log().requires_grad_()
    loss, metrics = policy_loss(logprobs, torch.zeros(8, dtype=torch.float64), _t(ADVANTAGES),
                                torch.zeros(8, dtype=torch.long), mode="token-mean",
                                norm=Normalizer(tokens=8, sequences=1), **kwargs)
    loss.backward()
    return loss, metrics, logprobs.grad


def test_policy_loss_clip_branches():
    loss, metrics, grad = _branch_loss()
    # Sum of the picked values: -1.0 - 2.4 - 2.8 + 0.8 + 1.2 + 2.0 + 3.0 + 0 = 0.8, over 8 tokens.
    assert loss.item() == pytest.approx(0.1, abs=1e-12)
    torch.testing.assert_close(grad, _t([-1.0, -2.4, 0.0, 0.0, 1.2, 2.0, 0.0, 0.0]) / 8)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {"tokens": 8, "ratio_sum": 14.4, "clip_low_tokens": 1, "clip_high_tokens": 1, "dual_clip_tokens": 1,
         "pg_loss": 0.1})
    assert all(v.dtype == torch.float64 and not v.requires_grad for v in metrics.values())


@pytest.mark.parametrize("dual_clip", [None, 1.0, 0.5])
def test_policy_loss_without_dual_clip(dual_clip):
    loss, metrics, grad = _branch_loss(dual_clip=dual_clip)
    # The ratio-5 token keeps 5.0 instead of 3.0: (0.8 - 3.0 + 5.0) / 8.
    assert loss.item() == pytest.approx(0.35, abs=1e-12)
    torch.testing.assert_close(grad, _t([-1.0, -2.4, 0.0, 0.0, 1.2, 2.0, 5.0, 0.0]) / 8)
    assert metrics["dual_clip_tokens"].item() == 0 and metrics["clip_low_tokens"].item() == 1


def test_policy_loss_with_other_clip_bounds_and_weights():
    # clip_low 0.6 puts ratio 0.5 inside the band for A = -1 (0.5 vs 0.4: unclipped); clip_high 1.5 lets ratio 2.0
    # through for A = 2 (-4.0); weights scale each token: token 2 weighs 0.5, token 6 (dual clip, 3.0) weighs 2.
    weights = _t([1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 2.0, 1.0])
    loss, metrics, grad = _branch_loss(clip_low=0.6, clip_high=1.5, weights=weights)
    # -1.0 - 2.4 - 4.0 * 0.5 + 0.5 + 1.2 + 2.0 + 3.0 * 2 + 0 = 4.3
    assert loss.item() == pytest.approx(4.3 / 8, abs=1e-12)
    torch.testing.assert_close(grad, _t([-1.0, -2.4, -2.0, 0.5, 1.2, 2.0, 0.0, 0.0]) / 8)
    assert metrics["clip_low_tokens"].item() == 0 and metrics["clip_high_tokens"].item() == 0


# Uneven sequences: [1, 2, 3], [4], [5, 6].
VALUES = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
SEQ = [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("mode, expected", [
    ("token-mean", 21 / 6),
    ("seq-mean-token-mean", (2.0 + 4.0 + 5.5) / 3),
    ("seq-mean-token-sum", (6.0 + 4.0 + 11.0) / 3),
    ("seq-mean-token-sum-norm", (6.0 / 4 + 4.0 / 4 + 11.0 / 4) / 3),
])
def test_aggregation_modes(mode, expected):
    norm = Normalizer(tokens=6, sequences=3, max_tokens=4)
    assert aggregate(_t(VALUES), _seq(SEQ), mode, norm).item() == pytest.approx(expected, abs=1e-12)
    # Twice the global counts (another micro-batch elsewhere holds as much again) halves this share.
    norm2 = Normalizer(tokens=12, sequences=6, max_tokens=4)
    assert aggregate(_t(VALUES), _seq(SEQ), mode, norm2).item() == pytest.approx(expected / 2, abs=1e-12)
    # Token order within the micro-batch does not matter.
    perm = [5, 0, 3, 2, 4, 1]
    permuted = aggregate(_t(VALUES)[perm], _seq(SEQ)[perm], mode, norm)
    assert permuted.item() == pytest.approx(expected, abs=1e-12)


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    seq = _seq([0] * 5 + [1] * 2 + [2] * 7 + [3] * 1 + [4] * 4)
    n = seq.numel()
    logprobs = -torch.rand(n, generator=gen, dtype=torch.float64) * 2
    old = logprobs + torch.randn(n, generator=gen, dtype=torch.float64) * 0.3
    adv_per_seq = _t([1.2, -0.7, 0.4, -1.5, 0.9])
    weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    return logprobs, old, adv_per_seq[seq], weights, seq


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_micro_batches_sum_to_the_whole_batch(mode):
    logprobs, old, adv, weights, seq = _batch()
    norm = Normalizer(tokens=seq.numel(), sequences=5, max_tokens=8)
    kwargs = dict(mode=mode, norm=norm)

    whole = logprobs.clone().requires_grad_()
    loss, _ = policy_loss(whole, old, adv, seq, weights=weights, **kwargs)
    loss.backward()

    split = logprobs.clone().requires_grad_()
    total = 0.0
    # Micro-batch 1 holds sequences 0, 1 (7 tokens); micro-batch 2 holds sequences 2, 3, 4, re-indexed from 0.
    for sl, offset in ((slice(0, 7), 0), (slice(7, None), 2)):
        part, _ = policy_loss(split[sl], old[sl], adv[sl], seq[sl] - offset, weights=weights[sl], **kwargs)
        total = total + part
    total.backward()
    assert total.item() == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(split.grad, whole.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_on_policy_gradient_is_reinforce(mode):
    logprobs, _, adv, weights, seq = _batch(1)
    norm = Normalizer(tokens=seq.numel(), sequences=5, max_tokens=8)
    for w in (None, weights):
        lp = logprobs.clone().requires_grad_()
        # The loss must itself treat old logprobs as constants, even when handed a tensor with a gradient.
        old = logprobs.clone().requires_grad_()
        loss, metrics = policy_loss(lp, old, adv, seq, mode=mode, norm=norm, weights=w)
        loss.backward()
        assert old.grad is None
        assert metrics["ratio_sum"].item() == pytest.approx(seq.numel(), abs=1e-12)
        assert metrics["clip_low_tokens"].item() == metrics["clip_high_tokens"].item() == 0

        ref = logprobs.clone().requires_grad_()
        objective = -adv * ref * (1.0 if w is None else w)
        aggregate(objective, seq, mode, norm).backward()
        torch.testing.assert_close(lp.grad, ref.grad, atol=1e-6, rtol=0)
        assert lp.grad.abs().sum() > 0


def test_zero_advantage_groups_give_zero_loss_and_gradient():
    rewards = _t([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    adv_per_seq = group_advantages(rewards, _seq([0, 0, 0, 1, 1, 1]))
    seq = _seq([0, 0, 1, 2, 2, 2, 3, 4, 4, 5])
    gen = torch.Generator().manual_seed(2)
    logprobs = (-torch.rand(10, generator=gen, dtype=torch.float64)).requires_grad_()
    old = logprobs.detach() + 0.5 * torch.randn(10, generator=gen, dtype=torch.float64)
    for mode in AGGREGATIONS:
        loss, _ = policy_loss(logprobs, old, adv_per_seq[seq], seq, mode=mode,
                              norm=Normalizer(tokens=10, sequences=6, max_tokens=4))
        loss.backward()
        assert loss.item() == 0.0
        assert logprobs.grad.eq(0.0).all()


def test_tis_truncation_and_veto():
    # log(trainer / rollout) per token: seq 0: [0, log 1.5, log 3]; seq 1: [log 0.5, log 1e-5] (vetoed: below
    # log 1e-4); seq 2: [log 0.9].
    ratios = _t([1.0, 1.5, 3.0, 0.5, 1e-5, 0.9])
    rollout = -torch.arange(1, 7, dtype=torch.float64)
    trainer = (rollout + ratios.log()).requires_grad_()
    seq = _seq([0, 0, 0, 1, 1, 2])

    w, m = tis_weights(trainer, rollout, seq)
    assert not w.requires_grad
    torch.testing.assert_close(w, _t([1.0, 1.5, 2.0, 0.0, 0.0, 0.9]))
    assert {k: v.item() for k, v in m.items()} == pytest.approx(
        {"tis_weight_sum": 5.4, "tis_weight_sq_sum": 8.06, "tis_tokens": 6, "veto_sequences": 1, "sequences": 3,
         "abs_logprob_diff_sum": 13.815510557964275, "abs_logprob_diff_max": 11.512925464970229})
    assert effective_sample_size(5.4, 8.06, 6) == pytest.approx(5.4 ** 2 / (6 * 8.06))
    assert effective_sample_size(0.0, 0.0, 6) == 0.0

    w, m = tis_weights(trainer, rollout, seq, cap=2.0, veto=0.0)
    torch.testing.assert_close(w, _t([1.0, 1.5, 2.0, 0.5, 1e-5, 0.9]))
    assert m["veto_sequences"].item() == 0
    w, _ = tis_weights(trainer, rollout, seq, cap=10.0, veto=None)
    torch.testing.assert_close(w, ratios)
    # No truncation feature: weights 1, the veto still zeroes sequence 1.
    for cap in (None, 0.0, -1.0):
        w, m = tis_weights(trainer, rollout, seq, cap=cap)
        torch.testing.assert_close(w, _t([1.0, 1.0, 1.0, 0.0, 0.0, 1.0]))
        assert m["tis_weight_sum"].item() == 4.0
    w, _ = tis_weights(trainer, rollout, seq, cap=None, veto=0.0)
    assert w.eq(1.0).all()
    # A veto threshold of 0.95 also catches the 0.9-ratio token and so zeroes sequence 2.
    w, m = tis_weights(trainer, rollout, seq, veto=0.95)
    torch.testing.assert_close(w, _t([1.0, 1.5, 2.0, 0.0, 0.0, 0.0]))
    assert m["veto_sequences"].item() == 2


def test_kl_estimators():
    logprobs, ref = _t([-1.0, -2.0, -0.5]), _t([-1.0, -1.0, -1.5])
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), _t([0.0, -1.0, 1.0]))
    # d = ref - logprobs = [0, 1, -1]: exp(d) - d - 1 = [0, e - 2, 1/e].
    k3 = kl_penalty(logprobs, ref, "k3")
    torch.testing.assert_close(k3, _t([0.0, 0.7182818284590451, 0.36787944117144233]))
    gen = torch.Generator().manual_seed(3)
    assert (kl_penalty(torch.randn(100, generator=gen), torch.randn(100, generator=gen), "k3") >= 0).all()


def test_value_loss_clipped_and_unclipped():
    # clip 0.2:  v    old  R    v-old  clipped v  (v-R)^2  (clipped v-R)^2  picked        grad of 0.5*picked
    #            1.0  0.9  2.0  0.1    1.0        1.0      1.0              1.0 (equal)   v-R = -1
    #            1.5  1.0  2.0  0.5    1.2        0.25     0.64             0.64 (clip)   0
    #            1.5  1.0  0.0  0.5    1.2        2.25     1.44             2.25          1.5
    #            0.0  0.5  1.0  -0.5   0.3        1.0      0.49             1.0           -1
    values = _t([1.0, 1.5, 1.5, 0.0], requires_grad=True)
    old, returns, seq = _t([0.9, 1.0, 1.0, 0.5]), _t([2.0, 2.0, 0.0, 1.0]), _seq([0, 0, 1, 1])
    norm = Normalizer(tokens=4, sequences=2)
    loss, m = value_loss(values, old, returns, seq, mode="token-mean", norm=norm)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.64 + 2.25 + 1.0) / 4, abs=1e-12)
    torch.testing.assert_close(values.grad, _t([-1.0, 0.0, 1.5, -1.0]) / 4)
    assert m["vf_clip_tokens"].item() == 1 and m["value_mean_sum"].item() == pytest.approx(4.0)
    assert m["return_sum"].item() == pytest.approx(5.0) and m["vf_loss"].item() == pytest.approx(loss.item())

    for clip in (None, 0.0):
        values.grad = None
        loss, m = value_loss(values, old, returns, seq, mode="token-mean", norm=norm, clip=clip)
        loss.backward()
        assert loss.item() == pytest.approx(0.5 * (1.0 + 0.25 + 2.25 + 1.0) / 4, abs=1e-12)
        torch.testing.assert_close(values.grad, _t([-1.0, -0.5, 1.5, -1.0]) / 4)
        assert m["vf_clip_tokens"].item() == 0
    # seq-mean-token-mean: sequence means 0.5 * [(1.0 + 0.64) / 2, (2.25 + 1.0) / 2] over 2 sequences.
    loss, _ = value_loss(values, old, returns, seq, mode="seq-mean-token-mean", norm=norm)
    assert loss.item() == pytest.approx(0.5 * (0.82 + 1.625) / 2, abs=1e-12)


def test_bad_arguments_name_the_argument():
    x, seq = _t([0.1, 0.2]), _seq([0, 0])
    norm = Normalizer(tokens=2, sequences=1)
    with pytest.raises(ValueError, match="mode"):
        aggregate(x, seq, "sum", norm)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(x, seq, "seq-mean-token-sum-norm", norm)
    with pytest.raises(ValueError, match="norm.tokens"):
        aggregate(x, seq, "token-mean", Normalizer(tokens=0, sequences=1))
    with pytest.raises(ValueError, match="norm.sequences"):
        aggregate(x, seq, "seq-mean-token-mean", Normalizer(tokens=2, sequences=0))
    with pytest.raises(ValueError, match="seq_index"):
        aggregate(x, _seq([0, 0, 0]), "token-mean", norm)
    with pytest.raises(ValueError, match="seq_index"):
        aggregate(x, _t([0.0, 0.0]), "token-mean", norm)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(x, x, _t([1.0]), seq, mode="token-mean", norm=norm)
    with pytest.raises(ValueError, match="weights"):
        policy_loss(x, x, x, seq, mode="token-mean", norm=norm, weights=_t([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="old_logprobs"):
        policy_loss(x, x[None], x, seq, mode="token-mean", norm=norm)
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(x, x, x, seq, mode="token-mean", norm=norm, clip_low=1.0)
    with pytest.raises(ValueError, match="mode"):
        policy_loss(x, x, x, seq, mode="seq-mean", norm=norm)
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(x, x, "k2")
    with pytest.raises(ValueError, match="ref_logprobs"):
        kl_penalty(x, _t([0.0]), "k1")
    with pytest.raises(ValueError, match="rollout_logprobs"):
        tis_weights(x, _t([0.0]), seq)
    with pytest.raises(ValueError, match="veto"):
        tis_weights(x, x, seq, veto=-1.0)
    with pytest.raises(ValueError, match="returns"):
        value_loss(x, x, _t([0.0]), seq, mode="token-mean", norm=norm)
    with pytest.raises(ValueError, match="clip"):
        value_loss(x, x, x, seq, mode="token-mean", norm=norm, clip=-0.1)
    with pytest.raises(ValueError, match="max_tokens"):
        value_loss(x, x, x, seq, mode="seq-mean-token-sum-norm", norm=norm)
