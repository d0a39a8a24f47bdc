"""The network wrapper: parsing a user's module stack, shared parameters, feedback, errors."""

import math

import pytest
import torch
from torch import nn

from lightning_dfc import MLP, DFCNetwork
from lightning_dfc.core.activations import Activation
from lightning_dfc.core.dynamics import feedforward

DT = torch.float64


def seeded_sequential(*modules, seed=0, dtype=DT) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*modules).to(dtype)


def small_stack(seed=0) -> nn.Sequential:
    """6-8-7-4 with three different activations and a linear output."""
    return seeded_sequential(
        nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.LeakyReLU(0.3), nn.Linear(7, 4), seed=seed
    )


def assert_ff_matches_module(net: DFCNetwork, module: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = module(x)
    got = feedforward(net.params(), net.prepare_input(x)).r[-1]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- parsing


def test_parses_sequential_sizes_and_activations():
    seq = seeded_sequential(
        nn.Linear(6, 8),
        nn.Tanh(),
        nn.Linear(8, 7),
        nn.ReLU(),
        nn.Linear(7, 5),
        nn.LeakyReLU(negative_slope=0.37),
        nn.Linear(5, 5),
        nn.Sigmoid(),
        nn.Linear(5, 3),
        nn.Identity(),
    )
    net = DFCNetwork(seq)
    assert net.sizes == [6, 8, 7, 5, 5, 3]
    assert net.num_layers == 5
    assert [a.name for a in net.activations] == ["tanh", "relu", "leaky_relu", "sigmoid", "linear"]
    assert net.activations[2].negative_slope == 0.37
    assert net.params().sizes == [6, 8, 7, 5, 5, 3]
    assert net.params().num_layers == 5
    assert not net.flatten
    x = torch.randn(4, 6, dtype=DT)
    assert_ff_matches_module(net, seq, x)


def test_final_linear_without_activation_is_linear_output_and_consecutive_linears_are_allowed():
    seq = seeded_sequential(nn.Linear(6, 8), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 4))
    net = DFCNetwork(seq)
    assert net.sizes == [6, 8, 7, 4]
    assert [a.name for a in net.activations] == ["linear", "tanh", "linear"]
    assert_ff_matches_module(net, seq, torch.randn(3, 6, dtype=DT))


def test_parses_plain_list_of_modules():
    torch.manual_seed(0)
    modules = [nn.Linear(6, 8).double(), nn.Sigmoid(), nn.Linear(8, 4).double()]
    net = DFCNetwork(modules)
    assert isinstance(net.network, nn.Sequential)
    assert net.sizes == [6, 8, 4]
    assert [a.name for a in net.activations] == ["sigmoid", "linear"]
    assert net.forward_parameters()[0] is modules[0].weight
    assert net.forward_parameters()[-1] is modules[2].bias
    x = torch.randn(3, 6, dtype=DT)
    assert_ff_matches_module(net, net.network, x)


def test_parses_nested_sequentials():
    inner1 = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
    inner2 = nn.Sequential(nn.Sequential(nn.Linear(8, 7), nn.ReLU()), nn.Linear(7, 4))
    seq = seeded_sequential(inner1, inner2)
    net = DFCNetwork(seq)
    assert net.sizes == [6, 8, 7, 4]
    assert [a.name for a in net.activations] == ["tanh", "relu", "linear"]
    assert net.forward_parameters()[0] is inner1[0].weight
    assert net.forward_parameters()[2] is inner2[0][0].weight
    assert net.forward_parameters()[4] is inner2[1].weight
    assert_ff_matches_module(net, seq, torch.randn(3, 6, dtype=DT))


def test_single_linear_module():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    net = DFCNetwork(lin)
    assert net.sizes == [5, 3]
    assert [a.name for a in net.activations] == ["linear"]
    assert net.forward_parameters() == [lin.weight, lin.bias]
    assert len(net.feedback) == 1
    torch.testing.assert_close(net.feedback[0], torch.eye(3, dtype=DT))
    assert_ff_matches_module(net, lin, torch.randn(2, 5, dtype=DT))


def test_leading_flatten_with_mnist_sized_images():
    torch.manual_seed(0)
    seq = MLP([784, 32, 10], flatten=True).double()
    net = DFCNetwork(seq)
    assert net.flatten
    assert net.sizes == [784, 32, 10]
    images = torch.rand(3, 1, 28, 28, dtype=DT)
    flat = net.prepare_input(images)
    assert flat.shape == (3, 784)
    assert_ff_matches_module(net, seq, images)
    # already-flat input is accepted too
    torch.testing.assert_close(net.prepare_input(flat), flat, rtol=0, atol=0)
    with pytest.raises(ValueError, match="after nn.Flatten"):
        net.prepare_input(torch.rand(3, 1, 27, 27, dtype=DT))


