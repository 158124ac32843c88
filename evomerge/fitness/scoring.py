"""Token-level log-likelihood scoring: lm-eval's request semantics, tokenised once, batched by length.

``RequestEncoder`` turns lm-eval request arguments into token requests exactly
as ``HFLM`` does (``tok_encode``, ``_encode_pair``, the empty-context prefix
token, ``get_rolling_token_windows`` + ``make_disjoint_window`` with the model's
max length). ``PackedRequests`` lays them out once as padded tensors on the
device, so scoring a candidate is only forward passes: no tokenising, no
padding, no Python per token.

Like lm-eval, inputs are right-padded and no attention mask is passed: this is
exact for causal models, whose logits at a position never depend on later ones.

Requests that share a context (the choices of a multiple-choice item) are, for
models with a transformers KV cache, scored from one forward of the context and
one of the continuations against its cached keys/values (``_ContextBatch``):
the same numbers up to float rounding, for a fraction of the tokens. Models
without a cache (TRM x Titans-MAG) use the row layout, where such requests
still share a row when one input is a prefix of another.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: Tokens per forward batch (rows x padded length). Bounds the logits tensor.
DEFAULT_BATCH_TOKENS = 8192
#: Largest fraction of a batch row that may be padding (rows are sorted by length).
MAX_PADDING = 0.125
#: Scored positions' logits gathered (in fp32) per step: 2^22 elements = 16 MiB.
_SCORE_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TokenRequest:
    """Score ``continuation`` given ``context`` (lm-eval's ``(context_enc, continuation_enc)``)."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


class RequestEncoder:
    """HFLM's tokenisation of loglikelihood and rolling requests, without a model."""

    def __init__(
        self,
        tokenizer,
        max_length: int,
        *,
        add_bos_token: bool | None = None,
        prefix_token_id: int | None = None,
    ) -> None:
        from lm_eval.models.utils import _add_special_kwargs, has_bos_prefix

        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.add_bos_token = add_bos_token
        if prefix_token_id is None:
            prefix_token_id = (
                tokenizer.bos_token_id
                if tokenizer.bos_token_id is not None
                else tokenizer.eos_token_id
            )
        if prefix_token_id is None:
            raise ValueError("tokenizer has neither a bos nor an eos token to use as prefix token")
        self.prefix_token_id = int(prefix_token_id)
        self._special = _add_special_kwargs
        self._has_bos_prefix = has_bos_prefix
        self._prefix_str = tokenizer.decode(self.prefix_token_id)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None) -> list[int]:
        """``HFLM.tok_encode``."""
        kwargs = self._special(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and self._has_bos_prefix(string, self._prefix_str):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(string, **kwargs))

    def loglikelihood(self, context: str, continuation: str) -> TokenRequest:
        """``TemplateLM.loglikelihood`` for one pair (trailing context spaces move to the continuation)."""
        if context == "":
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if self.prefix_token_id != cont[0]:
                return TokenRequest((self.prefix_token_id,), tuple(cont))
            return TokenRequest(tuple(cont[:1]), tuple(cont[1:]))
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return TokenRequest(tuple(ctx), tuple(whole[len(ctx) :]))

    def rolling(self, text: str) -> list[TokenRequest]:
        """``HFLM.loglikelihood_rolling``'s disjoint windows (context_len=1) of one document."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows = get_rolling_token_windows(
            token_list=self.tok_encode(text),
            prefix_token=self.prefix_token_id,
            max_seq_len=self.max_length,
            context_len=1,
        )
        return [
            TokenRequest(tuple(ctx), tuple(cont))
            for ctx, cont in map(make_disjoint_window, windows)
        ]


#: Prefix sharing is only searched among this many rows with one context (MC choices).
_PREFIX_GROUP_MAX = 16


@dataclass
class _Row:
    input: tuple[int, ...]
    members: list[tuple[int, int]] = field(default_factory=list)  # (request, first scored pos)


@dataclass
class _Scored:
    """Where in one forward's logits each scored token is, and whose it is."""

    rows: torch.Tensor  # (N,) row of each scored token
    cols: torch.Tensor  # (N,) position among the forward's kept logits
    targets: torch.Tensor  # (N,) token scored there
    owner: torch.Tensor  # (N,) request index


