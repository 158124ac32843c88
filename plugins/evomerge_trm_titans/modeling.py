"""TRM x Titans-MAG: a tiny recursive causal LM whose blocks gate attention with a test-time memory.

Read bottom-up: RMSNorm, RoPE, sliding-window attention with persistent
tokens, the Titans neural memory, the MAG block, then the TRM recursion and
the transformers wrappers. Sources: TRM (Jolicoeur-Martineau 2025,
SamsungSAILMontreal/TinyRecursiveModels) and Titans MAG (Behrouz, Zhong,
Mirrokni 2024; reference code lucidrains/titans-pytorch).

Only learned weights are parameters. Runtime state (the memory's fast
weights and momentum, RoPE tables, masks) lives in local variables of one
forward, so it is never saved, never merged and never leaks between calls.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

try:  # transformers >= 5: init functions that respect already-loaded weights
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init  # type: ignore[no-redef]

from .configuration import TrmTitansConfig

# Offsets added to the memory's gate logits, so that a zero-initialised bias
# starts at a sensible rate (and merging biases stays a plain average):
#: The output field that holds a cache: ``cache`` from transformers 5.2x, ``past_key_values`` before.
CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)

STEP_OFFSET = -3.0  # theta = sigmoid(-3) ~ 0.05: small writes per token at init
MOMENTUM_OFFSET = 0.0  # eta ~ 0.5
FORGET_OFFSET = -5.0  # alpha ~ 0.007: M0 survives a whole sequence at init


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(
    position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (B, 1, T, D) for ``position_ids`` (B, T); computed per forward, never stored."""
    device = position_ids.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def attention_mask_for(
    seq_len: int, n_persistent: int, window: int, key_padding: torch.Tensor | None
) -> torch.Tensor:
    """Boolean mask (B|1, 1, T, P+T), True = may attend: every persistent key, plus
    the sequence keys j with i - window < j <= i (and not padding)."""
    device = key_padding.device if key_padding is not None else None
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    local = (j <= i) & (j > i - window)  # (T, T)
    prefix = torch.ones(seq_len, n_persistent, dtype=torch.bool, device=device)
    mask = torch.cat((prefix, local), dim=1)[None, None]  # (1, 1, T, P+T)
    if key_padding is not None:
        keep = F.pad(key_padding.bool(), (n_persistent, 0), value=True)  # (B, P+T)
        mask = mask & keep[:, None, None, :]
    return mask


