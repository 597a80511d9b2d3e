"""attnscope's model against Hugging Face transformers (eager attention, float32).

For every tiny model of the conftest zoo (Llama with GQA, llama3 and linear RoPE scaling, attention
bias and tied embeddings; Mistral with a sliding window shorter than the prompt; Qwen2 with qkv bias
and with per-layer sliding windows; Qwen3 with q/k norm and an explicit head_dim), the logits and
every layer's and head's attention probabilities must match HF's, with each attnscope backend.
"""

from __future__ import annotations

import pytest
import torch
from support.models import SEQ_LEN

import attnscope

pytestmark = pytest.mark.usefixtures("single_thread")

BACKENDS = ["eager", "sdpa"]


@pytest.fixture(scope="module")
def hf_reference(tiny):
    ids = tiny.ids(SEQ_LEN)
    logits, attentions = tiny.hf_forward(ids)
    return ids, logits[0], attentions


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_match_hf(tiny, zoo, hf_reference, backend):
    ids, hf_logits, _ = hf_reference
    result = attnscope.Scope(zoo.loaded(tiny.name), backend=backend).run(ids[0].tolist())
    assert result.logits.dtype == torch.float32
    assert result.logits.shape == hf_logits.shape == (SEQ_LEN, tiny.vocab_size)
    torch.testing.assert_close(result.logits, hf_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_probabilities_match_hf(tiny, zoo, hf_reference, backend):
    ids, _, hf_attentions = hf_reference
    config = zoo.loaded(tiny.name).config
    result = attnscope.Scope(zoo.loaded(tiny.name), backend=backend).run(ids[0].tolist())
    assert result.n_layers == len(hf_attentions) == config.num_hidden_layers
    assert result.n_heads == hf_attentions[0].shape[1] == config.num_attention_heads
    for layer in range(result.n_layers):
        for head in range(result.n_heads):
            probs = result.attention(layer, head)
            assert probs.dtype == torch.float32
            torch.testing.assert_close(
                probs,
                hf_attentions[layer][0, head].float(),
                atol=1e-5,
                rtol=0,
                msg=lambda m, layer=layer, head=head: f"layer {layer} head {head}: {m}",
            )
            # rows are distributions over the allowed keys only
            torch.testing.assert_close(probs.sum(-1), torch.ones(SEQ_LEN), atol=1e-5, rtol=0)


def test_attention_regions_are_slices_of_the_full_matrix(zoo):
    tiny = zoo["mistral-sliding"]
    ids = tiny.ids(SEQ_LEN)
    result = attnscope.Scope(zoo.loaded(tiny.name)).run(ids[0].tolist())
    full = result.attention(1, 3)
    region = result.attention(1, 3, queries=slice(10, 30), keys=slice(5, 25))
    torch.testing.assert_close(region, full[10:30, 5:25], atol=1e-6, rtol=0)


def test_sliding_window_layers_get_sliding_masks(zoo):
    """The parity models really exercise sliding windows: the masks are what HF uses per layer."""
    assert [repr(m) for m in zoo.loaded("mistral-sliding").net.masks] == ["causal & sliding_window(8)"] * 2
    assert [repr(m) for m in zoo.loaded("qwen2-sliding").net.masks] == ["causal", "causal & sliding_window(8)"]
    assert [repr(m) for m in zoo.loaded("qwen2").net.masks] == ["causal", "causal"]
    assert [repr(m) for m in zoo.loaded("llama-gqa").net.masks] == ["causal", "causal"]


def test_configs_read_from_hf(zoo):
    qwen3 = zoo.loaded("qwen3").config
    assert (qwen3.head_dim, qwen3.qk_norm, qwen3.qkv_bias) == (32, True, False)
    qwen2 = zoo.loaded("qwen2").config
    assert (qwen2.qkv_bias, qwen2.o_bias) == (True, False)
    tied = zoo.loaded("llama-linear-bias-tied")
    assert (tied.config.qkv_bias, tied.config.o_bias, tied.config.mlp_bias) == (True, True, True)
    assert tied.config.tie_word_embeddings
    assert tied.net.lm_head.weight.data_ptr() == tied.net.embed_tokens.weight.data_ptr()
    assert tied.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    llama3 = zoo.loaded("llama-llama3-rope").config
    assert llama3.rope_scaling["rope_type"] == "llama3"
    assert llama3.group_size == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("size", [64, 576, 3000])  # the mean as sum / n must hold for sizes not a power of 2
def test_rms_norm_is_hf_llama_rms_norm_bit_for_bit(dtype, size):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from attnscope.model.llama import RMSNorm

    gen = torch.Generator().manual_seed(size)
    ours, theirs = RMSNorm(size, 1e-6), LlamaRMSNorm(size, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(size, generator=gen))
        theirs.weight.copy_(ours.weight)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    with torch.no_grad():
        for x in (torch.randn(3, 7, size, generator=gen) * 5, torch.randn(1, 1, size, generator=gen) * 5):
            assert torch.equal(ours(x.to(dtype)), theirs(x.to(dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_is_hf_llama_rope_bit_for_bit(dtype):
    """The table of cos and signed sin, and the rotation as one roll, give HF's LlamaRotaryEmbedding
    and apply_rotary_pos_emb exactly: for a decode step's single position, a range past the table's
    first size (it grows), and per-row positions; a replaced inv_freq rebuilds the table."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from attnscope.model.config import ModelConfig
    from attnscope.model.llama import RotaryEmbedding, apply_rope

    hf_config = LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rope_theta=5000.0,
    )
    ours, theirs = RotaryEmbedding(ModelConfig.from_hf(hf_config.to_dict())), LlamaRotaryEmbedding(hf_config)
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, h, 7, 32, generator=gen).to(dtype) for h in (4, 2))

    def hf(positions):  # positions (B, T)
        cos, sin = theirs(q, positions)
        return apply_rotary_pos_emb(q, k, cos, sin)

    for start in (0, 300, 1000):  # 1000 + 7 > the first table's 256 rows
        rope = ours(start, 7, None, dtype, q.device)
        want_q, want_k = hf(torch.arange(start, start + 7).expand(2, 7))
        assert torch.equal(apply_rope(q, *rope), want_q) and torch.equal(apply_rope(k, *rope), want_k)
    rows = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11]])  # a left-padded row and a later one
    rope = ours(0, 7, rows, dtype, q.device)
    assert torch.equal(apply_rope(q, *rope), hf(rows)[0])
    ours.inv_freq = ours.inv_freq / 2  # as the GGUF loader's rope_freqs do
    theirs.inv_freq = theirs.inv_freq / 2
    assert torch.equal(apply_rope(q, *ours(40, 7, None, dtype, q.device)), hf(torch.arange(40, 47).expand(2, 7))[0])
