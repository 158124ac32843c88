"""The TRM x Titans-MAG plugin on real (random-weight) models: sizes, loading, causality,
the test-time memory, mergekit merges, dtypes, attention backends, generation, training."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from evomerge_trm_titans import mergekit_definition
from evomerge_trm_titans.configuration import PRESETS, TrmTitansConfig
from evomerge_trm_titans.modeling import (
    FORGET_OFFSET,
    MOMENTUM_OFFSET,
    STEP_OFFSET,
    NeuralMemory,
)
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from evomerge.architectures import get_architecture, register_with_mergekit

ARCH = "trm_titans_mag"


def _tiny(seed: int = 0, **overrides: object) -> PreTrainedModel:
    arch = get_architecture(ARCH)
    torch.manual_seed(seed)
    return arch.model_class(arch.config("tiny", **overrides)).eval()


def _ids(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def _expected_names(num_layers: int) -> set[str]:
    """Tensor names the mergekit definition declares, templates expanded like mergekit does."""
    d = mergekit_definition()
    names = {w["name"] for w in d["pre_weights"] + d["post_weights"]}
    for i in range(num_layers):
        for w in d["layer_templates"]["weights"]:
            names.add(string.Template(w["name"]).substitute(layer_index=i))
    return names


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """These models are small enough that a second thread only adds OpenMP hand-offs, which cost
    seconds per step when the CI machine is oversubscribed; restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_25m() -> PreTrainedModel:
    """The default config (= phase1-25m) built through the Auto classes only."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(ARCH)).eval()


@pytest.fixture(scope="module")
def saved_tiny(tiny_trm_model: PreTrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trm-tiny") / "model"
    tiny_trm_model.save_pretrained(path)
    return path.resolve()


# --------------------------------------------------------------------------- sizes and registry
def test_phase1_25m_size_and_forward(model_25m: PreTrainedModel) -> None:
    assert model_25m.config.model_type == ARCH
    for key, value in PRESETS["phase1-25m"].items():  # class defaults are the preset
        assert getattr(model_25m.config, key) == value, key
    n = _n_params(model_25m)
    assert abs(n - 25_000_000) / 25_000_000 <= 0.05, n
    with torch.inference_mode():
        logits = model_25m(_ids(1, 24, 8192)).logits
    assert logits.shape == (1, 24, 8192) and torch.isfinite(logits).all()


def test_tiny_is_small(tiny_trm_model: PreTrainedModel) -> None:
    assert _n_params(tiny_trm_model) <= 2_000_000
    assert tiny_trm_model.config.vocab_size == 2048


def test_registered_with_presets() -> None:
    arch = get_architecture(ARCH)
    assert arch.config_class is TrmTitansConfig and set(arch.presets) >= {"phase1-25m", "tiny"}
    assert arch.config("tiny", trm_cycles=3).trm_cycles == 3


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="num_attention_heads"):
        TrmTitansConfig(hidden_size=100, num_attention_heads=8)
    with pytest.raises(ValueError, match="memory_chunk_size"):
        TrmTitansConfig(memory_chunk_size=0)


# --------------------------------------------------------------------------- persistence
def test_save_load_round_trip(tiny_trm_model: PreTrainedModel, saved_tiny: Path) -> None:
    assert (saved_tiny / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(saved_tiny).eval()
    assert type(loaded).__name__ == "TrmTitansForCausalLM"
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight  # tie restored
    ids = _ids(2, 40, 2048)
    with torch.inference_mode():
        assert torch.equal(loaded(ids).logits, tiny_trm_model(ids).logits)


def test_no_runtime_state_in_state_dict(tiny_trm_model: PreTrainedModel) -> None:
    before = {k: v.clone() for k, v in tiny_trm_model.state_dict().items()}
    assert set(before) == {n for n, _ in tiny_trm_model.named_parameters(remove_duplicate=False)}
    with torch.inference_mode():
        tiny_trm_model(_ids(1, 50, 2048))
    after = tiny_trm_model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)  # fast weights never written back


# --------------------------------------------------------------------------- behaviour
def test_causal_across_chunks_window_and_recursion() -> None:
    # chunk 8 and window 32 are both crossed; n = T = 2 exercises the recursion
    model = _tiny(trm_inner_steps=2, trm_cycles=2)
    ids = _ids(1, 80, 2048)
    with torch.inference_mode():
        base = model(ids).logits
        for t in (0, 7, 8, 31, 40, 70):
            changed = ids.clone()
            changed[0, t + 1] = (changed[0, t + 1] + 1) % 2048
            out = model(changed).logits
            assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0), t
            assert not torch.allclose(out[:, t + 1], base[:, t + 1], atol=1e-4), t


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # tiny: window 32, chunk 8, n = T = 1
        {"trm_inner_steps": 2, "trm_cycles": 2, "num_persistent_tokens": 0},
        # phase1-25m's window 128 / chunk 16 / 4 memory heads, narrow; eager attention
        {"sliding_window": 128, "memory_chunk_size": 16, "memory_heads": 4,
         "memory_head_dim": 16, "attn_implementation": "eager"},
    ],
    ids=["tiny", "recursion-no-persistent", "25m-shape-eager"],
)  # fmt: skip
def test_cached_context_continues_like_the_whole_row(overrides: dict) -> None:
    """Contexts forwarded once (use_cache), then continuations from the cache
    (reorder_cache: several per context) = each context + continuation forwarded whole:
    contexts shorter and longer than the window and chunk, continuations that cross
    chunk boundaries, right padding on both."""
    impl = overrides.pop("attn_implementation", None)
    model = _tiny(**overrides)
    if impl:
        model.config._attn_implementation = impl
    for p in (model.model.y_init, model.model.z_init):  # non-trivial recursion state
        p.data.normal_(0, 0.5)
    gen = torch.Generator().manual_seed(3)
    lengths = [3, 17, 40, 150]  # context tokens per row
    width = max(lengths)
    contexts = torch.randint(1, 2048, (len(lengths), width), generator=gen)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    pick = torch.tensor([0, 0, 1, 2, 2, 3, 3, 1])  # continuation row -> its context
    conts = torch.randint(1, 2048, (len(pick), 21), generator=gen)
    with torch.inference_mode():
        out = model(input_ids=contexts, attention_mask=mask, use_cache=True)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        cache.reorder_cache(pick)
        got = model(input_ids=conts, cache=cache).logits  # (8, 21, V)
        for r, g in enumerate(pick.tolist()):
            n = lengths[g]
            whole = torch.cat((contexts[g, :n], conts[r]))[None]
            expected = model(input_ids=whole).logits[0, n:]
            assert torch.allclose(got[r], expected, atol=2e-4, rtol=1e-4), (r, n)
            # the context pass's own logits at real positions are the plain forward's
            assert torch.allclose(
                out.logits[g, :n], model(input_ids=contexts[g : g + 1, :n]).logits[0], atol=2e-4
            )


def test_the_harness_shares_trm_contexts_only_when_asked() -> None:
    from evomerge.fitness.scoring import PackedRequests, TokenRequest, supports_context_cache

    model = _tiny()
    assert not supports_context_cache(model, 8)  # fitness.shared_contexts: auto
    assert supports_context_cache(model, 10_000, own_cache=True)  # on: any length
    ctx = tuple(range(1, 45))
    requests = [TokenRequest(ctx, (50 + k, 60 + k)) for k in range(4)]
    packed = PackedRequests(requests, max_length=64, device=torch.device("cpu"))
    assert not packed.can_share_contexts(model) and packed.can_share_contexts(model, "on")
    assert not packed.can_share_contexts(model, "off")
    rows, _ = packed.score(model, context_cache=False)
    shared, _ = packed.score(model, context_cache=True)
    assert shared == pytest.approx(rows, rel=1e-5)


def _reference_memory(mem: NeuralMemory, a: torch.Tensor) -> torch.Tensor:
    """The memory written the slow, obvious way: per sequence, head and chunk, gradients by autograd."""
    B, T, _ = a.shape
    H, D, L = mem.n_head, mem.head_dim, mem.chunk
    q = F.normalize(mem.q_proj(a).view(B, T, H, D), dim=-1)
    k = F.normalize(mem.k_proj(a).view(B, T, H, D), dim=-1)
    v = mem.v_proj(a).view(B, T, H, D)
    theta = torch.sigmoid(mem.step_proj(a) + STEP_OFFSET)  # (B, T, H)
    eta = torch.sigmoid(mem.momentum_proj(a) + MOMENTUM_OFFSET)
    alpha = torch.sigmoid(mem.forget_proj(a) + FORGET_OFFSET)
    out = torch.zeros(B, T, H, D)
    for b in range(B):
        for h in range(H):
            w1, w2 = mem.w1_init[h].detach(), mem.w2_init[h].detach()
            s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
            for start in range(0, T, L):
                rows = slice(start, start + L)
                out[b, rows, h] = F.silu(q[b, rows, h] @ w1) @ w2  # read with M_{c-1}
                energy = F.silu(k[b, rows, h] @ w1).pow(2).sum(-1, keepdim=True)  # at M_{c-1}
                step = theta[b, rows, h, None] / (L * (1 + energy))  # the normalised write
                w1, w2 = w1.clone().requires_grad_(), w2.clone().requires_grad_()
                err = F.silu(k[b, rows, h] @ w1) @ w2 - v[b, rows, h]
                loss = (step.detach() * err.pow(2)).sum()
                g1, g2 = torch.autograd.grad(loss, (w1, w2))
                s1 = eta[b, rows, h].mean() * s1 - g1
                s2 = eta[b, rows, h].mean() * s2 - g2
                keep = 1 - alpha[b, rows, h].mean()
                w1, w2 = (keep * w1 + s1).detach(), (keep * w2 + s2).detach()
    return mem.o_proj(out.reshape(B, T, H * D))


def test_memory_closed_form_matches_autograd_reference(tiny_trm_model: PreTrainedModel) -> None:
    mem = tiny_trm_model.get_submodule("model.layers.0.memory")
    assert isinstance(mem, NeuralMemory)
    # larger writes than at init, so that momentum and forgetting matter; ragged last chunk
    a = 3 * torch.randn(2, 3 * mem.chunk + 3, tiny_trm_model.config.hidden_size)
    expected = _reference_memory(mem, a).detach()
    tol = 1e-4 * float(expected.abs().max())  # dropping momentum or forgetting errs by > 1e-2 of it
    with torch.no_grad():  # the in-place path
        assert torch.allclose(mem(a), expected, atol=tol, rtol=0)
    assert torch.allclose(mem(a).detach(), expected, atol=tol, rtol=0)  # the autograd path


def test_test_time_memory_changes_outputs_after_first_chunk(
    tiny_trm_model: PreTrainedModel, tiny_trm_config: TrmTitansConfig
) -> None:
    arch = get_architecture(ARCH)
    frozen = arch.model_class(arch.config("tiny", use_memory=False))
    frozen.load_state_dict(tiny_trm_model.state_dict())
    frozen.eval()
    ids = _ids(2, 48, 2048)
    chunk = tiny_trm_config.memory_chunk_size
    with torch.inference_mode():
        live, fixed = tiny_trm_model(ids).logits, frozen(ids).logits
    # the first chunk reads M0 either way; later chunks read what the memory wrote
    assert torch.allclose(live[:, :chunk], fixed[:, :chunk], atol=1e-6)
    assert (live[:, chunk:] - fixed[:, chunk:]).abs().amax(dim=-1).min() > 1e-5


def test_right_padding_keeps_real_positions(tiny_trm_model: PreTrainedModel) -> None:
    ids = _ids(1, 30, 2048)
    padded = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 30), torch.zeros(1, 10)], dim=1).long()
    with torch.inference_mode():
        plain = tiny_trm_model(ids).logits
        masked = tiny_trm_model(padded, attention_mask=mask).logits[:, :30]
    assert torch.allclose(plain, masked, atol=1e-5)


def test_sdpa_matches_eager(saved_tiny: Path) -> None:
    sdpa = AutoModelForCausalLM.from_pretrained(saved_tiny, attn_implementation="sdpa").eval()
    eager = AutoModelForCausalLM.from_pretrained(saved_tiny, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    ids = _ids(2, 70, 2048)
    with torch.inference_mode():
        assert torch.allclose(sdpa(ids).logits, eager(ids).logits, atol=1e-4)


def test_bfloat16_forward(tiny_trm_model: PreTrainedModel, saved_tiny: Path) -> None:
    bf16 = AutoModelForCausalLM.from_pretrained(saved_tiny, dtype=torch.bfloat16).eval()
    assert next(bf16.parameters()).dtype == torch.bfloat16
    ids = _ids(2, 40, 2048)
    with torch.inference_mode():
        low, full = bf16(ids).logits, tiny_trm_model(ids).logits
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - full).abs().max() < 0.1 * full.abs().max()


def test_bf16_autocast_training_step(tiny_trm_config) -> None:  # type: ignore[no-untyped-def]
    """Mixed precision as on a GPU (accelerate bf16): the float32 memory recurrence must not
    meet autocast's bf16 ops in place, in the grad step or in TRM's no-grad cycles."""
    from evomerge_trm_titans.modeling import TrmTitansForCausalLM

    torch.manual_seed(0)
    model = TrmTitansForCausalLM(tiny_trm_config)
    ids = _ids(2, 40, 2048)
    full = float(model(input_ids=ids, labels=ids).loss.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert abs(float(loss.detach()) - full) < 0.05 * full
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(ids).logits).all()


def test_greedy_generate_without_cache(tiny_trm_model: PreTrainedModel) -> None:
    ids = _ids(1, 12, 2048)
    out = tiny_trm_model.generate(ids, max_new_tokens=5, do_sample=False)  # type: ignore[operator]
    assert out.shape == (1, 17) and torch.equal(out[:, :12], ids)
    expected = ids
    with torch.inference_mode():
        for _ in range(5):
            nxt = tiny_trm_model(expected).logits[:, -1].argmax(-1, keepdim=True)
            expected = torch.cat([expected, nxt], dim=1)
    assert torch.equal(out, expected)


def test_training_reduces_loss_and_reaches_memory_params() -> None:
    model = _tiny(seed=1).train()
    ids = _ids(4, 32, 2048, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        if step == 0:
            memory = model.model.layers[0].memory
            for p in (memory.w1_init, memory.w2_init, memory.step_proj.weight):
                assert p.grad is not None and p.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_only_last_cycle_is_backpropagated_when_training() -> None:
    model = _tiny(trm_cycles=2).train()
    ids = _ids(2, 16, 2048)
    model(ids, labels=ids).loss.backward()
    # y0/z0 only enter the first cycle, which TRM runs without gradients
    assert model.model.y_init.grad is None and model.model.z_init.grad is None
    assert model.model.embed_tokens.weight.grad is not None


# --------------------------------------------------------------------------- mergekit
def test_mergekit_definition_matches_state_dict(
    tiny_trm_model: PreTrainedModel, model_25m: PreTrainedModel
) -> None:
    for model in (tiny_trm_model, model_25m):
        expected = _expected_names(model.config.num_hidden_layers)
        assert set(model.state_dict()) == expected
    d = mergekit_definition()
    assert d["model_type"] == ARCH and d["architectures"] == ["TrmTitansForCausalLM"]


@pytest.fixture(scope="module")
def three_tiny(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("trm-three")
    paths = []
    for seed in (1, 2, 3):
        _tiny(seed=seed).save_pretrained(root / f"m{seed}")
        paths.append((root / f"m{seed}").resolve())
    return paths


def _run_merge(config: dict, out: Path) -> None:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    register_with_mergekit()
    run_merge(
        MergeConfiguration.model_validate(config),
        str(out),
        options=MergeOptions(copy_tokenizer=False, write_model_card=False),
    )


def test_mergekit_linear_merge_is_the_mean(three_tiny: list[Path], tmp_path: Path) -> None:
    models = [{"model": str(p), "parameters": {"weight": 1.0}} for p in three_tiny]
    _run_merge({"merge_method": "linear", "models": models, "dtype": "float32"}, tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    inputs = [AutoModelForCausalLM.from_pretrained(p).state_dict() for p in three_tiny]
    for name, tensor in merged.state_dict().items():
        mean = sum(s[name] for s in inputs) / 3
        assert torch.allclose(tensor, mean, atol=1e-5), name
    assert merged.lm_head.weight is merged.model.embed_tokens.weight


def test_mergekit_passthrough_slices_set_layer_count(
    three_tiny: list[Path], tmp_path: Path
) -> None:
    a, b = three_tiny[0], three_tiny[1]
    slices = [
        {"sources": [{"model": str(a), "layer_range": [0, 2]}]},
        {"sources": [{"model": str(b), "layer_range": [1, 2]}]},
    ]
    _run_merge(
        {"merge_method": "passthrough", "slices": slices, "dtype": "float32"}, tmp_path / "out"
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert merged.config.num_hidden_layers == 3 and len(merged.model.layers) == 3
    src_a = AutoModelForCausalLM.from_pretrained(a).state_dict()
    src_b = AutoModelForCausalLM.from_pretrained(b).state_dict()
    got = merged.state_dict()
    for key in _expected_names(1) - _expected_names(0):  # every layer-0 tensor name
        suffix = key.removeprefix("model.layers.0.")
        assert torch.equal(got[f"model.layers.1.{suffix}"], src_a[f"model.layers.1.{suffix}"])
        assert torch.equal(got[f"model.layers.2.{suffix}"], src_b[f"model.layers.1.{suffix}"])
    with torch.inference_mode():
        assert torch.isfinite(merged(_ids(1, 20, 2048)).logits).all()
