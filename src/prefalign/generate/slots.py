"""A KV cache laid out for continuous batching: a fixed number of row slots, columns shared by every row.

Each decode step appends one column to every row, so a row's tokens are always contiguous columns ending at the
current one; a row that joins late is left-padded (masked) up to where the others are. Keys and values live in buffers
allocated once and grown rarely, so a step writes one column instead of copying the whole cache (what transformers'
DynamicCache does with `torch.cat`). The model sees an ordinary `transformers.Cache`: it asks for the cached length,
calls `update` once per layer, and attends to the views it gets back.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _Columns:
    """What every layer of one cache shares: rows in use (the first `rows` slots) and columns written so far."""

    def __init__(self) -> None:
        self.rows = 0
        self.length = 0


class _SlotLayer(DynamicLayer):
    """One layer's keys and values, [slots, heads, capacity, head_dim]; the model sees [rows, heads, length, dim]."""

    def __init__(self, columns: _Columns, slots: int, capacity: int, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.columns, self.slots, self.capacity, self.dtype = columns, slots, capacity, dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        shape = (self.slots, key_states.shape[1], self.capacity, key_states.shape[-1])
        dtype = self.dtype or key_states.dtype
        self.device = key_states.device
        self.keys = key_states.new_zeros(shape, dtype=dtype)
        self.values = value_states.new_zeros((*shape[:3], value_states.shape[-1]), dtype=dtype)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):  # type: ignore[override]  # transformers' own signature
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows, start = self.columns.rows, self.columns.length
        end = start + key_states.shape[-2]
        self.keys[:rows, :, start:end] = key_states
        self.values[:rows, :, start:end] = value_states
        return self.keys[:rows, :, :end], self.values[:rows, :, :end]

    def get_seq_length(self) -> int:
        return self.columns.length


class SlotCache(Cache):
    """The KV cache of one model in a continuous batch: `slots` rows, room for `capacity` columns (grown on demand),
    stored in `dtype` (default: the model's keys' own)."""

    def __init__(self, num_layers: int, slots: int, capacity: int, dtype: torch.dtype | None = None) -> None:
        self.columns = _Columns()
        super().__init__(layers=[_SlotLayer(self.columns, slots, capacity, dtype) for _ in range(num_layers)])

    @property
    def rows(self) -> int:
        return self.columns.rows

    @property
    def length(self) -> int:
        return self.columns.length

    @rows.setter
    def rows(self, rows: int) -> None:
        self.columns.rows = rows

    def advance(self, columns: int) -> None:
        """After a forward that wrote `columns` new columns to the rows in use: the cache now holds them."""
        self.columns.length += columns

    def reset(self) -> None:
        """No row in use and no column written (the buffers stay allocated)."""
        self.columns.rows = self.columns.length = 0

    def write_rows(self, slots: list[int], source: Cache, source_rows: list[int]) -> None:
        """Copy rows `source_rows` of `source` (a prefill cache) into `slots`, in columns ending at the current one."""
        end = self.length
        self._ensure_capacity(end)
        for layer, prefilled in zip(self.layers, source.layers):
            keys, values = prefilled.keys, prefilled.values
            if not layer.is_initialized:
                layer.lazy_initialization(keys, values)
            rows = torch.tensor(source_rows, device=keys.device)
            index = torch.tensor(slots, device=keys.device)
            width = keys.shape[-2]
            layer.keys[index, :, end - width : end] = keys[rows].to(layer.keys.dtype)
            layer.values[index, :, end - width : end] = values[rows].to(layer.values.dtype)

    def move_row(self, source: int, target: int) -> None:
        for layer in self._initialized():
            layer.keys[target, :, : self.length] = layer.keys[source, :, : self.length]
            layer.values[target, :, : self.length] = layer.values[source, :, : self.length]

    def drop_columns(self, count: int) -> None:
        """Forget the first `count` columns (no row in use reaches back that far)."""
        rows, length = self.rows, self.length
        for layer in self._initialized():
            layer.keys[:rows, :, : length - count] = layer.keys[:rows, :, count:length].clone()
            layer.values[:rows, :, : length - count] = layer.values[:rows, :, count:length].clone()
        self.columns.length -= count

    def insert_columns(self, count: int) -> None:
        """Make `count` empty columns on the left (a joining prompt is longer than the rows in use reach back), or,
        with no row in use, start `count` columns in."""
        rows, length = self.rows, self.length
        self._ensure_capacity(length + count)
        for layer in self._initialized():
            layer.keys[:rows, :, count : length + count] = layer.keys[:rows, :, :length].clone()
            layer.values[:rows, :, count : length + count] = layer.values[:rows, :, :length].clone()
        self.columns.length += count

    def reserve(self, length: int) -> None:
        """Room for `length` columns before the next forward."""
        self._ensure_capacity(length)

    def _ensure_capacity(self, length: int) -> None:
        for layer in self.layers:
            if length <= layer.capacity:
                continue
            capacity = max(length, 2 * layer.capacity)
            if layer.is_initialized:
                keys, values = layer.keys, layer.values
                layer.keys = keys.new_zeros((*keys.shape[:2], capacity, keys.shape[-1]))
                layer.values = values.new_zeros((*values.shape[:2], capacity, values.shape[-1]))
                layer.keys[:, :, : keys.shape[2]] = keys
                layer.values[:, :, : values.shape[2]] = values
            layer.capacity = capacity

    def _initialized(self) -> list[_SlotLayer]:
        return [layer for layer in self.layers if layer.is_initialized]