@dataclass
class _Batch:
    input_ids: torch.Tensor  # (B, P) right-padded with 0, as lm-eval's pad_and_concat
    keep: int  # logits of the last `keep` positions are enough for every scored token
    scored: _Scored


@dataclass
class _ContextBatch:
    """Distinct contexts forwarded once; every continuation then reads their cached keys/values.

    The first token of each continuation is scored from the context pass (its
    last real position), the others from the continuation pass, whose rows are
    the continuations minus their last token, placed after their context with
    ``position_ids`` and an attention mask that hides the context's padding.
    """

    context_ids: torch.Tensor  # (G, W) right-padded contexts
    context_mask: torch.Tensor  # (G, W) 1 on real context tokens
    keep: int  # context logits of the last `keep` positions hold every first-token score
    first: _Scored  # first continuation tokens, scored from the context pass
    choice_context: torch.Tensor  # (R,) context row of each continuation row
    choice_ids: torch.Tensor  # (R, K) continuations without their last token, right-padded
    choice_positions: torch.Tensor  # (R, K) position ids: context length + j
    rest: _Scored  # continuation tokens 2.., scored from the continuation pass


def supports_context_cache(model: torch.nn.Module, span: int, *, own_cache: bool = False) -> bool:
    """A transformers model that takes and returns a KV cache, for inputs of ``span`` tokens:
    full attention, or a sliding window no shorter than ``span`` (so the cache drops nothing
    and the mask is plain causal). With ``own_cache``, also a model that declares its own
    cache continues any context exactly (``exact_context_continuation``: TRM x Titans-MAG).
    Anything else keeps the row layout."""
    params = inspect.signature(model.forward).parameters
    if _cache_argument(model) is None or not {"use_cache", "position_ids"} <= set(params):
        return False
    if getattr(model, "exact_context_continuation", False):
        return own_cache
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        windowed = bool(window) and getattr(config, "use_sliding_window", True)
        layer_types = ["sliding_attention" if windowed else "full_attention"]
    for kind in set(layer_types):
        if kind == "sliding_attention" and window and span <= int(window):
            continue
        if kind != "full_attention":
            return False
    return True


