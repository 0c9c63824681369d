"""The key/value cache of a PaLM model: one shared key head and value head per layer.

Multi-query attention keeps one key and one value of ``dim_head`` per token and layer, so the
cache is small: ``2 * depth * batch * length * dim_head`` numbers. It is held in preallocated
buffers of shape (depth, B, capacity, dim_head) that grow by doubling, so appending a token is a
copy of that token only (``torch.cat`` per step would copy the whole cache every step).

Protocol used by :class:`model_runtime.palm.PaLM` for a forward pass over T new tokens:
``reserve(T)``, then per layer ``write(layer, k, v)`` (returns all keys/values so far, the new
ones included), then ``advance(T)`` once every layer has written. ``length`` only moves in
``advance``, so a forward pass that fails halfway leaves the cache as it was.
"""

from __future__ import annotations

import torch

from model_runtime.config import PaLMConfig


class KVCache:
    """Per-layer keys and values, each (B, S, dim_head) for the S tokens seen so far."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """``keys``/``values``: (depth, B, capacity, dim_head) buffers; the first ``length``
        positions of the capacity axis hold data. Prefer :meth:`empty`."""
        if keys.shape != values.shape or keys.dim() != 4:
            raise ValueError(
                f"keys and values must both be (depth, B, capacity, dim_head), "
                f"got {tuple(keys.shape)} and {tuple(values.shape)}"
            )
        if not 0 <= length <= keys.shape[2]:
            raise ValueError(f"length {length} outside the capacity {keys.shape[2]}")
        self._keys = keys
        self._values = values
        self._length = length

    @classmethod
    def empty(
        cls,
        config: PaLMConfig,
        batch_size: int,
        *,
        device: str | torch.device,
        dtype: torch.dtype,
        capacity: int | None = None,
    ) -> KVCache:
        """An empty cache for ``batch_size`` rows; ``capacity`` (default ``max_seq_len``) is only
        the initial allocation: the cache grows when more tokens arrive."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cap = config.max_seq_len if capacity is None else capacity
        if cap < 1:
            raise ValueError(f"capacity must be >= 1, got {cap}")
        shape = (config.depth, batch_size, cap, config.dim_head)
        keys = torch.zeros(shape, device=device, dtype=dtype)
        values = torch.zeros(shape, device=device, dtype=dtype)
        return cls(keys, values, 0)

    @property
    def length(self) -> int:
        """S: the number of tokens whose keys and values are held."""
        return self._length

    @property
    def batch_size(self) -> int:
        return int(self._keys.shape[1])

    @property
    def depth(self) -> int:
        return int(self._keys.shape[0])

    @property
    def capacity(self) -> int:
        return int(self._keys.shape[2])

    @property
    def dtype(self) -> torch.dtype:
        return self._keys.dtype

    @property
    def device(self) -> torch.device:
        return self._keys.device

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``index``, each (B, S, dim_head) (views, not copies)."""
        return self._keys[index, :, : self._length], self._values[index, :, : self._length]

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more positions (doubling the buffers when needed)."""
        needed = self._length + new_tokens
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        depth, batch, _, dim_head = self._keys.shape
        shape = (depth, batch, new_cap, dim_head)
        keys = self._keys.new_zeros(shape)
        values = self._values.new_zeros(shape)
        keys[:, :, : self._length] = self._keys[:, :, : self._length]
        values[:, :, : self._length] = self._values[:, :, : self._length]
        self._keys, self._values = keys, values

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the T new ``keys``/``values`` (B, T, dim_head) of ``layer`` after the S held
        ones; return that layer's (B, S + T, dim_head) keys and values. Call :meth:`reserve`
        first and :meth:`advance` after the last layer."""
        batch, new, _ = keys.shape
        if batch != self.batch_size:
            raise ValueError(f"cache holds {self.batch_size} rows, got {batch}")
        end = self._length + new
        if end > self.capacity:
            raise RuntimeError("KVCache.write past capacity: call reserve() first")
        self._keys[layer, :, self._length : end] = keys
        self._values[layer, :, self._length : end] = values
        return self._keys[layer, :, :end], self._values[layer, :, :end]

    def advance(self, new_tokens: int) -> None:
        """Count ``new_tokens`` written by every layer as held."""
        if self._length + new_tokens > self.capacity:
            raise RuntimeError("KVCache.advance past capacity")
        self._length += new_tokens

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (e.g. to drop a rejected continuation)."""
        if not 0 <= length <= self._length:
            raise ValueError(f"crop length {length} outside [0, {self._length}]")
        self._length = length

    def select(self, rows: torch.Tensor) -> KVCache:
        """A new cache holding batch rows ``rows`` (1-D indices; may reorder or repeat)."""
        if rows.dim() != 1:
            raise ValueError(f"rows must be 1-D indices, got shape {tuple(rows.shape)}")
        index = rows.to(device=self.device, dtype=torch.long)
        held = slice(0, self._length)
        keys = self._keys[:, :, held].index_select(1, index)
        values = self._values[:, :, held].index_select(1, index)
        return self._with_buffers(keys, values)

    def repeat_interleave(self, n: int) -> KVCache:
        """A new cache with every row repeated ``n`` times in place: rows a, b -> a, a, b, b."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        held = slice(0, self._length)
        keys = self._keys[:, :, held].repeat_interleave(n, dim=1)
        values = self._values[:, :, held].repeat_interleave(n, dim=1)
        return self._with_buffers(keys, values)

    def _with_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> KVCache:
        """A cache over (depth, B', length, dh) data, padded back to this cache's capacity."""
        depth, batch, length, dim_head = keys.shape
        shape = (depth, batch, self.capacity, dim_head)
        full_keys = keys.new_zeros(shape)
        full_values = values.new_zeros(shape)
        full_keys[:, :, :length] = keys
        full_values[:, :, :length] = values
        return KVCache(full_keys, full_values, length)
