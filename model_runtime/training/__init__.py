"""Training PaLM policies: pretraining on packed text, SFT on chats, one process or DDP.

- ``config``: :class:`~model_runtime.training.config.TrainConfig`, read from a JSON file.
- ``data``: documents and chats -> token rows -> (inputs, labels) batches; the batch order.
- ``schedule``: warmup + cosine learning rate.
- ``step``: autocast, the loss, AdamW parameter groups, freezing.
- ``distributed``: torchrun / DDP process groups.
- ``trainer``: :class:`~model_runtime.training.trainer.Trainer` (setup, train, evaluate,
  save_state, load_state).
- ``cli``: ``python -m model_runtime train --config FILE.json`` and
  ``python -m model_runtime.training --config FILE.json``.

Importing the package is cheap: nothing heavy is imported here.
"""