def _cache_argument(model: torch.nn.Module) -> str | None:
    """The forward argument that takes a KV cache: ``cache`` from transformers 5.2x,
    ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def forward_kwargs(model: torch.nn.Module) -> dict[str, bool]:
    """``use_cache=False`` where the model accepts it: scoring never needs a KV cache."""
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


class PackedRequests:
    """Token requests laid out once as length-sorted, padded batches on ``device``.

    Two layouts of the same requests are kept (both are only token ids): ``batches``
    for any causal model, and ``context_batches`` + ``context_rest`` for models that
    ``supports_context_cache``. ``score`` picks one per model.
    """

    def __init__(
        self,
        requests: Sequence[TokenRequest],
        *,
        max_length: int,
        device: torch.device,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        self.n_requests = len(requests)
        for i, req in enumerate(requests):
            if not req.context or not req.continuation:
                raise ValueError(f"request {i} has an empty context or continuation")
            if len(req.continuation) > max_length:
                raise ValueError(f"request {i}: continuation longer than max_length {max_length}")
        every = range(len(requests))
        self.batches, self.n_tokens, self.n_padded = _row_batches(
            requests, every, max_length, device, batch_tokens
        )
        groups = _shared_contexts(requests, max_length)
        grouped = {i for members in groups for i in members}
        rest = [i for i in every if i not in grouped]
        self.context_rest, rest_tokens, _ = _row_batches(
            requests, rest, max_length, device, batch_tokens
        )
        self.context_batches = _context_batches(requests, groups, device, batch_tokens)
        #: Longest context + continuation input of the cached-context layout.
        self.context_span = max(
            (len(_model_input(requests[i], max_length)) for g in groups for i in g), default=0
        )
        #: Input tokens forwarded per candidate in the cached-context layout.
        self.n_tokens_context = rest_tokens + sum(
            int(b.context_mask.sum()) + b.rest.rows.numel() for b in self.context_batches
        )

    def can_share_contexts(self, model: torch.nn.Module, mode: str = "auto") -> bool:
        """Whether ``score`` takes the cached-context layout for ``model`` under
        ``fitness.shared_contexts`` = ``mode`` (auto | on | off)."""
        if mode == "off" or not self.context_batches:
            return False
        return supports_context_cache(model, self.context_span, own_cache=mode == "on")

    @torch.inference_mode()
    def score(
        self,
        model: torch.nn.Module,
        *,
        autocast_dtype: torch.dtype | None = None,
        context_cache: bool | None = None,
    ) -> tuple[list[float], list[bool]]:
        """Summed log-likelihood and is-greedy of every request, in request order.

        ``context_cache`` (default: ``can_share_contexts(model)``) scores shared contexts
        once, through the model's cache.
        """
        use_cache = self.can_share_contexts(model) if context_cache is None else context_cache
        rows = self.context_rest if use_cache else self.batches
        total, misses = self._forward(
            model, rows, self.context_batches if use_cache else [], autocast_dtype
        )
        return total.tolist(), (misses == 0).tolist()

    @torch.inference_mode()
    def forward_largest(
        self,
        model: torch.nn.Module,
        *,
        autocast_dtype: torch.dtype | None = None,
        context_cache: bool = False,
    ) -> int:
        """Score only the batch with the most input tokens of the layout ``score`` would use
        (its results are dropped); returns those tokens. What ``batch_tokens: auto`` measures."""
        rows = self.context_rest if context_cache else self.batches
        contexts = self.context_batches if context_cache else []
        sized: list[tuple[int, _Batch | None, _ContextBatch | None]]
        sized = [(b.input_ids.numel(), b, None) for b in rows]
        sized += [(c.context_ids.numel() + c.choice_ids.numel(), None, c) for c in contexts]
        if not sized:
            return 0
        tokens, row, context = max(sized, key=lambda item: item[0])
        self._forward(model, [row] if row else [], [context] if context else [], autocast_dtype)
        return tokens

    def _forward(
        self,
        model: torch.nn.Module,
        rows: Sequence[_Batch],
        contexts: Sequence[_ContextBatch],
        autocast_dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed log-likelihood, missed greedy tokens) per request over these batches."""
        device = self.batches[0].input_ids.device if self.batches else torch.device("cpu")
        total = torch.zeros(self.n_requests, dtype=torch.float64, device=device)
        misses = torch.zeros(self.n_requests, dtype=torch.long, device=device)
        kwargs: dict[str, object] = dict(forward_kwargs(model))
        trim = _accepts_logits_to_keep(model)
        with torch.autocast(
            device_type=device.type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        ):
            for batch in rows:
                if trim:
                    kwargs["logits_to_keep"] = batch.keep
                logits = model(input_ids=batch.input_ids, **kwargs).logits  # (B, K|P, V)
                _accumulate(logits[:, -batch.keep :], batch.scored, total, misses)
            for cb in contexts:
                self._score_shared_context(model, cb, trim, total, misses)
        return total, misses

    @staticmethod
    def _score_shared_context(
        model: torch.nn.Module,
        cb: _ContextBatch,
        trim: bool,
        total: torch.Tensor,
        misses: torch.Tensor,
    ) -> None:
        extra = {"logits_to_keep": cb.keep} if trim else {}
        out = model(
            input_ids=cb.context_ids, attention_mask=cb.context_mask, use_cache=True, **extra
        )
        _accumulate(out.logits[:, -cb.keep :], cb.first, total, misses)
        if cb.choice_ids.shape[1] == 0:  # every continuation is one token
            return
        cache = getattr(out, "cache", None)  # transformers 5.2x; past_key_values before
        if cache is None:
            cache = out.past_key_values
        cache.reorder_cache(cb.choice_context)  # one copy of its context per continuation
        mask = torch.cat(
            (cb.context_mask[cb.choice_context], torch.ones_like(cb.choice_ids)), dim=1
        )
        logits = model(
            input_ids=cb.choice_ids,
            attention_mask=mask,
            position_ids=cb.choice_positions,
            use_cache=True,
            **{str(_cache_argument(model)): cache},
        ).logits
        _accumulate(logits, cb.rest, total, misses)


