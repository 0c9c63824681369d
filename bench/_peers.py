"""The HF peer every benchmark measures against, built one way.

``GPTNeoXForCausalLM`` is the closest model a user would pick: parallel residual, rotary on the
whole head (as ours), no biases, tied embeddings, SDPA attention. The MLP is 5 D wide so a block
has PaLM's 14 D^2 weights (4 D^2 attention + 10 D^2 MLP).
"""

from __future__ import annotations

from typing import Any


def hf_gpt_neox(
    *, vocab: int, dim: int, depth: int, heads: int, context: int, use_cache: bool
) -> Any:
    """A randomly initialised GPT-NeoX of these dimensions (torch's RNG decides the weights)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=5 * dim,
        max_position_embeddings=context,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 1.0,
        },
        use_parallel_residual=True,
        attention_bias=False,
        tie_word_embeddings=True,
        use_cache=use_cache,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    return GPTNeoXForCausalLM._from_config(config, attn_implementation="sdpa")  # type: ignore[no-untyped-call]
