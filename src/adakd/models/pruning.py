"""Layer pruning: a student made from a copy of the teacher with only some of its transformer blocks.

`prune_layers(model, keep_layers=[0, 2, 4], ...)` or `prune_layers(model, every_k=2)` returns a new model
(the input is left as it was): embeddings, final norm and LM head are copied whole, the kept blocks in their
order. Works for any causal LM whose blocks sit in one `nn.ModuleList` -- GPT-2 (`transformer.h`),
Llama/Qwen2/Mistral/SmolLM (`model.layers`), GPT-NeoX (`gpt_neox.layers`), OPT (`model.decoder.layers`).
The config's layer count (and per-layer lists such as `layer_types`) follow, and each kept block's
`layer_idx` is renumbered so the KV cache indexes the new stack correctly.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Tuple

from torch import nn

from ..errors import UserError

# Where the block list lives, relative to the model (tried in order).
LAYER_PATHS = ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.layers",
               "transformer.blocks", "layers", "h")
# Per-layer config lists that must shrink with the stack.
PER_LAYER_CONFIG_KEYS = ("layer_types",)


class PruningError(UserError, ValueError):
    pass


def _unwrap(model: nn.Module) -> nn.Module:
    if hasattr(model, "get_base_model"):   # peft
        return model.get_base_model()
    return getattr(model, "module", model)   # DDP


def find_layers(model: nn.Module) -> Tuple[nn.Module, str, nn.ModuleList]:
    """(parent module, attribute name, the ModuleList of transformer blocks)."""
    model = _unwrap(model)
    for path in LAYER_PATHS:
        *parents, attr = path.split(".")
        parent = model
        for name in parents:
            parent = getattr(parent, name, None)
            if not isinstance(parent, nn.Module):
                break
        else:
            node = getattr(parent, attr, None)
            if isinstance(node, nn.ModuleList) and len(node) > 0:
                return parent, attr, node
    raise PruningError(f"{type(model).__name__}: no transformer block list found (looked for {LAYER_PATHS})")


def layers_to_keep(n_layers: int, keep_layers: Optional[Sequence[int]] = None,
                   every_k: Optional[int] = None) -> List[int]:
    """The kept indices, validated. every_k=k keeps 0, k, 2k, ... (the first block, then every k-th)."""
    if (keep_layers is None) == (every_k is None):
        raise PruningError("give exactly one of keep_layers (a list of block indices) or every_k (an int >= 1)")
    if every_k is not None:
        if int(every_k) < 1:
            raise PruningError(f"every_k must be >= 1, got {every_k}")
        return list(range(0, n_layers, int(every_k)))
    keep = [int(i) + n_layers if int(i) < 0 else int(i) for i in keep_layers]
    if not keep:
        raise PruningError("keep_layers is empty")
    bad = [i for i in keep if not 0 <= i < n_layers]
    if bad:
        raise PruningError(f"keep_layers {list(keep_layers)} has indices outside [0, {n_layers}): {bad}")
    if len(set(keep)) != len(keep):
        raise PruningError(f"keep_layers {list(keep_layers)} has duplicates")
    if keep != sorted(keep):
        raise PruningError(f"keep_layers {list(keep_layers)} must be increasing (blocks keep their order)")
    return keep


def prune_layers(model: nn.Module, keep_layers: Optional[Sequence[int]] = None,
                 every_k: Optional[int] = None) -> nn.Module:
    """A new model with only the kept blocks; trainable (requires_grad on), in train mode, on the input's device."""
    base = _unwrap(model)
    parent, attr, layers = find_layers(base)
    keep = layers_to_keep(len(layers), keep_layers, every_k)
    # Copy everything but the block list, then only the kept blocks: never a full copy of a large teacher.
    setattr(parent, attr, nn.ModuleList())
    try:
        new = copy.deepcopy(base)
    finally:
        setattr(parent, attr, layers)
    new_parent, _, _ = find_layers_or_empty(new, parent_path_of(base, parent), attr)
    setattr(new_parent, attr, nn.ModuleList([copy.deepcopy(layers[i]) for i in keep]))
    for new_idx, block in enumerate(getattr(new_parent, attr)):
        for mod in block.modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    cfg = new.config
    for key in PER_LAYER_CONFIG_KEYS:
        val = getattr(cfg, key, None)
        if isinstance(val, (list, tuple)) and len(val) == len(layers):
            setattr(cfg, key, [val[i] for i in keep])
    cfg.num_hidden_layers = len(keep)   # GPT-2 maps this to n_layer through its attribute_map
    if hasattr(cfg, "max_window_layers") and isinstance(cfg.max_window_layers, int):
        cfg.max_window_layers = min(cfg.max_window_layers, len(keep))
    cfg.adakd_pruned_from = {"n_layers": len(layers), "keep_layers": keep}
    for p in new.parameters():
        p.requires_grad_(True)
    new.train()
    return new


def parent_path_of(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise PruningError("block list parent not found in the model")


def find_layers_or_empty(root: nn.Module, parent_path: str, attr: str):
    parent = root.get_submodule(parent_path) if parent_path else root
    return parent, attr, getattr(parent, attr)