class SlidingWindowAttention(nn.Module):
    """Causal attention over the last ``sliding_window`` tokens plus learned persistent K/V."""

    def __init__(self, config: TrmTitansConfig) -> None:
        super().__init__()
        c, self.n_head, self.head_dim = (
            config.hidden_size,
            config.num_attention_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(c, c, bias=False)
        self.k_proj = nn.Linear(c, c, bias=False)
        self.v_proj = nn.Linear(c, c, bias=False)
        self.o_proj = nn.Linear(c, c, bias=False)
        p = config.num_persistent_tokens
        # Task knowledge independent of the input; no RoPE (they have no position).
        self.persistent_k = nn.Parameter(torch.zeros(self.n_head, p, self.head_dim))
        self.persistent_v = nn.Parameter(torch.zeros(self.n_head, p, self.head_dim))
        self.config = config

    def forward(
        self,
        a: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        slot: _LayerContext | None = None,
    ) -> torch.Tensor:
        B, T, C = a.shape
        q = self.q_proj(a).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(a).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = self.v_proj(a).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if slot is not None and slot.reading:  # the context's window, cached, comes first
            k, v = torch.cat((slot.keys, k), dim=2), torch.cat((slot.values, v), dim=2)
        elif slot is not None:  # keep the keys/values of each context's last positions
            slot.keys, slot.values = slot.plan.last(k, dim=2), slot.plan.last(v, dim=2)
        pk = self.persistent_k.to(a.dtype).expand(B, -1, -1, -1)  # (B, H, P, D)
        pv = self.persistent_v.to(a.dtype).expand(B, -1, -1, -1)
        k, v = torch.cat((pk, k), dim=2), torch.cat((pv, v), dim=2)  # (B, H, P+T, D)
        if self.config._attn_implementation == "eager":
            att = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5  # (B, H, T, P+T)
            att = att.float().masked_fill(~mask, float("-inf")).softmax(dim=-1).to(v.dtype)
            y = att @ v  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class NeuralMemory(nn.Module):
    """Titans long-term memory: per head an MLP ``M(k) = silu(k W1) W2`` trained at test time.

    Chunk c is read with M_{c-1}, then written with the closed-form gradient of
    ``||M(k) - v||^2`` taken at M_{c-1} for each of its tokens, weighted by the
    token's step size theta and summed; momentum eta and forgetting alpha act
    per chunk (their per-token values averaged over the chunk):
    ``S_c = eta_c S_{c-1} - grad_c``, ``M_c = (1 - alpha_c) M_{c-1} + S_c``.
    Everything not depending on M is computed for the whole sequence at once;
    the loop over chunks holds only what needs M_{c-1} (5 batched matmuls).
    The recurrence runs in float32: small updates would vanish in bfloat16.
    """

    def __init__(self, config: TrmTitansConfig) -> None:
        super().__init__()
        c, h, d = config.hidden_size, config.memory_heads, config.memory_head_dim
        self.n_head, self.head_dim, self.chunk = h, d, config.memory_chunk_size
        self.q_proj = nn.Linear(c, h * d, bias=False)
        self.k_proj = nn.Linear(c, h * d, bias=False)
        self.v_proj = nn.Linear(c, h * d, bias=False)
        self.o_proj = nn.Linear(h * d, c, bias=False)
        self.step_proj = nn.Linear(c, h)  # theta_t
        self.momentum_proj = nn.Linear(c, h)  # eta_t
        self.forget_proj = nn.Linear(c, h)  # alpha_t
        e = config.memory_expansion * d
        self.w1_init = nn.Parameter(torch.zeros(h, d, e))  # M0, layer 1 (in x out)
        self.w2_init = nn.Parameter(torch.zeros(h, e, d))  # M0, layer 2
        self.config = config

    def forward(
        self,
        a: torch.Tensor,
        write_mask: torch.Tensor | None = None,
        slot: _LayerContext | None = None,
    ) -> torch.Tensor:
        if slot is not None and slot.reading:  # from the context's last chunk boundary on
            a = slot.plan.memory_input(slot.tail, a)
            write_mask = slot.plan.memory_write
        elif slot is not None:
            slot.tail = slot.plan.last(a, dim=1, n=self.chunk - 1)
        B, T, _ = a.shape
        # The projections run under the caller's autocast; the fast-weight recurrence below
        # runs in float32 with autocast off: its in-place state updates must keep one dtype,
        # and chunk-after-chunk accumulation in bf16 would drift.
        q, k, v = self.q_proj(a), self.k_proj(a), self.v_proj(a)
        step, momentum, forget = self.step_proj(a), self.momentum_proj(a), self.forget_proj(a)
        with torch.autocast(a.device.type, enabled=False):
            out = self._recurrence(B, T, q, k, v, step, momentum, forget, write_mask, slot)
        out = self._merge_heads(out, B, T)
        if slot is not None and slot.reading:
            out = slot.plan.memory_output(out)
        return out

    def _recurrence(
        self,
        B: int,
        T: int,
        q_raw: torch.Tensor,  # (B, T, H*D), and k_raw, v_raw
        k_raw: torch.Tensor,
        v_raw: torch.Tensor,
        step_raw: torch.Tensor,  # (B, T, H) gate logits, and momentum_raw, forget_raw
        momentum_raw: torch.Tensor,
        forget_raw: torch.Tensor,
        write_mask: torch.Tensor | None,
        slot: _LayerContext | None = None,
    ) -> torch.Tensor:
        """The memory's reads over the sequence, chunk by chunk: (B*H, T, D) float32.

        With a ``slot`` it either starts from a context's cached state (reading) or
        records, per row, the state after that row's ``plan.chunks`` chunks (building).
        """
        H, D, L = self.n_head, self.head_dim, self.chunk

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, T, H*D) -> (B*H, T, D) float32
            return t.float().view(B, T, H, D).transpose(1, 2).reshape(B * H, T, D)

        q = F.normalize(heads(q_raw), dim=-1)  # unit keys/queries bound the write size
        w1 = self.w1_init.float().repeat(B, 1, 1)  # (B*H, D, E)
        w2 = self.w2_init.float().repeat(B, 1, 1)  # (B*H, E, D)
        s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
        if slot is not None and slot.reading:  # a cache serves one continuation: updated in place
            w1, w2, s1, s2 = slot.state
        if not self.config.use_memory:  # frozen at M0: a plain per-head MLP
            if slot is not None and not slot.reading:
                slot.state = (w1, w2, s1, s2)
            return F.silu(q @ w1) @ w2  # (B*H, T, D)

        k = F.normalize(heads(k_raw), dim=-1)
        v = heads(v_raw)

        def per_head(t: torch.Tensor, offset: float) -> torch.Tensor:  # (B, T, H) -> (B*H, T)
            return torch.sigmoid(t.float() + offset).transpose(1, 2).reshape(B * H, T)

        theta = per_head(step_raw, STEP_OFFSET)
        eta = per_head(momentum_raw, MOMENTUM_OFFSET)
        alpha = per_head(forget_raw, FORGET_OFFSET)
        if write_mask is not None:  # padding never writes nor forgets
            real = write_mask.float().repeat_interleave(H, dim=0)  # (B*H, T)
            theta, alpha = theta * real, alpha * real

        pad = (-T) % L  # a ragged last chunk is padded; its outputs are dropped
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            theta, eta, alpha = (F.pad(t, (0, pad)) for t in (theta, eta, alpha))
        n_chunks = (T + pad) // L
        qk = torch.cat(  # (B*H, N, 2L, D): each chunk's read rows, then its write rows
            (q.view(B * H, n_chunks, L, D), k.view(B * H, n_chunks, L, D)), dim=2
        )
        k_t = k.view(B * H, n_chunks, L, D).transpose(2, 3)  # (B*H, N, D, L)
        v = v.view(B * H, n_chunks, L, D)
        theta = theta.view(B * H, n_chunks, L, 1)
        eta = eta.view(B * H, n_chunks, L).mean(-1)[..., None, None]  # (B*H, N, 1, 1)
        keep = 1.0 - alpha.view(B * H, n_chunks, L).mean(-1)[..., None, None]
        # Without autograd (evaluation, TRM's no-grad cycles) the state is updated in place.
        in_place = not torch.is_grad_enabled()

        building = slot is not None and not slot.reading
        if building:  # rows whose context ends in the first chunk keep the initial state
            assert slot is not None
            captured = [t.clone() for t in (w1, w2, s1, s2)]
            done = slot.plan.chunks.repeat_interleave(H)  # (B*H,) chunks before the boundary
        # a context that fills its last chunk needs that chunk's write (else never read)
        last_write = building and int(done.max()) == n_chunks
        outs = []
        for c in range(n_chunks):
            u = qk[:, c] @ w1  # (B*H, 2L, E)
            hid = F.silu(u)
            pred = hid @ w2  # (B*H, 2L, D)
            outs.append(pred[:, :L])
            if c == n_chunks - 1 and not last_write:
                break  # the last write would never be read
            uk, hk = u[:, L:], hid[:, L:]
            # Normalised write (NLMS): each token's step is theta / (L * (1 + |h|^2)), the
            # chunk's mean step scaled by the memory's curvature, so fast-weight updates stay
            # stable however large the hidden code grows (a plain theta diverged in training).
            step = theta[:, c] / (L * (1.0 + hk.pow(2).sum(-1, keepdim=True)))  # (B*H, L, 1)
            err = (pred[:, L:] - v[:, c]) * step  # (B*H, L, D), step-weighted error
            sk = torch.sigmoid(uk)
            delta = (err @ w2.transpose(1, 2)) * (sk * (1.0 + uk * (1.0 - sk)))  # silu'(u)
            # grad W1 = 2 k^T delta, grad W2 = 2 h^T err (summed over the chunk's tokens)
            s1, w1 = _momentum_step(s1, w1, k_t[:, c], delta, eta[:, c], keep[:, c], in_place)
            s2, w2 = _momentum_step(
                s2, w2, hk.transpose(1, 2), err, eta[:, c], keep[:, c], in_place
            )
            if building and bool((done == c + 1).any()):
                rows = (done == c + 1).nonzero().squeeze(1)
                for kept, now in zip(captured, (w1, w2, s1, s2), strict=True):
                    kept.index_copy_(0, rows, now.index_select(0, rows))
        if building:
            assert slot is not None
            slot.state = tuple(captured)
        return torch.cat(outs, dim=1)[:, :T]  # (B*H, T, D)

    def _merge_heads(self, out: torch.Tensor, B: int, T: int) -> torch.Tensor:
        out = out.view(B, self.n_head, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out.to(self.o_proj.weight.dtype))  # (B, T, C)


