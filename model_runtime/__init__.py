"""palmloop's model runtime: plain PyTorch, no Django, no Celery.

Modules (each with one job):

- ``config`` / ``palm``: the PaLM-architecture policy and its frozen config, with a KV cache.
- ``tokenizer``: byte-level BPE with chat special tokens inserted by id.
- ``checkpoints``: safetensors checkpoint directories, hashed and published atomically.
- ``lora``: named low-rank adapter sets on the attention and feed-forward projections.
- ``corpus``: the training corpus builder.
- ``sampling``: pure logits processors (temperature, top-k, top-p, penalties) and
  :class:`~model_runtime.sampling.SamplingParams`.
- ``stopping``: stop-string matching on a growing completion text.
- ``generation``: batched, KV-cached, seeded generation and streaming.
- ``cli``: ``python -m model_runtime ...``.

Importing the package is cheap: nothing heavy (torch, tokenizers) is imported here.
"""
