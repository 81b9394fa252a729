"""Batch-first pytree states, flattened to one ``[B, D]`` matrix so solvers see plain vectors.

A state is a tensor or any nesting of tuples, lists and dicts of tensors whose first dimension is the
batch. Solvers, gradient estimators and diagnostics work on the flat ``[B, D]`` view and hand users back
the structure they gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

State = Any  # a tensor or a pytree of tensors, batch first


@dataclass(frozen=True)
class StateSpec:
    """The structure of a state: its tree and each leaf's per-sample shape and dtype."""

    treedef: Any
    shapes: tuple[torch.Size, ...]
    dtypes: tuple[torch.dtype, ...]
    batch: int
    dtype: torch.dtype  # dtype of the flat view (promoted over the leaves)

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def dim(self) -> int:
        """Per-sample size D of the flat view."""
        return sum(self.numels)

    @property  # not cached_property: its lock stops torch.compile from tracing a solve
    def is_matrix(self) -> bool:
        """True when the state is one ``[B, D]`` tensor of the flat dtype, so flattening is the identity."""
        return self.treedef.is_leaf() and len(self.shapes[0]) == 1 and self.dtypes[0] == self.dtype

    def flatten(self, state: State) -> torch.Tensor:
        """State -> ``[B, D]`` (a view when the state is a single tensor of the flat dtype)."""
        if self.is_matrix and isinstance(state, torch.Tensor):
            return state
        leaves = pytree.tree_leaves(state)
        if len(leaves) == 1:
            return leaves[0].reshape(leaves[0].shape[0], -1).to(self.dtype)
        return torch.cat([x.reshape(x.shape[0], -1).to(self.dtype) for x in leaves], dim=1)

    def unflatten(self, flat: torch.Tensor) -> State:
        """``[B, D]`` -> state with this spec's structure, shapes and dtypes."""
        if self.is_matrix:
            return flat
        batch = flat.shape[0]
        if len(self.shapes) == 1:
            leaves = [flat.reshape(batch, *self.shapes[0]).to(self.dtypes[0])]
        else:
            parts = torch.split(flat, self.numels, dim=1)
            leaves = [p.reshape(batch, *s).to(d) for p, s, d in zip(parts, self.shapes, self.dtypes)]
        return pytree.tree_unflatten(leaves, self.treedef)


_LEAF = pytree.tree_structure(torch.zeros(()))  # the treedef of a state that is one tensor
_FLAT_DTYPES = (torch.float32, torch.float64)  # a [B, D] tensor of these is its own flat view


def spec_of(state: State) -> StateSpec:
    """Read the spec of a batch-first state; every leaf must be a floating tensor with the same batch size."""
    if isinstance(state, torch.Tensor) and state.dim() == 2 and state.dtype in _FLAT_DTYPES:  # the common case
        return StateSpec(treedef=_LEAF, shapes=(state.shape[1:],), dtypes=(state.dtype,), batch=state.shape[0],
                         dtype=state.dtype)
    leaves, treedef = pytree.tree_flatten(state)
    if not leaves:
        raise ValueError("the state has no tensors: pass a tensor or a tuple/list/dict of tensors")
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"every leaf of the state must be a tensor, got {type(leaf).__name__}")
        if leaf.dim() == 0:
            raise ValueError("state tensors need a leading batch dimension, got a 0-d tensor")
        if not leaf.is_floating_point():
            raise TypeError(f"state tensors must be real floating point, got {leaf.dtype}")
    batches = {leaf.shape[0] for leaf in leaves}
    if len(batches) != 1:
        raise ValueError(f"all state tensors must share the batch dimension, got sizes {sorted(batches)}")
    dtype = leaves[0].dtype
    for leaf in leaves[1:]:
        dtype = torch.promote_types(dtype, leaf.dtype)
    # Solvers keep their state and small linear algebra in at least float32 (bf16/fp16 have no LU and
    # too few bits for Anderson's normal equations); f still sees the leaves' own dtypes.
    dtype = torch.promote_types(dtype, torch.float32)
    return StateSpec(
        treedef=treedef,
        shapes=tuple(leaf.shape[1:] for leaf in leaves),
        dtypes=tuple(leaf.dtype for leaf in leaves),
        batch=leaves[0].shape[0],
        dtype=dtype,
    )


def flat_map(f: Callable[[State], State], spec: StateSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap a state map ``f`` as a map on the flat ``[B, D]`` view described by ``spec``."""

    checked = False

    def check(out: State) -> None:
        nonlocal checked
        out_spec = spec_of(out)
        if out_spec.treedef != spec.treedef or out_spec.shapes != spec.shapes:
            raise ValueError(
                "f must return a state with the same structure and shapes as its input; "
                f"got {out_spec.treedef} with shapes {list(out_spec.shapes)}, "
                f"expected {spec.treedef} with shapes {list(spec.shapes)}"
            )
        checked = True

    if spec.is_matrix:  # the common [B, D] case: no reshaping, one flag test per call

        def f_matrix(z: torch.Tensor) -> torch.Tensor:
            nonlocal checked
            out = f(z)
            if not checked:  # the structure cannot change between calls of the same f: check it once
                if isinstance(out, torch.Tensor) and out.shape == z.shape and out.is_floating_point():
                    checked = True
                else:
                    check(out)
            return out if out.dtype == spec.dtype else out.to(spec.dtype)  # e.g. bf16 out of autocast

        return f_matrix

    template = pytree.tree_unflatten([None] * len(spec.shapes), spec.treedef)
    reorder = False  # set when f returns dicts with the state's keys in another order

    def f_flat(z: torch.Tensor) -> torch.Tensor:
        nonlocal reorder
        out = f(spec.unflatten(z))
        if reorder:
            out = in_order_of(out, template)
        elif not checked:
            matched = in_order_of(out, template)
            if matched is not out and pytree.tree_structure(matched) == spec.treedef:
                reorder, out = True, matched
            check(out)
        return spec.flatten(out)

    return f_flat


def in_order_of(out: State, ref: State) -> State:
    """``out`` with every dict's keys in the order of the matching dict of ``ref`` (dict states match by key,
    not by order); ``out`` itself when nothing needs reordering."""
    if isinstance(ref, dict) and isinstance(out, dict) and out.keys() == ref.keys():
        items = {key: in_order_of(out[key], ref[key]) for key in ref}
        same = list(out) == list(ref) and all(items[key] is out[key] for key in ref)
        return out if same else type(out)(items)
    if isinstance(ref, (list, tuple)) and type(out) is type(ref) and len(out) == len(ref):
        items = [in_order_of(o, r) for o, r in zip(out, ref)]
        if all(i is o for i, o in zip(items, out)):
            return out
        return type(ref)(*items) if hasattr(ref, "_fields") else type(ref)(items)
    return out


tree_map = pytree.tree_map
tree_leaves = pytree.tree_leaves