def _momentum_step(
    s: torch.Tensor,  # (B*H, X, Y) momentum S_{c-1}
    w: torch.Tensor,  # (B*H, X, Y) fast weight M_{c-1}
    a: torch.Tensor,  # (B*H, X, L)
    b: torch.Tensor,  # (B*H, L, Y); the chunk's gradient is 2 a @ b
    eta: torch.Tensor,  # (B*H, 1, 1)
    keep: torch.Tensor,  # (B*H, 1, 1), 1 - alpha
    in_place: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``S = eta S - 2 a b``; ``M = (1 - alpha) M + S`` (in place saves ~a third of the memory's time)."""
    if in_place:
        s.mul_(eta).baddbmm_(a, b, alpha=-2.0)
        return s, torch.addcmul(s, w, keep, out=w)
    s = torch.baddbmm(s * eta, a, b, alpha=-2.0)
    return s, torch.addcmul(s, w, keep)


# --- Shared contexts: a context forwarded once, its continuations from a cache --------------
#
# Scoring the choices of a multiple-choice item forwards the same context once per choice.
# With ``use_cache=True`` (and an attention mask marking each context's real tokens) a forward
# also returns a TrmTitansCache: per recursion step and layer, the attention keys/values of
# each context's last ``sliding_window - 1`` positions, the memory's input at its last
# ``memory_chunk_size - 1`` positions and the memory's state at the context's last chunk
# boundary. A forward of continuation tokens with ``cache=`` then computes exactly what the
# whole row would have at those positions (the memory re-reads the few context tokens of
# the chunk it continues), up to float rounding. evomerge's fitness harness uses this
# (evomerge/fitness/scoring.py, docs/fitness.md).


@dataclass
class _ContextPlan:
    """Where each row's context ends, and the index maps a continuation needs."""

    lengths: torch.Tensor  # (B,) context length t0 of each row
    keep: int  # key/value positions cached before t0: max(window, chunk) - 1
    chunk: int  # the memory's chunk size L
    width: int = 0  # continuation tokens per row (reading only)

    @property
    def chunks(self) -> torch.Tensor:
        """(B,) whole memory chunks before each context's last chunk boundary."""
        return torch.div(self.lengths, self.chunk, rounding_mode="floor")

    def last(self, t: torch.Tensor, dim: int, n: int | None = None) -> torch.Tensor:
        """The ``n`` (default ``keep``) positions of ``t`` before each row's t0, along ``dim``
        (positions before 0 repeat position 0; the attention mask hides them)."""
        n = self.keep if n is None else n
        offsets = torch.arange(-n, 0, device=t.device)
        index = (self.lengths[:, None] + offsets).clamp(min=0)  # (B, n)
        shape = [t.shape[0]] + [1] * (t.dim() - 1)
        shape[dim] = n
        index = index.view(shape).expand(*[n if d == dim else s for d, s in enumerate(t.shape)])
        return t.gather(dim, index)

    @property
    def tail(self) -> torch.Tensor:
        """(B,) context tokens after the last chunk boundary (re-read by the memory)."""
        return self.lengths - self.chunks * self.chunk

    def _memory_index(self) -> torch.Tensor:
        # rows of cat(tail cache (L-1), continuation (width)) from the boundary on
        steps = torch.arange(self.chunk - 1 + self.width, device=self.lengths.device)
        start = (self.chunk - 1) - self.tail
        return (start[:, None] + steps).clamp(max=self.chunk - 2 + self.width)

    def memory_input(self, tail: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(B, L-1+width, C): the memory's input from each row's chunk boundary on."""
        full = torch.cat((tail.to(a.dtype), a), dim=1)
        index = self._memory_index()
        return full.gather(1, index[..., None].expand(-1, -1, a.shape[-1]))

    @property
    def memory_write(self) -> torch.Tensor:
        """(B, L-1+width): real positions (context tail, continuation) may write."""
        steps = torch.arange(self.chunk - 1 + self.width, device=self.lengths.device)
        return (steps[None] < (self.tail + self.width)[:, None]).float()

    def memory_output(self, out: torch.Tensor) -> torch.Tensor:
        """The continuation's rows of the memory's output: (B, width, C)."""
        index = self.tail[:, None] + torch.arange(self.width, device=out.device)
        return out.gather(1, index[..., None].expand(-1, -1, out.shape[-1]))

    def attention_mask(self, n_persistent: int, window: int) -> torch.Tensor:
        """(B, 1, width, P + keep + width): persistent keys, then the cached window, then the
        continuation; True = may attend (within the window, causal, not before position 0)."""
        device = self.lengths.device
        keys = torch.arange(self.keep + self.width, device=device)  # key index
        query = self.keep + torch.arange(self.width, device=device)[:, None]
        local = (keys <= query) & (keys > query - window)  # (width, keep + width)
        real = (self.lengths[:, None] - self.keep + keys) >= 0  # (B, keep + width)
        mask = local[None] & real[:, None, :]
        prefix = torch.ones(
            mask.shape[0], self.width, n_persistent, dtype=torch.bool, device=device
        )
        return torch.cat((prefix, mask), dim=-1)[:, None]


@dataclass
class _LayerContext:
    """One (recursion step, layer)'s cached context."""

    plan: _ContextPlan
    reading: bool = False
    keys: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (B, H, keep, D)
    values: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    tail: torch.Tensor = field(default_factory=lambda: torch.empty(0))  # (B, L-1, C) memory input
    state: tuple[torch.Tensor, ...] = ()  # memory w1, w2, s1, s2 at the boundary, (B*H, ...)


class TrmTitansCache:
    """A batch of contexts, for continuations (``reorder_cache`` picks a context per row)."""

    def __init__(self, plan: _ContextPlan, memory_heads: int) -> None:
        self.plan = plan
        self.memory_heads = memory_heads
        self.steps: list[list[_LayerContext]] = []  # [f call][layer]

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Row i becomes a copy of context ``index[i]`` (transformers' Cache method name)."""
        heads = torch.arange(self.memory_heads, device=index.device)
        by_head = (index[:, None] * self.memory_heads + heads).flatten()
        self.plan = _ContextPlan(self.plan.lengths[index], self.plan.keep, self.plan.chunk)
        for step in self.steps:
            for slot in step:
                slot.keys, slot.values = slot.keys[index], slot.values[index]
                slot.tail = slot.tail[index]
                slot.state = tuple(t[by_head] for t in slot.state)


class SwiGLU(nn.Module):
    def __init__(self, config: TrmTitansConfig) -> None:
        super().__init__()
        c, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(c, i, bias=False)
        self.up_proj = nn.Linear(c, i, bias=False)
        self.down_proj = nn.Linear(i, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MAGBlock(nn.Module):
    """Memory as a Gate: ``h + norm_att(SWA(a)) * sigmoid(norm_mem(memory(a)))``, then SwiGLU."""

    def __init__(self, config: TrmTitansConfig) -> None:
        super().__init__()
        c, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = RMSNorm(c, eps)
        self.self_attn = SlidingWindowAttention(config)
        self.memory = NeuralMemory(config)
        self.attn_out_norm = RMSNorm(c, eps)
        self.memory_out_norm = RMSNorm(c, eps)
        self.post_attention_layernorm = RMSNorm(c, eps)
        self.mlp = SwiGLU(config)

    def forward(
        self,
        h: torch.Tensor,  # (B, T, C)
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        write_mask: torch.Tensor | None,
        slot: _LayerContext | None = None,
    ) -> torch.Tensor:
        a = self.input_layernorm(h)
        att = self.attn_out_norm(self.self_attn(a, cos, sin, mask, slot))
        gate = torch.sigmoid(self.memory_out_norm(self.memory(a, write_mask, slot)))
        h = h + att * gate
        return h + self.mlp(self.post_attention_layernorm(h))


class TrmTitansPreTrainedModel(PreTrainedModel):
    config_class = TrmTitansConfig
    config: TrmTitansConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["MAGBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = False
    #: evomerge's fitness harness may score shared contexts through TrmTitansCache: a cached
    #: continuation is exact whatever its length (sliding window and memory included).
    exact_context_continuation = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, SlidingWindowAttention):
            init.normal_(module.persistent_k, mean=0.0, std=std)
            init.normal_(module.persistent_v, mean=0.0, std=std)
        elif isinstance(module, NeuralMemory):
            init.normal_(module.w1_init, mean=0.0, std=std)
            init.normal_(module.w2_init, mean=0.0, std=std)
        elif isinstance(module, TrmTitansModel):
            init.normal_(module.y_init, mean=0.0, std=std)
            init.normal_(module.z_init, mean=0.0, std=std)


class TrmTitansModel(TrmTitansPreTrainedModel):
    """The recursion: ``x = embed(ids)``; T times (n times ``z = f(z+y+x)``; ``y = f(y+z)``)."""

    def __init__(self, config: TrmTitansConfig) -> None:
        super().__init__(config)
        c = config.hidden_size
        self.embed_tokens: nn.Module = nn.Embedding(config.vocab_size, c)
        self.layers = nn.ModuleList(MAGBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(c, config.rms_norm_eps)
        self.y_init = nn.Parameter(torch.zeros(c))  # y0: the answer state
        self.z_init = nn.Parameter(torch.zeros(c))  # z0: the latent reasoning state
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def f(
        self, h: torch.Tensor, *ctx: Any, slots: list[_LayerContext] | None = None
    ) -> torch.Tensor:
        """The one shared network; each call restarts every memory from M0 (no leak across calls)."""
        for i, layer in enumerate(self.layers):
            h = layer(h, *ctx, slots[i] if slots is not None else None)
        return h

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: TrmTitansCache | None = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """``use_cache=True`` also returns a TrmTitansCache of the inputs as contexts (each
        row's context = its tokens under ``attention_mask``); ``cache=`` continues them:
        the inputs are then the next tokens of every cached context, from its end on."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("TrmTitansModel: pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        cfg = self.config
        x = inputs_embeds * cfg.hidden_size**0.5  # (B, T, C); TRM's embedding scale
        B, T, C = x.shape
        if cache is not None:
            ctx, steps = self._continuation(cache, T, x)
            out_cache: TrmTitansCache | None = cache
        else:
            ctx = self._context(x, attention_mask, position_ids)
            out_cache, steps = self._new_cache(attention_mask, B, T, x.device, use_cache)

        def slots() -> list[_LayerContext] | None:
            return next(steps) if steps is not None else None

        y = self.y_init.to(x.dtype).expand(B, T, C)
        z = self.z_init.to(x.dtype).expand(B, T, C)
        for cycle in range(cfg.trm_cycles):
            # As in TRM, only the last cycle is back-propagated through when training.
            no_grad = self.training and cycle < cfg.trm_cycles - 1
            with torch.no_grad() if no_grad else nullcontext():
                for _ in range(cfg.trm_inner_steps):
                    z = self.f(z + y + x, *ctx, slots=slots())
                y = self.f(y + z, *ctx, slots=slots())
        cached: dict[str, Any] = {CACHE_FIELD: out_cache}
        return BaseModelOutputWithPast(last_hidden_state=self.norm(y), **cached)

    def _context(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
    ) -> tuple[Any, ...]:
        """RoPE tables, attention mask and write mask of an ordinary forward."""
        cfg = self.config
        B, T, _ = x.shape
        pad = None
        if (
            attention_mask is not None
            and attention_mask.dim() == 2
            and not bool(attention_mask.all())
        ):
            pad = attention_mask.bool()  # (B, T); False marks padding
        positions: torch.Tensor
        if position_ids is not None:
            positions = position_ids
        elif pad is not None:  # left padding: real tokens still start at position 0
            positions = (pad.long().cumsum(-1) - 1).clamp(min=0)
        else:
            positions = torch.arange(T, device=x.device)[None].expand(B, T)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
        mask = attention_mask_for(T, cfg.num_persistent_tokens, cfg.sliding_window, pad)
        return cos, sin, mask.to(x.device), pad

    def _new_cache(
        self,
        attention_mask: torch.Tensor | None,
        B: int,
        T: int,
        device: torch.device,
        use_cache: bool,
    ) -> tuple[TrmTitansCache | None, Any]:
        """An empty cache whose per-step slots the forward fills (None unless ``use_cache``)."""
        if not use_cache:
            return None, None
        cfg = self.config
        if attention_mask is not None and attention_mask.dim() == 2:
            lengths = attention_mask.long().sum(-1).to(device)
        else:
            lengths = torch.full((B,), T, dtype=torch.long, device=device)
        keep = max(cfg.sliding_window, cfg.memory_chunk_size) - 1
        cache = TrmTitansCache(_ContextPlan(lengths, keep, cfg.memory_chunk_size), cfg.memory_heads)

        def steps() -> Any:
            while True:
                step = [_LayerContext(cache.plan) for _ in self.layers]
                cache.steps.append(step)
                yield step

        return cache, steps()

    def _continuation(
        self, cache: TrmTitansCache, T: int, x: torch.Tensor
    ) -> tuple[tuple[Any, ...], Any]:
        """RoPE tables and mask for ``T`` tokens after each cached context; its slots, read."""
        cfg = self.config
        plan = _ContextPlan(cache.plan.lengths, cache.plan.keep, cache.plan.chunk, width=T)
        for step in cache.steps:
            for slot in step:
                slot.plan, slot.reading = plan, True
        positions = plan.lengths[:, None] + torch.arange(T, device=x.device)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
        mask = plan.attention_mask(cfg.num_persistent_tokens, cfg.sliding_window)
        return (cos, sin, mask, None), iter(cache.steps)


class TrmTitansForCausalLM(TrmTitansPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TrmTitansConfig) -> None:
        super().__init__(config)
        self.model = TrmTitansModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """No cache: every step re-runs the whole prefix (the memory is rebuilt from M0 anyway).

        ``*args, **kwargs``: transformers releases differ in what else this takes (5.20 adds
        ``next_sequence_length``); ``generate`` passes the mask by keyword in all of them.
        """
        mask = kwargs.get("attention_mask")
        return {"input_ids": input_ids, "attention_mask": mask, "logits_to_keep": 1}

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        cache: TrmTitansCache | None = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple[torch.Tensor, ...]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            cache=cache,
            use_cache=use_cache,
        )
        h = out.last_hidden_state  # (B, T, C)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:  # predicts token t+1 from positions <= t (shift inside)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size
            )
        result = CausalLMOutputWithPast(
            loss=loss, logits=logits, **{CACHE_FIELD: getattr(out, CACHE_FIELD)}
        )
        return result if return_dict is not False else result.to_tuple()
