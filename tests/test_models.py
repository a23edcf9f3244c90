import pytest
import torch

from segbench.models import available, build_model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name, kwargs, classes, expected, tol", [
    ("unet", {}, 2, 31.04e6, 0.01),                  # REFERENCE.md §2
    ("unet", {"bilinear": True}, 2, 17.26e6, 0.01),
    ("segnet", {}, 21, 29.45e6, 0.02),
])
def test_published_parameter_counts(name, kwargs, classes, expected, tol):
    assert n_params(build_model(name, classes, **kwargs)) == pytest.approx(expected, rel=tol)


@pytest.mark.parametrize("name", sorted(available()))
@pytest.mark.parametrize("size", [(64, 96), (96, 128)])
def test_logits_at_input_resolution(name, size):
    m = build_model(name, 5, width=4)
    y = m(torch.randn(2, 3, *size))
    assert y.shape == (2, 5, *size)


@pytest.mark.parametrize("name", sorted(available()))
def test_gradients_reach_every_parameter(name):
    m = build_model(name, 3, width=4)
    m(torch.randn(2, 3, 64, 64)).logsumexp(1).mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize("name", sorted(available()))
def test_bad_input_size_fails_clearly(name):
    with pytest.raises(ValueError, match="multiples of"):
        build_model(name, 3, width=4)(torch.randn(1, 3, 70, 64))


def test_unknown_model_and_option():
    with pytest.raises(KeyError, match="known models: unet, segnet"):
        build_model("unett", 3)
    with pytest.raises(TypeError, match="no option 'widht'"):
        build_model("unet", 3, widht=4)