def test_flatten_inside_leading_nested_sequential_counts_as_first():
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), nn.Tanh(), nn.Linear(5, 2)
    ).double()
    net = DFCNetwork(seq)
    assert net.flatten and net.sizes == [12, 5, 2]
    assert_ff_matches_module(net, seq, torch.randn(4, 3, 4, dtype=DT))


def test_prepare_input_rejects_wrong_feature_size():
    net = DFCNetwork(small_stack())
    with pytest.raises(ValueError, match=r"expected \(batch, 6\)"):
        net.prepare_input(torch.randn(3, 5, dtype=DT))
    with pytest.raises(ValueError, match="does not match"):
        net.prepare_input(torch.randn(3, 2, 3, dtype=DT))  # no Flatten: 3-D input is wrong
    with pytest.raises(ValueError, match="does not match"):
        net.prepare_input(torch.randn(6, dtype=DT))


# --------------------------------------------------------------------------- shared parameters


def test_parameters_are_shared_not_copied():
    seq = small_stack()
    net = DFCNetwork(seq)
    fp = net.forward_parameters()
    expected = [seq[0].weight, seq[0].bias, seq[2].weight, seq[2].bias, seq[4].weight, seq[4].bias]
    assert len(fp) == len(expected)
    assert all(a is b for a, b in zip(fp, expected, strict=True))
    p = net.params()
    for w, lin in zip(p.weights, (seq[0], seq[2], seq[4]), strict=True):
        assert w.data_ptr() == lin.weight.data_ptr()
        assert not w.requires_grad
    # the module's own parameter list holds the user's parameters exactly once
    ids = [id(q) for q in net.parameters()]
    assert len(ids) == len(set(ids))
    assert all(id(q) in ids for q in expected)
    assert net.network is seq


