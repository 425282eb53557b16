import math

import numpy as np
import pytest
import torch

from learning import attacks as A
from learning.datasets import load_digit_images
from learning.precode import insert_bottleneck, mlp

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digit_images()


def _victim(model, split, idx):
    x = split.x_test[idx]
    y = split.y_test[idx]
    grads = [A.shared_gradients(model, x[i:i + 1], y[i:i + 1]) for i in range(len(idx))]
    return x[:, None], y, A.stack_gradients(grads)


def test_inverting_gradients_reconstructs_unprotected_digit(digits):
    torch.manual_seed(0)
    model = mlp((1, 8, 8), 10, hidden=64)
    x, y, target = _victim(model, digits, [3])
    labels = A.recover_labels(model, target, 1)
    assert labels[0, 0] == y[0]
    result = A.inverting_gradients(model, target, (1, 8, 8),
                                   config=A.IGConfig(iterations=150, restarts=1))
    s = A.score_reconstructions(x, result.reconstruction).summary()
    assert s["ssim"] > 0.98 and s["mse"] < 1e-3 and s["success"] == 1.0


def test_dlg_reconstructs_unprotected_digit(digits):
    torch.manual_seed(1)
    model = mlp((1, 8, 8), 10, hidden=64)
    x, _, target = _victim(model, digits, [5])
    result = A.dlg(model, target, (1, 8, 8), config=A.DLGConfig(iterations=8))
    assert A.score_reconstructions(x, result.reconstruction).summary()["ssim"] > 0.95


def test_precode_defeats_ig_but_not_the_adaptive_attack(digits):
    torch.manual_seed(2)
    model = mlp((1, 8, 8), 10, hidden=64)
    insert_bottleneck(model, "head", k=32)
    x, _, target = _victim(model, digits, [0, 1])
    cfg = A.IGConfig(iterations=100, restarts=1)
    plain = A.inverting_gradients(model, target, (1, 8, 8), config=cfg)
    adaptive = A.adaptive_attack(model, target, (1, 8, 8), config=cfg)
    assert A.score_reconstructions(x, plain.reconstruction).summary()["ssim"] < 0.5
    assert A.score_reconstructions(x, adaptive.reconstruction).summary()["ssim"] > 0.95


def test_batch_attack_and_label_recovery(digits):
    torch.manual_seed(3)
    model = mlp((1, 8, 8), 10, hidden=64)
    # one problem holding a batch of two images with different labels
    idx = [int(torch.nonzero(digits.y_test == c)[0]) for c in (2, 7)]
    x = digits.x_test[idx]
    target = A.stack_gradients([A.shared_gradients(model, x, digits.y_test[idx])])
    labels = A.recover_labels(model, target, 2)
    assert sorted(labels[0].tolist()) == [2, 7]
    result = A.inverting_gradients(model, target, (1, 8, 8), batch_size=2,
                                   config=A.IGConfig(iterations=200, restarts=1))
    assert result.reconstruction.shape == (1, 2, 1, 8, 8)
    s = A.score_reconstructions(x[None], result.reconstruction)
    assert len(s.ssim) == 2 and np.mean(s.ssim) > 0.5


def test_metrics_known_values():
    a = np.zeros((8, 8))
    b = np.full((8, 8), 0.5)
    assert A.mse(a, b) == pytest.approx(0.25)
    assert A.psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.25))
    assert A.psnr(a, a) == math.inf
    assert A.ssim(b, b) == pytest.approx(1.0)
    # constant images: SSIM reduces to the luminance term with C1 = (0.01 * 1)^2
    c, d = np.full((1, 8, 8), 0.2), np.full((1, 8, 8), 0.6)
    assert A.ssim(c, d) == pytest.approx((2 * 0.12 + 1e-4) / (0.04 + 0.36 + 1e-4), rel=1e-6)
    with pytest.raises(A.AttackError):
        A.ssim(np.zeros((4, 4)), np.zeros((4, 4)))


def test_scores_match_images_within_batch_and_success_rate():
    torch.manual_seed(4)
    orig = torch.rand(1, 3, 1, 8, 8)
    rec = orig[:, [2, 0, 1]]  # same images, unknown order
    s = A.score_reconstructions(orig, rec)
    assert s.ssim == pytest.approx([1.0, 1.0, 1.0]) and s.success_rate == 1.0
    noise = A.score_reconstructions(orig, torch.rand(1, 3, 1, 8, 8))
    assert noise.success_rate == 0.0 and max(noise.ssim) < A.SUCCESS_SSIM


def test_analytic_first_layer_inversion_bypasses_precode(digits):
    torch.manual_seed(5)
    model = mlp((1, 8, 8), 10, hidden=32)
    insert_bottleneck(model, "head", k=16)
    x, _, target = _victim(model, digits, [0, 1, 2])
    result = A.analytic_first_layer(model, target, (1, 8, 8))
    assert A.score_reconstructions(x, result.reconstruction).summary()["mse"] < 1e-8
    with pytest.raises(A.AttackError, match="first nn.Linear"):
        from learning.precode import small_cnn
        A.analytic_first_layer(small_cnn((1, 8, 8), 10), target, (1, 8, 8))
