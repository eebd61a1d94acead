"""torch.distributed for the runner: process group from torchrun's environment, FSDP wrapping, helpers.

Launch (docs/scale.md): `torchrun --standalone --nproc_per_node=N -m adakd <overrides>` (or the
console script's path). torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without
them this module does nothing and the run is a single process.

Data parallel is done by the Trainer itself (each rank takes its slice of every global batch; gradients
are all-reduced and averaged before clipping), which is DDP's arithmetic without DDP's wrapper, so the
training loop keeps calling the model's body and head separately. With `train.fsdp=true` the student is
sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`): each transformer block is its own unit and a
small root wrapper (`ResponseLM`) owns embeddings, final norm and LM head, and computes logits only at the
response positions in one forward, so FSDP's hooks see every parameter use.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.module import _IncompatibleKeys

from ..models import lm_parts
from ..models.pruning import find_layers
from . import checkpoint as ckpt

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: Optional[str] = None
    device: Optional[torch.device] = None   # this rank's device, when distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def env_world() -> DistInfo:
    """World size / ranks from torchrun's variables (1 / 0 / 0 without them)."""
    return DistInfo(world_size=int(os.environ.get("WORLD_SIZE", "1")), rank=int(os.environ.get("RANK", "0")),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device_spec: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (idempotent). NCCL on CUDA (one GPU per local rank), gloo
    on CPU. The collective timeout is long ($ADAKD_DIST_TIMEOUT_S, default 2 h): rank 0 alone evaluates
    while the others wait."""
    global _INFO

    info = env_world()
    if not info.enabled:
        _INFO = info
        return info
    use_cuda = torch.cuda.is_available() and not str(device_spec).startswith("cpu")
    info.backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
        info.device = torch.device("cuda", info.local_rank)
    else:
        info.device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=int(os.environ.get("ADAKD_DIST_TIMEOUT_S", "7200")))
        dist.init_process_group(backend=info.backend, timeout=timeout,
                                **({"device_id": info.device} if use_cuda else {}))
        log.info("process group: rank %d of %d (%s)", info.rank, info.world_size, info.backend)
    _INFO = info
    return info


def info() -> DistInfo:
    return _INFO


def teardown() -> None:
    global _INFO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = DistInfo()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_params(model: nn.Module, src: int = 0) -> None:
    """Make every rank's replica equal to rank 0's (what DDP does at construction)."""
    if not is_initialized():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_reduce_mean(values: Dict[str, float], world_size: int) -> Dict[str, float]:
    """Mean over ranks of a dict of floats (same keys on every rank), one collective."""
    if world_size <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size for k, v in zip(keys, t.tolist())}


# --------------------------------------------------------------------------------------------------- FSDP
class ResponseLM(nn.Module):
    """FSDP root: logits at the response positions in one forward (body + head under the root's hooks)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, mask):
        body, head = lm_parts(self.lm)
        out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return head(out.last_hidden_state[:, :-1][mask])


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule   # heavy (~1 s): only FSDP runs need it
    except ImportError:   # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


def wrap_fsdp(model: nn.Module, *, param_dtype: Optional[torch.dtype] = None,
              device: Optional[torch.device] = None) -> ResponseLM:
    """Shard `model` across the process group (FSDP2): one unit per transformer block plus the root.

    `param_dtype` (bf16/fp16 on CUDA) is the compute dtype of the gathered weights; the sharded master
    weights and the gradient reduction stay float32. The model is modified in place (its parameters become
    sharded DTensors) and returned inside a `ResponseLM`.
    """
    from torch.distributed.device_mesh import init_device_mesh   # heavy (~1 s): FSDP runs only
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard   # heavy: FSDP runs only


    if not is_initialized():
        raise RuntimeError("train.fsdp=true needs a process group: launch with torchrun (docs/scale.md)")
    dev = device or _INFO.device or torch.device("cpu")
    mesh = init_device_mesh(dev.type, (_INFO.world_size or torch.distributed.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else \
        MixedPrecisionPolicy()
    _, _, layers = find_layers(model)
    for block in layers:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    root = ResponseLM(model)
    fully_shard(root, mesh=mesh, mp_policy=mp)
    return root


def full_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unsharded weights, on CPU, on rank 0 (empty elsewhere). A collective: call on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # heavy: FSDP only
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Load unsharded weights (read by every rank) into a sharded model. A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict  # heavy: FSDP runs only
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, optimizer) -> Dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # heavy: FSDP runs only
    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer, state: Dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # heavy: FSDP runs only
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


class FullStateView(nn.Module):
    """What checkpoint.save/load_latest see of a sharded model: its full (unsharded) state dict, under the
    plain model's key names (the `ResponseLM` root's "lm." prefix dropped).

    Built on every rank (gathering is a collective); only rank 0 writes. Loading reads the full dict on
    every rank and scatters it into the shards."""

    def __init__(self, model: nn.Module, prefix: str = "lm."):
        super().__init__()
        object.__setattr__(self, "_sharded", model)
        object.__setattr__(self, "_prefix", prefix if isinstance(model, ResponseLM) else "")
        object.__setattr__(self, "_sd", None)

    def state_dict(self, *args, **kwargs):   # the nn.Module API
        if self._sd is None:
            n = len(self._prefix)
            full = full_state_dict(self._sharded)
            object.__setattr__(self, "_sd", {k[n:] if k.startswith(self._prefix) else k: v for k, v in full.items()})
        return self._sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        load_full_state_dict(self._sharded, {self._prefix + k: v for k, v in state_dict.items()})
        return _IncompatibleKeys([], [])


def gather_rng(world_size: int) -> list:
    """Every rank's RNG states, in rank order (a collective when world_size > 1)."""
    mine = ckpt.capture_rng()
    if world_size == 1:
        return [mine]
    out: list = [None] * world_size
    dist.all_gather_object(out, mine)
    return out


def all_reduce_grads_and_clip(model, optimizer, clip: float, world_size: int, sharded: bool = False) -> float:
    """Average the gradients over the ranks (unless FSDP did), clip them; the norm before clipping."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if sharded:   # FSDP has reduce-scattered (and averaged) the gradients; norms are over the DTensors
        if not params:
            return 0.0
        if clip and clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    if world_size > 1:
        for p in params:   # plain averaging keeps world x accum equivalent to one process with more accum
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)
    if not params:
        return 0.0
    if clip and clip > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
