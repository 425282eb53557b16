import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributions import Normal, kl_divergence

from learning.precode import (
    PrecodeError,
    VariationalBottleneck,
    add_kl,
    bottlenecks,
    insert_bottleneck,
    kl_loss,
    kl_to_standard_normal,
    mlp,
    parameters_before_bottleneck,
    small_cnn,
)


def test_bottleneck_shapes_flat_and_feature_maps():
    torch.manual_seed(0)
    vb = VariationalBottleneck(100, k=16)
    assert vb.encoder.weight.shape == (32, 100)
    assert vb.decoder.weight.shape == (100, 16)
    assert vb(torch.randn(5, 100)).shape == (5, 100)
    conv = VariationalBottleneck(32 * 4 * 4, k=8)
    assert conv(torch.randn(3, 32, 4, 4)).shape == (3, 32, 4, 4)


def test_wrong_input_size_is_a_clear_error():
    vb = VariationalBottleneck(10, k=4)
    with pytest.raises(PrecodeError, match="10 features"):
        vb(torch.randn(2, 11))
    with pytest.raises(PrecodeError):
        VariationalBottleneck(0)


def test_kl_term_matches_closed_form_of_forward_pass():
    torch.manual_seed(1)
    vb = VariationalBottleneck(20, k=6, beta=0.1)
    x = torch.randn(7, 20)
    vb(x)
    mu, std = vb.statistics(x)
    expected = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(vb.last_kl, expected, atol=1e-5)
    assert torch.allclose(kl_loss(vb), 0.1 * expected, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(0.05, 4)), min_size=1, max_size=12))
def test_kl_formula_property(pairs):
    mu = torch.tensor([[m for m, _ in pairs]], dtype=torch.float64)
    std = torch.tensor([[s for _, s in pairs]], dtype=torch.float64)
    ref = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum()
    assert torch.allclose(kl_to_standard_normal(mu, std), ref, atol=1e-9)
    assert kl_to_standard_normal(torch.zeros(1, 3), torch.ones(1, 3)).item() == 0.0


def test_sampling_in_eval_when_configured():
    torch.manual_seed(2)
    x = torch.randn(4, 12)
    sampling = VariationalBottleneck(12, k=8, sample_in_eval=True).eval()
    assert not torch.allclose(sampling(x), sampling(x))
    mean_only = VariationalBottleneck(12, k=8, sample_in_eval=False).eval()
    out = mean_only(x)
    assert torch.equal(out, mean_only(x))
    mu, _ = mean_only.statistics(x)
    assert torch.allclose(out, mean_only.decoder(mu))
    assert not torch.allclose(mean_only.train()(x), out)  # training always samples


def test_noise_override_makes_forward_deterministic():
    vb = VariationalBottleneck(6, k=3)
    x = torch.randn(2, 6)
    vb.noise = torch.zeros(2, 3)
    mu, _ = vb.statistics(x)
    assert torch.allclose(vb(x), vb.decoder(mu))


def test_insert_before_named_layer_and_loss_helper():
    torch.manual_seed(3)
    model = mlp((1, 8, 8), 10, hidden=32)
    vb = insert_bottleneck(model, "head", k=16, beta=0.5)
    assert [m for _, m in bottlenecks(model)] == [vb]
    assert vb.in_features == 32
    x, y = torch.rand(5, 1, 8, 8), torch.randint(0, 10, (5,))
    out = model(x)
    assert out.shape == (5, 10)
    ce = nn.functional.cross_entropy(out, y)
    assert torch.allclose(add_kl(model, ce), ce + 0.5 * vb.last_kl)
    assert parameters_before_bottleneck(model) == ["fc1.weight", "fc1.bias", "fc2.weight",
                                                   "fc2.bias"]
    assert "head.1.weight" in dict(model.named_parameters())


def test_insert_into_cnn_and_errors():
    model = small_cnn((3, 32, 32), 10)
    insert_bottleneck(model, "head")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(PrecodeError, match="choose one of"):
        insert_bottleneck(model, "nope")
    with pytest.raises(PrecodeError, match="in_features"):
        insert_bottleneck(model, "act1")
    assert kl_loss(mlp((4,), 2)).item() == 0.0
    with pytest.raises(PrecodeError, match="no VariationalBottleneck"):
        parameters_before_bottleneck(mlp((4,), 2))


def test_evaluation_data_loaders():
    from learning.datasets import DatasetError, load_digit_images, load_table, synthetic_images

    syn = synthetic_images(n_train=40, n_test=10, seed=1)
    assert syn.x_train.shape == (40, 3, 32, 32) and syn.x_test.shape == (10, 3, 32, 32)
    assert 0.0 <= syn.x_train.min() and syn.x_train.max() <= 1.0 and syn.num_classes == 10
    assert torch.equal(syn.x_train, synthetic_images(n_train=40, n_test=10, seed=1).x_train)
    digits = load_digit_images()
    assert digits.input_shape == (1, 8, 8) and digits.x_train.max() <= 1.0
    assert len(digits.y_train) + len(digits.y_test) == 1797
    wine = load_table("wine")
    assert abs(float(wine.x_train.mean())) < 1e-4 and wine.num_classes == 3
    with pytest.raises(DatasetError, match="choose one of"):
        load_table("iris")
