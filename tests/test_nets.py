import io

import pytest
import torch

from dmmd.nets.mlp import FeatureMLP, sinusoidal_embedding
from dmmd.nets.unet import UNet


def test_sinusoidal_embedding_shape_and_range():
    e = sinusoidal_embedding(torch.linspace(0, 1, 7), 9)
    assert e.shape == (7, 9) and e.abs().max() <= 1


@pytest.mark.parametrize("head,dim", [("flatten", 3 * 16 * 16), ("pool", 24), ("epsilon", None)])
def test_unet_heads(head, dim):
    torch.manual_seed(0)
    net = UNet((3, 16, 16), base_channels=8, channel_mults=(1, 2), attn_resolutions=(8,), head=head, feature_dim=24)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([0.1, 0.9]))
    assert out.shape == ((2, 3, 16, 16) if head == "epsilon" else (2, dim))
    if dim:
        assert net.feature_dim == dim


def test_unet_supports_double_backward():
    """The gradient penalty differentiates the input gradient again (attention included)."""
    torch.manual_seed(0)
    net = UNet((1, 8, 8), base_channels=4, channel_mults=(1, 2), attn_resolutions=(4,)).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x, 0.5).sum(), x, create_graph=True)
    g.norm().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    # The final bias cannot move an input gradient; every attention and conv weight must.
    assert grads["out.2.bias"] is None
    assert all(g is not None for n, g in grads.items() if n.endswith("weight") and "out.2" not in n)
    assert any(g.abs().max() > 0 for n, g in grads.items() if "qkv.weight" in n)


def test_unet_rejects_bad_sizes():
    with pytest.raises(ValueError, match="divisible"):
        UNet((1, 10, 10), channel_mults=(1, 2, 2))


@pytest.mark.parametrize("make", [lambda: FeatureMLP(6, 4, 8, 2, 8),
                                  lambda: UNet((1, 8, 8), base_channels=4, channel_mults=(1, 2))])
def test_save_reload_same_output(make):
    torch.manual_seed(1)
    net = make()
    x = torch.randn(3, *((6,) if isinstance(net, FeatureMLP) else (1, 8, 8)))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    other = make()
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(net(x, 0.3), other(x, 0.3))


def test_time_conditioning_matters():
    torch.manual_seed(2)
    net = FeatureMLP(2, 4, 16, 2, 16)
    x = torch.randn(5, 2)
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))


def test_mlp_batch_of_mixed_times_equals_rows_one_by_one():
    """FeatureMLP embeds each distinct time once and indexes it per row: a batch with repeated and
    distinct times gives each row what that row alone gives, and the same input gradients."""
    torch.manual_seed(0)
    net = FeatureMLP(3, feature_dim=5, width=16, depth=2, time_dim=8).double()
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.9, 0.3, 0.55], dtype=torch.float64)
    batch = net(x, t)
    rows = torch.cat([net(x[i:i + 1], t[i]) for i in range(7)])
    torch.testing.assert_close(batch, rows, rtol=0, atol=1e-12)
    (g_batch,) = torch.autograd.grad(batch.pow(2).sum(), x)
    (g_rows,) = torch.autograd.grad(rows.pow(2).sum(), x)
    torch.testing.assert_close(g_batch, g_rows, rtol=0, atol=1e-12)


def test_distinct_times_shares_one_row_without_an_index():
    from dmmd.nets.mlp import distinct_times

    times, index = distinct_times(0.25, 4, torch.device("cpu"))
    assert index is None and times.tolist() == [0.25]
    times, index = distinct_times(torch.full((4,), 0.5), 4, torch.device("cpu"))
    assert index is None and times.tolist() == [0.5]
    times, index = distinct_times(torch.tensor([0.5, 0.1, 0.5, 0.1]), 4, torch.device("cpu"))
    assert times[index].tolist() == pytest.approx([0.5, 0.1, 0.5, 0.1])


@pytest.mark.parametrize("extra", [{}, {"pixel_features": 2}, {"num_classes": 3}])
def test_one_shared_time_broadcast_equals_the_gathered_rows(extra):
    """All rows at one time take the broadcast path; the same rows inside a batch of mixed times take
    the gathered one: equal outputs (the sampler's fast path changes no value)."""
    torch.manual_seed(4)
    net = FeatureMLP(6, 5, 16, 2, 8, **extra).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    kwargs = {"y": torch.tensor([0, 1, 2, 3, 0, 1, 2])} if "num_classes" in extra else {}
    shared = net(x, 0.3, **kwargs)
    mixed_t = torch.full((8,), 0.3, dtype=torch.float64)
    mixed_t[-1] = 0.8
    mixed_kwargs = {"y": torch.cat([kwargs["y"], torch.tensor([1])])} if kwargs else {}
    mixed = net(torch.cat([x, torch.randn(1, 6, dtype=torch.float64)]), mixed_t, **mixed_kwargs)
    torch.testing.assert_close(shared, mixed[:7], rtol=0, atol=1e-12)