def _accumulate(
    logits: torch.Tensor,  # (B, K, V): the kept positions of one forward
    scored: _Scored,
    total: torch.Tensor,
    misses: torch.Tensor,
) -> None:
    """Add the scored tokens' log-probabilities and greedy misses to their requests.

    The scored positions' log-softmax is taken a slice of rows at a time: gathering
    all N rows at once would hold two more logits-sized tensors (the copy,
    logsumexp's temporary) beside the logits at the run's memory peak.
    """
    step = max(1, _SCORE_ELEMENTS // logits.shape[-1])
    for i in range(0, scored.rows.numel(), step):
        rows, targets = scored.rows[i : i + step], scored.targets[i : i + step]
        picked = logits[rows, scored.cols[i : i + step]].float()  # (n, V)
        token_ll = picked.gather(1, targets[:, None]).squeeze(1) - picked.logsumexp(-1)
        owner = scored.owner[i : i + step]
        total.index_add_(0, owner, token_ll.double())
        misses.index_add_(0, owner, (picked.argmax(-1) != targets).long())


def _as_tensor(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _scored(columns: Sequence[list[int]], device: torch.device) -> _Scored:
    """``columns``: the rows, cols, targets and owners of the scored tokens."""
    rows, cols, targets, owner = (_as_tensor(v, device) for v in columns)
    return _Scored(rows=rows, cols=cols, targets=targets, owner=owner)


def _model_input(req: TokenRequest, max_length: int) -> tuple[int, ...]:
    """HFLM: (context + continuation)[-(max_length + 1):][:-1], left-truncated."""
    return (req.context + req.continuation)[-(max_length + 1) :][:-1]


def _untruncated(req: TokenRequest, max_length: int) -> bool:
    return len(req.context) + len(req.continuation) <= max_length + 1


def _row_batches(
    requests: Sequence[TokenRequest],
    indices: Sequence[int],
    max_length: int,
    device: torch.device,
    batch_tokens: int,
) -> tuple[list[_Batch], int, int]:
    """The row layout of ``requests[indices]``: batches, real tokens, padded tokens."""
    rows = _share_rows(requests, indices, max_length)
    rows.sort(key=lambda r: -len(r.input))
    batches: list[_Batch] = []
    n_tokens = n_padded = 0
    start = 0
    while start < len(rows):
        # Longest first; a batch ends at the token budget or where a row would be more
        # than MAX_PADDING padding, so padded compute stays close to the real tokens.
        width = len(rows[start].input)
        end = _batch_end(rows, start, lambda r: len(r.input), lambda r, w: w, batch_tokens)
        batches.append(_pack(rows[start:end], requests, width, device))
        n_tokens += sum(len(r.input) for r in rows[start:end])
        n_padded += (end - start) * width
        start = end
    return batches, n_tokens, n_padded


def _batch_end(
    items: Sequence[Any],
    start: int,
    length: Callable[[Any], int],
    tokens: Callable[[Any, int], int],
    batch_tokens: int,
) -> int:
    """Where a batch of length-sorted ``items`` from ``start`` ends: before the tokens it
    forwards (``tokens(item, width)`` each, at the batch's width) would exceed
    ``batch_tokens``, or at the first item more than MAX_PADDING shorter than the first."""
    width = length(items[start])
    used = tokens(items[start], width)
    end = start + 1
    while (
        end < len(items)
        and used + tokens(items[end], width) <= batch_tokens
        and length(items[end]) >= width * (1.0 - MAX_PADDING)
    ):
        used += tokens(items[end], width)
        end += 1
    return end


def _share_rows(
    requests: Sequence[TokenRequest], indices: Sequence[int], max_length: int
) -> list[_Row]:
    """One input row per distinct input; a request whose input is a prefix of another
    request's input (same context, e.g. the choices of one multiple-choice item) reads
    its logits from that longer row. Exact for causal models: logits at a position only
    depend on the tokens up to it. lm-eval does the identical-input half of this for
    one-token continuations.
    """
    inputs = {i: _model_input(requests[i], max_length) for i in indices}
    rows: list[_Row] = []
    by_input: dict[tuple[int, ...], _Row] = {}
    by_context: dict[tuple[int, ...], list[_Row]] = {}
    for i in sorted(indices, key=lambda k: -len(inputs[k])):
        req, inp = requests[i], inputs[i]
        untruncated = _untruncated(req, max_length)
        row = by_input.get(inp)
        if row is None and untruncated:
            hosts = by_context.get(req.context, [])
            if len(hosts) <= _PREFIX_GROUP_MAX:
                row = next((h for h in hosts if h.input[: len(inp)] == inp), None)
        if row is None:
            row = _Row(inp)
            rows.append(row)
            by_input[inp] = row
            if untruncated:
                by_context.setdefault(req.context, []).append(row)
        row.members.append((i, len(inp) - len(req.continuation)))
    return rows


def _pack(
    chunk: list[_Row], requests: Sequence[TokenRequest], width: int, device: torch.device
) -> _Batch:
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    first = min(start for row in chunk for _, start in row.members)
    rows, cols, targets, owner = [], [], [], []
    for b, row in enumerate(chunk):
        ids[b, : len(row.input)] = torch.tensor(row.input, dtype=torch.long)
        for req_i, start in row.members:
            # logits at positions start, start+1, ... predict the continuation tokens
            for j, tok in enumerate(requests[req_i].continuation):
                rows.append(b)
                cols.append(start + j - first)
                targets.append(tok)
                owner.append(req_i)
    return _Batch(
        input_ids=ids.to(device),
        keep=width - first,
        scored=_scored((rows, cols, targets, owner), device),
    )


def _shared_contexts(requests: Sequence[TokenRequest], max_length: int) -> list[list[int]]:
    """Request indices grouped by context, where forwarding the context once saves more
    tokens than the continuations cost: the choices of a multiple-choice item, not the
    one-token prefix of every rolling window."""
    by_context: dict[tuple[int, ...], list[int]] = {}
    for i, req in enumerate(requests):
        if _untruncated(req, max_length):
            by_context.setdefault(req.context, []).append(i)
    return [
        members
        for context, members in by_context.items()
        if (len(members) - 1) * len(context) > sum(len(requests[i].continuation) for i in members)
    ]


def _context_batches(
    requests: Sequence[TokenRequest],
    groups: list[list[int]],
    device: torch.device,
    batch_tokens: int,
) -> list[_ContextBatch]:
    """Context groups, longest context first, batched so that the cache copied once per
    continuation holds no more tokens than ``batch_tokens`` (with the rows' MAX_PADDING:
    more, tried up to 0.75 to save continuation forwards, bought no speed on the CPU)."""
    groups = sorted(groups, key=lambda g: -len(requests[g[0]].context))

    def cached_tokens(group: list[int], width: int) -> int:  # each continuation's copy
        return sum(width + len(requests[i].continuation) for i in group)

    out: list[_ContextBatch] = []
    start = 0
    while start < len(groups):
        end = _batch_end(
            groups, start, lambda g: len(requests[g[0]].context), cached_tokens, batch_tokens
        )
        out.append(_pack_contexts(requests, groups[start:end], device))
        start = end
    return out


def _pack_contexts(
    requests: Sequence[TokenRequest], groups: list[list[int]], device: torch.device
) -> _ContextBatch:
    lengths = [len(requests[g[0]].context) for g in groups]
    width = max(lengths)
    keep = width - (min(lengths) - 1)
    ids = torch.zeros((len(groups), width), dtype=torch.long)
    mask = torch.zeros((len(groups), width), dtype=torch.long)
    first: tuple[list[int], ...] = ([], [], [], [])
    rest: tuple[list[int], ...] = ([], [], [], [])
    choice_context: list[int] = []
    choices: list[tuple[int, ...]] = []
    for g, (members, n) in enumerate(zip(groups, lengths, strict=True)):
        ids[g, :n] = torch.tensor(requests[members[0]].context, dtype=torch.long)
        mask[g, :n] = 1
        for i in members:
            cont = requests[i].continuation
            for column, value in zip(first, (g, n - 1 - (width - keep), cont[0], i), strict=True):
                column.append(value)
            r = len(choices)
            for j, tok in enumerate(cont[1:]):  # token j+1 is predicted at choice position j
                for column, value in zip(rest, (r, j, tok, i), strict=True):
                    column.append(value)
            choice_context.append(g)
            choices.append(cont[:-1])
    k = max(len(c) for c in choices)
    choice_ids = torch.zeros((len(choices), k), dtype=torch.long)
    positions = torch.zeros((len(choices), k), dtype=torch.long)
    for r, (c, g) in enumerate(zip(choices, choice_context, strict=True)):
        choice_ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
        positions[r] = lengths[g] + torch.arange(k)
    return _ContextBatch(
        context_ids=ids.to(device),
        context_mask=mask.to(device),
        keep=keep,
        first=_scored(first, device),
        choice_context=_as_tensor(choice_context, device),
        choice_ids=choice_ids.to(device),
        choice_positions=positions.to(device),
        rest=_scored(rest, device),
    )
