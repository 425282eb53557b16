import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learning import valuation as V

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_per_sample_gradients_match_single_sample_backward():
    torch.manual_seed(0)
    model = V.valuation_mlp((1, 8, 8), 10, hidden=16)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    losses, grads = V.per_sample_gradients(model, x, y)
    for i in range(6):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        loss.backward()
        assert torch.allclose(losses[i], loss.detach(), atol=1e-6)
        for name, p in model.named_parameters():
            assert torch.allclose(grads[name][i], p.grad, atol=1e-6), name
    norms = V.flat_norms(grads)
    assert torch.allclose(norms[0], torch.sqrt(sum(g[0].pow(2).sum() for g in grads.values())))


def test_input_gradients_match_autograd():
    torch.manual_seed(1)
    model = V.valuation_mlp((64,), 3, hidden=8)
    x, y = torch.rand(4, 64), torch.tensor([0, 2, 1, 2])
    got = V.input_gradients(model, x, y)
    for i in range(4):
        xi = x[i:i + 1].clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi)[0, y[i]], xi)
        assert torch.allclose(got[i], g[0], atol=1e-6)


def test_vog_known_values_and_class_normalisation():
    # two checkpoints, 4 samples of 2 pixels: per-pixel variance of [a, b] is (a-b)^2/4
    g = torch.zeros(2, 4, 2)
    g[1, :, 0] = torch.tensor([2.0, 4.0, 2.0, 6.0])  # variances 1, 4, 1, 9; pixel mean halves
    labels = torch.tensor([0, 0, 1, 1])
    v = V.vog_scores(g, labels)
    assert v == pytest.approx([-1.0, 1.0, -1.0, 1.0])
    with pytest.raises(V.ValuationError):
        V.vog_scores(g[:1], labels)


def test_precision_at_k():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.2])
    positives = np.array([True, False, False, True, False])
    assert V.precision_at_k(scores, positives, 2) == 0.5
    assert V.precision_at_k(scores, positives, 3) == pytest.approx(2 / 3)
    with pytest.raises(V.ValuationError):
        V.precision_at_k(scores, positives, 0)


def test_dp_sgd_reports_epsilon_and_learns():
    data = V.corrupt_digits()
    s = data.split
    torch.manual_seed(0)
    res = V.train(V.valuation_mlp(s.input_shape, 10), s.x_train, s.y_train,
                  V.TrainConfig(epochs=2, epsilon=4.0), s.x_test, s.y_test)
    assert res.epsilon is not None and 3.0 < res.epsilon <= 4.0 + 1e-6
    assert res.noise_multiplier > 0.5 and res.steps == 2 * 21
    assert set(res.scores) == set(V.SCORES) and all(len(v) == len(s.y_train)
                                                    for v in res.scores.values())
    assert res.test_accuracy > 0.3  # well above chance (0.1) even after 2 private epochs
    plain = V.train(V.valuation_mlp(s.input_shape, 10), s.x_train, s.y_train,
                    V.TrainConfig(epochs=2), score=False)
    assert plain.epsilon is None and plain.noise_multiplier == 0.0
    with pytest.raises(V.ValuationError, match="epsilon"):
        V.train(V.valuation_mlp(s.input_shape, 10), s.x_train, s.y_train,
                V.TrainConfig(epsilon=-1.0))


def test_loss_score_finds_flipped_labels_without_dp():
    data = V.corrupt_digits()
    s = data.split
    torch.manual_seed(0)
    res = V.train(V.valuation_mlp(s.input_shape, 10), s.x_train, s.y_train,
                  V.TrainConfig(epochs=6), s.x_test, s.y_test)
    k = int(data.flipped.sum())
    assert V.precision_at_k(res.scores["loss"], data.flipped, k) > 0.5  # random: 0.05


def test_corruption_is_as_described():
    data = V.corrupt_digits(fraction=0.05, seed=3)
    n = len(data.split.y_train)
    clean = V.load_digit_images(seed=3)
    assert data.flipped.sum() == data.atypical.sum() == round(0.05 * n)
    assert not (data.flipped & data.atypical).any()
    assert (data.split.y_train[data.flipped] != clean.y_train[data.flipped]).all()
    assert torch.equal(data.split.y_train[~data.flipped], clean.y_train[~data.flipped])
    assert not torch.equal(data.split.x_train[data.atypical], clean.x_train[data.atypical])
    assert torch.equal(data.split.x_train[~data.atypical], clean.x_train[~data.atypical])


def test_client_release_accounts_epsilon_and_is_unbiased_enough():
    scores = np.full(100_000, 0.5)
    scores[:30_000] = 3.0
    rel = V.release_client_value(scores, cutoff=math.log(10), bound=5.0, epsilon=1.0)
    assert 0.9 <= rel.epsilon <= 1.0 + 1e-6 and rel.sigma > 0
    assert rel.mean_score == pytest.approx(1.25, abs=0.01)
    assert rel.count_above == pytest.approx(30_000, abs=10 * rel.sigma)
    assert rel.count == pytest.approx(100_000, abs=10 * rel.sigma)
    loose = V.release_client_value(scores, math.log(10), 5.0, epsilon=8.0)
    assert loose.sigma < rel.sigma
    with pytest.raises(V.ValuationError):
        V.release_client_value(scores, 1.0, 5.0, epsilon=0.0)