def test_editing_params_view_changes_the_users_network():
    seq = small_stack()
    net = DFCNetwork(seq)
    x = torch.randn(5, 6, dtype=DT)
    with torch.no_grad():
        before = seq(x).clone()
        p = net.params()
        p.weights[0].add_(1.0)
        p.biases[2].sub_(0.5)
        after = seq(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(seq[0].weight, p.weights[0], rtol=0, atol=0)
    assert_ff_matches_module(net, seq, x)


def test_optimizer_step_on_forward_parameters_updates_the_users_network():
    seq = small_stack()
    net = DFCNetwork(seq)
    x = torch.randn(5, 6, dtype=DT)
    y = torch.randint(0, 4, (5,))
    w0 = seq[2].weight.detach().clone()
    with torch.no_grad():
        before = seq(x).clone()
    opt = torch.optim.SGD(net.forward_parameters(), lr=0.5)
    for param in net.forward_parameters():
        param.grad = torch.ones_like(param)
    opt.step()
    torch.testing.assert_close(seq[2].weight.detach(), w0 - 0.5, rtol=0, atol=1e-15)
    with torch.no_grad():
        assert not torch.allclose(before, seq(x))
    assert_ff_matches_module(net, seq, x)
    # and autograd through the user's module reaches the same tensors the wrapper exposes
    opt.zero_grad()
    nn.functional.cross_entropy(seq(x), y).backward()
    assert all(param.grad is not None for param in net.forward_parameters())


def test_forward_is_the_users_forward():
    seq = small_stack()
    net = DFCNetwork(seq)
    x = torch.randn(5, 6, dtype=DT)
    torch.testing.assert_close(net(x), seq(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- feedback weights


def test_xavier_normal_feedback_init():
    torch.manual_seed(1)
    net = DFCNetwork(small_stack(), feedback_init="xavier_normal")
    sizes = net.sizes
    assert [tuple(q.shape) for q in net.feedback] == [(n, sizes[-1]) for n in sizes[1:]]
    torch.testing.assert_close(net.feedback[-1], torch.eye(4, dtype=DT), rtol=0, atol=0)
    for q in net.feedback[:-1]:
        assert q.dtype == DT
        assert q.abs().min() > 0  # random, not zero / identity
        assert q.std() > 0.1
    assert not torch.allclose(net.feedback[0][:4], net.feedback[1][:4])
    # reset draws new random values, Q_L stays the identity
    old = net.feedback[0].detach().clone()
    net.reset_feedback()
    assert not torch.equal(old, net.feedback[0])
    torch.testing.assert_close(net.feedback[-1], torch.eye(4, dtype=DT), rtol=0, atol=0)


def test_xavier_normal_feedback_has_xavier_std():
    torch.manual_seed(0)
    net = DFCNetwork(MLP([10, 400, 300, 200]).double(), feedback_init="xavier_normal")
    q = net.feedback[0]  # (400, 200)
    assert abs(q.std().item() / math.sqrt(2.0 / (400 + 200)) - 1) < 0.03


def test_weight_product_feedback_init():
    torch.manual_seed(0)
    seq = seeded_sequential(
        nn.Linear(6, 8),
        nn.Tanh(),
        nn.Linear(8, 7),
        nn.Tanh(),
        nn.Linear(7, 5),
        nn.Tanh(),
        nn.Linear(5, 4),
    )
    net = DFCNetwork(seq, feedback_init="weight_product")
    w2, w3, w4 = (seq[k].weight.detach() for k in (2, 4, 6))
    expected = [w2.T @ w3.T @ w4.T, w3.T @ w4.T, w4.T, torch.eye(4, dtype=DT)]
    assert len(net.feedback) == 4
    for q, e in zip(net.feedback, expected, strict=True):
        assert q.shape == e.shape
        torch.testing.assert_close(q.detach(), e, rtol=1e-13, atol=1e-14)
    # reset_feedback follows the current weights
    with torch.no_grad():
        seq[6].weight.mul_(2.0)
    net.reset_feedback()
    torch.testing.assert_close(net.feedback[0].detach(), 2 * expected[0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(net.feedback[-1].detach(), torch.eye(4, dtype=DT), rtol=0, atol=0)
    # and can switch the init explicitly
    net.reset_feedback("xavier_normal")
    assert not torch.allclose(net.feedback[1].detach(), 2 * expected[1])


def test_freeze_output_feedback_excludes_q_l():
    net = DFCNetwork(small_stack(), freeze_output_feedback=True)
    trainable = net.trainable_feedback()
    assert len(trainable) == 2
    assert all(a is b for a, b in zip(trainable, list(net.feedback)[:2], strict=True))
    assert all(q is not net.feedback[-1] for q in trainable)
    unfrozen = DFCNetwork(small_stack())
    assert len(unfrozen.trainable_feedback()) == 3
    assert unfrozen.trainable_feedback()[-1] is unfrozen.feedback[-1]


def test_feedback_parameters_in_state_dict_without_grad():
    net = DFCNetwork(small_stack())
    for q in net.feedback:
        assert isinstance(q, nn.Parameter)
        assert not q.requires_grad
    sd = net.state_dict()
    for k in range(3):
        assert f"feedback.{k}" in sd
        torch.testing.assert_close(sd[f"feedback.{k}"], net.feedback[k].detach(), rtol=0, atol=0)
    assert "network.0.weight" in sd and "network.4.bias" in sd
    # round trip into a fresh wrapper restores the feedback weights
    other = DFCNetwork(small_stack(seed=5))
    other.load_state_dict(sd)
    for a, b in zip(other.feedback, net.feedback, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # feedback weights are not among the forward parameters
    fwd = {id(p) for p in net.forward_parameters()}
    assert not any(id(q) in fwd for q in net.feedback)


def test_double_converts_forward_and_feedback_and_keeps_the_users_module():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    net = DFCNetwork(seq)
    assert net.feedback[0].dtype == torch.float32
    w = seq[0].weight
    out = net.double()
    assert out is net
    assert net.network is seq
    assert seq[0].weight is w  # same Parameter object, converted in place
    assert net.forward_parameters()[0] is seq[0].weight
    assert all(p.dtype == DT for p in net.forward_parameters())
    assert all(q.dtype == DT for q in net.feedback)
    assert all(q.dtype == DT for q in net.params().feedback)
    x = torch.randn(3, 6, dtype=DT)
    assert_ff_matches_module(net, seq, x)


def test_feedback_dtype_follows_the_users_network():
    torch.manual_seed(0)
    net = DFCNetwork(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double())
    assert all(q.dtype == DT for q in net.feedback)


# --------------------------------------------------------------------------- errors


SUPPORTED_NAMES = (
    "nn.Tanh",
    "nn.ReLU",
    "nn.LeakyReLU",
    "nn.Sigmoid",
    "nn.Identity",
    "nn.Linear",
    "nn.Flatten",
)


def _check_unsupported(modules, type_name, extra=None):
    with pytest.raises(ValueError) as info:
        DFCNetwork(nn.Sequential(*modules))
    msg = str(info.value)
    assert type_name in msg, msg
    for name in SUPPORTED_NAMES:
        assert name in msg, (name, msg)
    if extra is not None:
        assert extra in msg, msg
    return msg


@pytest.mark.parametrize(
    "bad, type_name",
    [
        (lambda: nn.Conv2d(1, 2, 3), "Conv2d"),
        (lambda: nn.BatchNorm1d(8), "BatchNorm1d"),
        (lambda: nn.Dropout(0.1), "Dropout"),
        (lambda: nn.Softmax(dim=1), "Softmax"),
        (lambda: nn.GELU(), "GELU"),
    ],
)
def test_unsupported_modules_raise_with_type_and_supported_list(bad, type_name):
    msg = _check_unsupported(
        [nn.Linear(6, 8), bad(), nn.Linear(8, 4)], type_name, "is not supported"
    )
    assert "'1'" in msg  # the module's position/name in the stack


def test_unsupported_module_inside_nested_sequential_is_named():
    msg = _check_unsupported(
        [nn.Linear(6, 8), nn.Sequential(nn.Tanh(), nn.Dropout(0.2)), nn.Linear(8, 4)], "Dropout"
    )
    assert "'1.1'" in msg


def test_activation_before_first_linear_raises():
    _check_unsupported(
        [nn.Tanh(), nn.Linear(6, 8), nn.Linear(8, 4)], "Tanh", "before the first nn.Linear"
    )


def test_two_activations_in_a_row_raise():
    _check_unsupported(
        [nn.Linear(6, 8), nn.Tanh(), nn.ReLU(), nn.Linear(8, 4)], "ReLU", "second activation"
    )


def test_flatten_not_first_raises():
    _check_unsupported([nn.Linear(6, 8), nn.Flatten(), nn.Linear(8, 4)], "Flatten", "first module")


def test_mismatched_linear_shapes_raise_with_sizes():
    msg = _check_unsupported([nn.Linear(6, 8), nn.Tanh(), nn.Linear(5, 4)], "Linear")
    assert "5 inputs" in msg and "8 outputs" in msg


@pytest.mark.parametrize(
    "empty", [lambda: nn.Sequential(), list, lambda: nn.Sequential(nn.Flatten())]
)
def test_stack_without_linear_raises(empty):
    with pytest.raises(ValueError, match="no nn.Linear"):
        DFCNetwork(empty())


def test_unknown_feedback_init_raises():
    with pytest.raises(ValueError, match="feedback_init") as info:
        DFCNetwork(small_stack(), feedback_init="orthogonal")
    assert "xavier_normal" in str(info.value) and "weight_product" in str(info.value)
    assert "orthogonal" in str(info.value)


# --------------------------------------------------------------------------- MLP


def test_mlp_structure_and_init():
    torch.manual_seed(0)
    mlp = MLP([784, 256, 10], activation="relu")
    kinds = [type(m) for m in mlp]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.Identity]
    for lin in (mlp[0], mlp[2]):
        assert torch.count_nonzero(lin.bias) == 0
    w = mlp[0].weight.detach()
    assert w.shape == (256, 784)
    assert abs(w.mean().item()) < 2e-3
    assert abs(w.std().item() / math.sqrt(2.0 / (784 + 256)) - 1) < 0.02
    gained = MLP([784, 256, 10], init_gain=3.0)
    assert abs(gained[0].weight.std().item() / (3 * math.sqrt(2.0 / (784 + 256))) - 1) < 0.02


@pytest.mark.parametrize(
    "name, module_type",
    [
        ("tanh", nn.Tanh),
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("sigmoid", nn.Sigmoid),
        ("linear", nn.Identity),
    ],
)
def test_mlp_activations_round_trip_through_the_wrapper(name, module_type):
    mlp = MLP([6, 8, 7, 4], activation=name, output_activation="sigmoid")
    assert isinstance(mlp[1], module_type) and isinstance(mlp[3], module_type)
    assert isinstance(mlp[5], nn.Sigmoid)
    net = DFCNetwork(mlp)
    assert [a.name for a in net.activations] == [name, name, "sigmoid"]
    if name == "leaky_relu":
        assert net.activations[0].negative_slope == mlp[1].negative_slope == 0.2


def test_mlp_without_bias_and_with_flatten():
    mlp = MLP([12, 8, 4], bias=False, flatten=True)
    assert isinstance(mlp[0], nn.Flatten)
    assert all(lin.bias is None for lin in (mlp[1], mlp[3]))
    net = DFCNetwork(mlp.double())
    assert net.flatten
    assert len(net.forward_parameters()) == 2
    assert net.params().biases == (None, None)
    assert_ff_matches_module(net, mlp, torch.randn(3, 3, 4, dtype=DT))


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP([6, 8, 4], activation="swish")
    with pytest.raises(ValueError, match="unknown activation"):
        MLP([6, 8, 4], output_activation="softmax")
    with pytest.raises(ValueError, match="sizes"):
        MLP([6])
    with pytest.raises(ValueError, match="sizes"):
        MLP([6, 0, 4])
    with pytest.raises(ValueError, match="unknown activation"):
        Activation("swish")
