"""Batched sampling whose result for an example does not depend on the batch it lands in.

Every example owns a random stream, a ``torch.Generator`` seeded from sha256(seed, key). At each step
the row draws one uniform per vocabulary entry from its own stream and takes
``argmax(logits / T + Gumbel noise)``, which is an exact sample from ``softmax(logits / T)`` (the
Gumbel-max trick). A row consumes the same random numbers whatever its neighbours, so batch size,
batch composition and sort order change nothing except through float rounding of the logits (rare
near-ties can flip a token).

The loop is our own rather than ``model.generate``: prompts are left-padded, batches are sorted by
prompt length (little padding), the KV cache is reused, finished rows are dropped from the cache, and
``position_ids`` are computed from the attention mask, which GPT-2 does not do by itself.
"""
from __future__ import annotations

import hashlib
import inspect
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

TRUNCATION_SIDES = ("head", "tail")


def example_seed(seed: int, key: str) -> int:
    """A 63-bit seed from (seed, key), stable across processes (unlike Python's salted ``hash``)."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    for src in (tokenizer.eos_token_id, getattr(gen_cfg, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(i) for i in src)
    if not ids:
        raise ValueError("neither the tokenizer nor the model defines an EOS token")
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_prompt_len: int, side: str,
                    add_special_tokens: bool) -> list[list[int]]:
    fallback = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for p in prompts:
        ids = list(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"])
        if len(ids) > max_prompt_len:
            ids = ids[:max_prompt_len] if side == "head" else ids[-max_prompt_len:]
        out.append(ids or [fallback])   # a model needs at least one token to condition on
    return out


class _NoRepeatNGram:
    """Per-row record of the n-grams seen so far (prompt included, padding excluded), as in HF."""

    def __init__(self, n: int, history: list[int]):
        self.n, self.hist, self.seen = n, list(history), {}
        for end in range(n, len(self.hist) + 1):
            self._add(self.hist[end - n:end])

    def _add(self, gram: list[int]) -> None:
        self.seen.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def push(self, token: int) -> None:
        self.hist.append(token)
        if len(self.hist) >= self.n:
            self._add(self.hist[-self.n:])

    def banned(self) -> set[int]:
        prefix = tuple(self.hist[len(self.hist) - (self.n - 1):]) if self.n > 1 else ()
        return self.seen.get(prefix, set()) if len(self.hist) >= self.n - 1 else set()


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """top-k then nucleus filtering, row by row (each row's result depends on that row only)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (keeps >= 1)
        drop_sorted = (probs.cumsum(-1) - probs) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _pick(logits: torch.Tensor, gens: list[torch.Generator], ngrams: list[_NoRepeatNGram] | None,
          temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    logits = logits.float()
    if ngrams is not None:
        for row, ng in enumerate(ngrams):
            banned = ng.banned()
            if banned:
                logits[row, list(banned)] = float("-inf")
    if temperature <= 0:
        return logits.argmax(-1)   # greedy: no random numbers used
    logits = _filter_logits(logits / temperature, top_k, top_p)
    vocab = logits.shape[-1]
    # One uniform per vocabulary entry from the row's own stream, drawn whatever the filters keep, so
    # the stream's position depends only on the step number.
    u = torch.stack([torch.rand(vocab, generator=g, device=logits.device) for g in gens])
    gumbel = -torch.log(-torch.log(u))
    return (logits + gumbel).argmax(-1)


def _forward_params(model: Any) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _cache_of(out: Any) -> Any:
    # transformers 5.x names the KV cache `cache` (`past_key_values` is a deprecated alias); 4.x does not
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.no_grad()
def _generate_batch(model: Any, batch: list[list[int]], keys: list[str], *, seed: int, pad_id: int,
                    eos: set[int], caps: list[int], temperature: float, top_k: int, top_p: float,
                    no_repeat_ngram_size: int, device: torch.device, params: set[str]) -> list[list[int]]:
    """`caps`: each row's most new tokens (its own room in the model's positions, at most max_new_tokens), so
    a row's output never depends on the length of the other prompts in its batch."""
    use_pos = "position_ids" in params
    cache_kw = "cache" if "cache" in params else "past_key_values"
    n, width = len(batch), max(len(ids) for ids in batch)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    gens = [torch.Generator(device=device).manual_seed(example_seed(seed, k)) for k in keys]
    ngrams = None
    if no_repeat_ngram_size > 0:
        ngrams = [_NoRepeatNGram(no_repeat_ngram_size, ids) for ids in batch]
    out_tokens: list[list[int]] = [[] for _ in range(n)]
    alive = list(range(n))          # batch rows held in the cache, in cache order
    done: set[int] = set()          # rows that ended but could not be pruned from the cache

    kwargs: dict[str, Any] = {"position_ids": positions} if use_pos else {}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1   # the prompt's other logits are never used: skip the big matmul
    out = model(input_ids=input_ids, attention_mask=mask, use_cache=True, **kwargs)
    past, logits = _cache_of(out), out.logits[:, -1, :]
    next_pos = positions[:, -1:] + 1
    can_prune = hasattr(past, "batch_select_indices")

    max_new_tokens = max(caps)
    for step in range(max_new_tokens):
        rows_gens = [gens[r] for r in alive]
        rows_ngrams = [ngrams[r] for r in alive] if ngrams is not None else None
        tokens = _pick(logits, rows_gens, rows_ngrams, temperature, top_k, top_p)
        keep = []
        for j, (row, tok) in enumerate(zip(alive, tokens.tolist())):
            if row in done:
                continue
            if tok in eos:
                done.add(row)
                continue
            out_tokens[row].append(tok)
            if ngrams is not None:
                ngrams[row].push(tok)
            if len(out_tokens[row]) >= caps[row]:   # out of room (or of budget): ends like an EOS, kept out
                done.add(row)
                continue
            keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if can_prune and len(keep) < len(alive):
            idx = torch.tensor(keep, device=device)
            past.batch_select_indices(idx)
            mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        kwargs = {"position_ids": next_pos, cache_kw: past} if use_pos else {cache_kw: past}
        out = model(input_ids=tokens[:, None], attention_mask=mask, use_cache=True, **kwargs)
        past, logits = _cache_of(out), out.logits[:, -1, :]
        next_pos = next_pos + 1
    return out_tokens


def generate_ids(model: Any, tokenizer: Any, prompts: Sequence[str], keys: Sequence[str], *, seed: int,
                 max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 no_repeat_ngram_size: int = 0, batch_size: int = 16, max_prompt_len: int = 256,
                 prompt_truncation: str = "head", add_special_tokens: bool = True,
                 progress: bool = True, pbar: Any = None) -> list[list[int]]:
    """Generated token ids per prompt (EOS excluded), in the order of ``prompts``. See `generate`."""
    if len(prompts) != len(keys):
        raise ValueError(f"{len(prompts)} prompts but {len(keys)} keys")
    if prompt_truncation not in TRUNCATION_SIDES:
        raise ValueError(f"prompt_truncation must be one of {TRUNCATION_SIDES}, got {prompt_truncation!r}")
    if batch_size < 1 or max_new_tokens < 0 or max_prompt_len < 1:
        raise ValueError("batch_size and max_prompt_len must be >= 1, max_new_tokens >= 0")
    if not prompts or max_new_tokens == 0:
        return [[] for _ in prompts]
    encoded = encode_prompts(tokenizer, prompts, max_prompt_len, prompt_truncation, add_special_tokens)
    return generate_from_ids(model, tokenizer, encoded, keys, seed=seed, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             no_repeat_ngram_size=no_repeat_ngram_size, batch_size=batch_size,
                             progress=progress, pbar=pbar)


def generate_from_ids(model: Any, tokenizer: Any, encoded: Sequence[Sequence[int]], keys: Sequence[str], *,
                      seed: int, max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0,
                      top_p: float = 1.0, no_repeat_ngram_size: int = 0, batch_size: int = 16,
                      progress: bool = True, pbar: Any = None) -> list[list[int]]:
    """`generate_ids` for prompts that are token ids already (the training recipes sample from the prompt
    tokens of a training batch, so no decode/encode round trip can change them). Same streams: an
    example's sample depends only on (seed, key), the model and the prompt ids."""
    if len(encoded) != len(keys):
        raise ValueError(f"{len(encoded)} prompts but {len(keys)} keys")
    if batch_size < 1 or max_new_tokens < 0:
        raise ValueError("batch_size must be >= 1, max_new_tokens >= 0")
    if not encoded or max_new_tokens == 0:
        return [[] for _ in encoded]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("every prompt needs at least one token")
    encoded = [list(map(int, ids)) for ids in encoded]
    eos = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    device = next(model.parameters()).device
    params = _forward_params(model)

    limit = max_positions(model)
    caps = [max_new_tokens if limit is None else min(max_new_tokens, limit - len(ids)) for ids in encoded]
    if min(caps) < 1:
        i = caps.index(min(caps))
        raise ValueError(f"prompt {i} has {len(encoded[i])} tokens and the model takes {limit} positions: no room "
                         "for a new token; cut prompts shorter (eval.max_prompt_len / dataset.max_prompt_len)")
    cut = sum(c < max_new_tokens for c in caps)
    if cut:
        warnings.warn(f"{cut} of {len(caps)} prompts leave fewer than max_new_tokens={max_new_tokens} positions "
                      f"of the model's {limit}: their generations stop where the positions end", stacklevel=2)

    # Longest prompts first: least padding per batch, and an out-of-memory shows up at once.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    results: list[list[int]] = [[] for _ in encoded]
    was_training = model.training
    model.eval()
    own_bar = tqdm(total=len(batches), desc="generate", disable=not progress or pbar is not None, leave=False)
    try:
        for idx in batches:
            outs = _generate_batch(
                model, [encoded[i] for i in idx], [str(keys[i]) for i in idx], seed=seed, pad_id=pad_id,
                eos=eos, caps=[caps[i] for i in idx], temperature=temperature, top_k=top_k, top_p=top_p,
                no_repeat_ngram_size=no_repeat_ngram_size, device=device, params=params)
            for i, toks in zip(idx, outs):
                results[i] = toks
            (pbar or own_bar).update(1)
    finally:
        own_bar.close()
        model.train(was_training)
    return results


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], keys: Sequence[str], *, seed: int,
             max_new_tokens: int = 256, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             no_repeat_ngram_size: int = 0, batch_size: int = 16, max_prompt_len: int = 256,
             prompt_truncation: str = "head", add_special_tokens: bool = True,
             progress: bool = True, pbar: Any = None) -> list[str]:
    """Sample one continuation per prompt; the text after the prompt, special tokens removed.

    ``keys`` name the examples (e.g. ``Example.id``): (seed, key) fixes an example's random stream, so
    its output is the same at any ``batch_size``. ``temperature=0`` decodes greedily; ``top_k=0`` and
    ``top_p=1.0`` switch those filters off. Prompts longer than ``max_prompt_len`` tokens keep their
    first tokens (``prompt_truncation="head"``, what MiniLLM's evaluation does) or their last
    (``"tail"``). ``pbar``: an outer progress bar advanced once per batch instead of an own one.
    """
    ids = generate_ids(model, tokenizer, prompts, keys, seed=seed, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_k=top_k, top_p=top_p,
                       no_repeat_ngram_size=no_repeat_ngram_size, batch_size=batch_size,
                       max_prompt_len=max_prompt_len, prompt_truncation=prompt_truncation,
                       add_special_tokens=add_special_tokens, progress=progress, pbar=pbar)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in ids]


__all__ = ["example_seed", "generate", "generate_from_ids", "generate_ids"]
