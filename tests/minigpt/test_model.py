"""MiniGPT: shapes, layer names, causality, padding, generation, sizes, config checks."""

from __future__ import annotations

import pytest
import torch

from minituner.minigpt.model import PRESETS, GPTConfig, MiniGPT, preset_config

VOCAB = 49


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MiniGPT(preset_config("tiny", vocab_size=VOCAB, block_size=32)).eval()


def tokens(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, shape, generator=g)


def test_forward_shape(model):
    assert model(tokens(3, 17)).shape == (3, 17, VOCAB)
    assert model(tokens(1, 32)).shape == (1, 32, VOCAB)


def test_too_long_sequence_raises(model):
    with pytest.raises(ValueError, match="block_size"):
        model(tokens(1, 33))


def test_named_projections_exist(model):
    cfg = model.config
    C = cfg.n_embd
    names = dict(model.named_modules())
    for i in range(cfg.n_layer):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            layer = names[f"blocks.{i}.attn.{proj}"]
            assert isinstance(layer, torch.nn.Linear)
            assert (layer.in_features, layer.out_features) == (C, C)
        fc_in, fc_out = names[f"blocks.{i}.mlp.fc_in"], names[f"blocks.{i}.mlp.fc_out"]
        assert (fc_in.in_features, fc_in.out_features) == (C, cfg.mlp_ratio * C)
        assert (fc_out.in_features, fc_out.out_features) == (cfg.mlp_ratio * C, C)


def test_causal(model):
    x = tokens(2, 20)
    y = x.clone()
    y[:, 12] = (y[:, 12] % (VOCAB - 1)) + 1  # a different token at position 12
    assert not torch.equal(x, y)
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_right_padding_keeps_real_logits(model):
    x = tokens(1, 15)
    padded = torch.cat([x, torch.zeros(1, 9, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded)[:, :15], model(x), rtol=0, atol=1e-5)
    # and in a batch with a longer neighbour
    batch = torch.cat([padded, tokens(1, 24, seed=1)])
    torch.testing.assert_close(model(batch)[:1, :15], model(x), rtol=0, atol=1e-5)


def test_generate_greedy_is_deterministic(model):
    x = tokens(2, 5)
    a = model.generate(x, 10)
    b = model.generate(x, 10)
    assert a.shape == (2, 15)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], x)
    # greedy: each new token is the argmax of the logits at the previous position
    logits = model(a[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), a[:, 5:])


def test_generate_sampled_with_generator(model):
    x = tokens(4, 5)

    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return model.generate(x, 20, temperature=1.0, top_k=10, generator=g)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert sample(1).shape == (4, 25)


def test_generate_stops_at_stop_token(model):
    x = tokens(1, 5)
    greedy = model.generate(x, 10)
    first = int(greedy[0, 5])
    out = model.generate(x, 10, stop_token=first)
    assert out.shape == (1, 6)
    with pytest.raises(ValueError):
        model.generate(x, 3, temperature=-1.0)


def test_generate_beyond_block_size(model):
    out = model.generate(tokens(1, 30), 10)
    assert out.shape == (1, 40)


def test_default_preset_size():
    m = MiniGPT(preset_config("default", vocab_size=VOCAB, block_size=128))
    assert 0.7e6 <= m.num_params() <= 0.9e6
    # the tied lm_head is counted once
    assert m.lm_head.weight is m.tok_emb.weight
    distinct = {p.data_ptr(): p.numel() for p in m.state_dict().values()}
    assert m.num_params() == sum(distinct.values())
    assert m.num_params(trainable_only=True) == m.num_params()


def test_preset_sizes_increase():
    sizes = [MiniGPT(preset_config(n, vocab_size=VOCAB)).num_params() for n in PRESETS]
    assert sizes == sorted(sizes)


def test_unknown_preset():
    with pytest.raises(ValueError) as exc:
        preset_config("huge", vocab_size=VOCAB)
    for name in PRESETS:
        assert name in str(exc.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"vocab_size": 0},
        {"block_size": -1},
        {"n_layer": 0},
        {"n_head": 0},
        {"n_embd": -128},
        {"mlp_ratio": 0},
        {"n_embd": 130, "n_head": 4},  # not divisible
        {"dropout": 1.0},
        {"dropout": -0.1},
        {"n_layer": 2.5},
        {"n_layer": True},
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        GPTConfig(**bad)


def test_config_dict_round_trip():
    cfg = preset_config("small", vocab_size=VOCAB, block_size=64)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({**cfg.to_dict(), "n_experts": 8})
