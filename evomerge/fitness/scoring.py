"""Token-level log-likelihood scoring: lm-eval's request semantics, tokenised once, batched by length.

``RequestEncoder`` turns lm-eval request arguments into token requests exactly
as ``HFLM`` does (``tok_encode``, ``_encode_pair``, the empty-context prefix
token, ``get_rolling_token_windows`` + ``make_disjoint_window`` with the model's
max length). ``PackedRequests`` lays them out once as padded tensors on the
device, so scoring a candidate is only forward passes: no tokenising, no
padding, no Python per token.

Like lm-eval, inputs are right-padded and no attention mask is passed: this is
exact for causal models, whose logits at a position never depend on later ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

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
class _Batch:
    input_ids: torch.Tensor  # (B, P) right-padded with 0, as lm-eval's pad_and_concat
    keep: int  # logits of the last `keep` positions are enough for every scored token
    rows: torch.Tensor  # (N,) row of each scored token
    cols: torch.Tensor  # (N,) position among the kept logits
    targets: torch.Tensor  # (N,) token scored at that position
    owner: torch.Tensor  # (N,) request index of each scored token


def forward_kwargs(model: torch.nn.Module) -> dict[str, bool]:
    """``use_cache=False`` where the model accepts it: scoring never needs a KV cache."""
    params = inspect.signature(model.forward).parameters
    return {"use_cache": False} if "use_cache" in params else {}


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


class PackedRequests:
    """Token requests laid out once as length-sorted, padded batches on ``device``."""

    def __init__(
        self,
        requests: Sequence[TokenRequest],
        *,
        max_length: int,
        device: torch.device,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        self.n_requests = len(requests)
        self.n_tokens = 0
        self.n_padded = 0
        self.batches: list[_Batch] = []
        rows = self._share_rows(requests, max_length)
        rows.sort(key=lambda r: -len(r.input))
        start = 0
        while start < len(rows):
            # Longest first; a batch ends at the token budget or where a row would be more
            # than MAX_PADDING padding, so padded compute stays close to the real tokens.
            width = len(rows[start].input)
            limit = max(1, batch_tokens // width)
            end = start + 1
            while (
                end < len(rows)
                and end - start < limit
                and len(rows[end].input) >= width * (1.0 - MAX_PADDING)
            ):
                end += 1
            self.batches.append(self._pack(rows[start:end], requests, width, device))
            self.n_padded += (end - start) * width
            start = end

    @staticmethod
    def _share_rows(requests: Sequence[TokenRequest], max_length: int) -> list[_Row]:
        """One input row per distinct input; a request whose input is a prefix of another
        request's input (same context, e.g. the choices of one multiple-choice item) reads
        its logits from that longer row. Exact for causal models: logits at a position only
        depend on the tokens up to it. lm-eval does the identical-input half of this for
        one-token continuations.
        """
        inputs: list[tuple[int, ...]] = []
        for i, req in enumerate(requests):
            if not req.context or not req.continuation:
                raise ValueError(f"request {i} has an empty context or continuation")
            if len(req.continuation) > max_length:
                raise ValueError(f"request {i}: continuation longer than max_length {max_length}")
            # HFLM: (context + continuation)[-(max_length + 1):][:-1], left-truncated.
            inputs.append((req.context + req.continuation)[-(max_length + 1) :][:-1])
        rows: list[_Row] = []
        by_input: dict[tuple[int, ...], _Row] = {}
        by_context: dict[tuple[int, ...], list[_Row]] = {}
        for i in sorted(range(len(requests)), key=lambda k: -len(inputs[k])):
            req, inp = requests[i], inputs[i]
            untruncated = len(req.context) + len(req.continuation) <= max_length + 1
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
        self,
        chunk: list[_Row],
        requests: Sequence[TokenRequest],
        width: int,
        device: torch.device,
    ) -> _Batch:
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        first = min(start for row in chunk for _, start in row.members)
        rows, cols, targets, owner = [], [], [], []
        for b, row in enumerate(chunk):
            ids[b, : len(row.input)] = torch.tensor(row.input, dtype=torch.long)
            self.n_tokens += len(row.input)
            for req_i, start in row.members:
                # logits at positions start, start+1, ... predict the continuation tokens
                for j, tok in enumerate(requests[req_i].continuation):
                    rows.append(b)
                    cols.append(start + j - first)
                    targets.append(tok)
                    owner.append(req_i)

        def as_tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return _Batch(
            input_ids=ids.to(device),
            keep=width - first,
            rows=as_tensor(rows),
            cols=as_tensor(cols),
            targets=as_tensor(targets),
            owner=as_tensor(owner),
        )

    @torch.inference_mode()
    def score(
        self, model: torch.nn.Module, *, autocast_dtype: torch.dtype | None = None
    ) -> tuple[list[float], list[bool]]:
        """Summed log-likelihood and is-greedy of every request, in request order."""
        device = self.batches[0].input_ids.device if self.batches else torch.device("cpu")
        total = torch.zeros(self.n_requests, dtype=torch.float64, device=device)
        misses = torch.zeros(self.n_requests, dtype=torch.long, device=device)
        kwargs: dict[str, object] = dict(forward_kwargs(model))
        trim = _accepts_logits_to_keep(model)
        for batch in self.batches:
            if trim:
                kwargs["logits_to_keep"] = batch.keep
            with torch.autocast(
                device_type=device.type,
                dtype=autocast_dtype or torch.bfloat16,
                enabled=autocast_dtype is not None,
            ):
                logits = model(input_ids=batch.input_ids, **kwargs).logits  # (B, K|P, V)
            if logits.shape[1] != batch.keep:
                logits = logits[:, -batch.keep :]
            # The scored positions' log-softmax, a slice of rows at a time: gathering all N
            # rows at once would hold two more logits-sized tensors (the copy, logsumexp's
            # temporary) beside the logits at the run's memory peak.
            step = max(1, _SCORE_ELEMENTS // logits.shape[-1])
            for i in range(0, batch.rows.numel(), step):
                rows, targets = batch.rows[i : i + step], batch.targets[i : i + step]
                picked = logits[rows, batch.cols[i : i + step]].float()  # (n, V)
                token_ll = picked.gather(1, targets[:, None]).squeeze(1) - picked.logsumexp(-1)
                owner = batch.owner[i : i + step]
                total.index_add_(0, owner, token_ll.double())
                misses.index_add_(0, owner, (picked.argmax(-1) != targets).long())
        return total.tolist(), (misses == 0).tolist()
