"""Fitness harness: same scores as lm-eval, real signal, composite normalisation, plugin terms.

Tiny real models (a 2-layer Llama, a byte-level BPE trained here) on real
English text (standard-library docstrings) in the evomerge.data file format.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from evomerge import hookimpl
from evomerge.fitness import (
    CompositeFitness,
    FitnessConfig,
    FitnessHarness,
    Measurements,
    TaskMetricTerm,
    UnknownFitnessTermError,
    registered_fitness_terms,
    suite_for,
    write_tasks,
)
from evomerge.fitness.cost import LiveTensorPeak, noise_stats, parameter_bytes
from evomerge.fitness.tasks import TaskSuite, cloze_task_name, generated_task_names, ppl_task_name
from evomerge.fitness.testing import (
    make_llama,
    make_tokenizer,
    stdlib_paragraphs,
    train_briefly,
    write_fixture_data,
)
from evomerge.plugins import get_plugin_manager

N_ITEMS = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Shared 2-core CI machines: one intra-op thread avoids OpenMP oversubscription stalls."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    return stdlib_paragraphs()


@pytest.fixture(scope="module")
def tokenizer(paragraphs: list[str]):
    return make_tokenizer(paragraphs)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory, paragraphs: list[str]) -> Path:
    root = tmp_path_factory.mktemp("fitness")
    layout = write_fixture_data(root / "data", paragraphs)
    return write_tasks(layout, root / "tasks")


@pytest.fixture(scope="module")
def trained(tokenizer, paragraphs: list[str]):
    """A briefly trained tiny Llama (on paragraphs the fixture data does not use)."""
    model = make_llama(len(tokenizer), max_positions=64)
    return train_briefly(model, tokenizer, paragraphs[72:], steps=60)


@pytest.fixture(scope="module")
def harness(task_dir: Path, tokenizer, trained) -> FitnessHarness:
    config = FitnessConfig(max_items=N_ITEMS, time_repeats=3, time_warmup=1, time_seq_len=32)
    return FitnessHarness.build(
        suite_for(task_dir, split="fitness"),
        tokenizer,
        "cpu",
        config=config,
        model_config=trained.config,
    )


def test_fast_harness_equals_lm_eval(
    harness: FitnessHarness, task_dir: Path, tokenizer, trained, no_network
) -> None:
    import lm_eval

    from evomerge.fitness.lm_eval_adapter import EvoMergeLM

    suite = suite_for(task_dir, split="fitness")
    ours = harness.measure(trained, cost=False)
    lm = EvoMergeLM(pretrained=trained, tokenizer=tokenizer, batch_size=3)
    theirs = lm_eval.simple_evaluate(
        model=lm, tasks=list(suite.names), task_manager=suite.task_manager(), limit=N_ITEMS
    )["results"]
    assert set(theirs) == set(ours.tasks) == set(suite.names)
    compared = 0
    for task, metrics in theirs.items():
        for key, value in metrics.items():
            if not key.endswith(",none") or "stderr" in key:
                continue
            mine = ours.tasks[task][key.removesuffix(",none")]
            if key.startswith("acc"):
                assert mine == value, (task, key)
            else:
                assert mine == pytest.approx(value, rel=1e-4), (task, key)
            compared += 1
    assert compared == 3 * 3 + 3 * 2
    # The rolling windows really rolled: some document is longer than the model's 64 positions.
    assert harness.n_tokens > 64 * N_ITEMS * 3
    assert ours.n_items == dict.fromkeys(suite.names, N_ITEMS)


def test_pooled_perplexity_and_accuracy(harness: FitnessHarness, trained) -> None:
    m = harness.measure(trained, cost=False)
    ppl_tasks = [t for t in m.tasks if t.startswith("evomerge_ppl_")]
    acc_tasks = [t for t in m.tasks if t.startswith("evomerge_cloze_")]
    # Pooled perplexity lies between the per-domain ones; accuracy is the item mean.
    per_domain = [m.tasks[t]["word_perplexity"] for t in ppl_tasks]
    assert min(per_domain) <= m.perplexity <= max(per_domain)
    assert m.accuracy == pytest.approx(sum(m.tasks[t]["acc"] for t in acc_tasks) / len(acc_tasks))
    assert math.isnan(m.time_per_1k_tokens) and m.peak_memory_bytes == 0  # cost=False


def test_measure_tracks_in_place_weight_changes(harness: FitnessHarness, trained) -> None:
    """A perturbed embedding scores worse perplexity and calibration loss; restoring it restores both."""
    before = harness.measure(trained, cost=False)
    cal_before = harness.calibration_loss(trained)
    emb = trained.get_input_embeddings().weight
    saved = emb.detach().clone()
    with torch.no_grad():
        emb.add_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(1)) * emb.std())
    try:
        worse = harness.measure(trained, cost=False)
        assert worse.perplexity > before.perplexity * 1.05
        assert harness.calibration_loss(trained) > cal_before
    finally:
        with torch.no_grad():
            emb.copy_(saved)
    again = harness.measure(trained, cost=False)
    assert again.perplexity == pytest.approx(before.perplexity, rel=1e-9)
    assert harness.calibration_loss(trained) == pytest.approx(cal_before, rel=1e-9)


def test_cost_measurements_and_noise(harness: FitnessHarness, trained) -> None:
    m = harness.measure(trained)
    assert len(m.time_samples) == 3 and m.time_per_1k_tokens > 0
    assert m.peak_memory_bytes > parameter_bytes(trained)
    noise = harness.repeat_noise(trained, repeats=3)
    assert noise["peak_memory_bytes"]["rel_std"] == 0.0  # deterministic on CPU
    assert noise["peak_memory_bytes"]["median"] == m.peak_memory_bytes
    assert noise["time_per_1k_tokens"]["rel_iqr"] >= 0 and noise["time_per_1k_tokens"]["n"] == 3


def test_live_tensor_peak_counts_the_logits() -> None:
    model = make_llama(300, hidden=16)
    ids = torch.zeros((2, 10), dtype=torch.long)
    tracker = LiveTensorPeak()
    with torch.inference_mode(), tracker:
        logits = model(input_ids=ids, use_cache=False).logits
    assert tracker.peak >= logits.numel() * logits.element_size()
    del logits
    assert tracker.live < 2 * 10 * 300 * 4  # the logits were released when deleted
    assert noise_stats([1.0, 1.0, 1.0])["rel_std"] == 0.0


def _measurements(ppl: float, acc: float, time: float, mem_gib: float) -> Measurements:
    return Measurements(
        tasks={"t": {"acc": acc}},
        perplexity=ppl,
        accuracy=acc,
        time_per_1k_tokens=time,
        peak_memory_bytes=int(mem_gib * 2**30),
    )


def test_inputs_normalisation_makes_each_term_average_one() -> None:
    inputs = [
        _measurements(10, 0.3, 0.020, 1.0),
        _measurements(20, 0.4, 0.030, 1.0),
        _measurements(40, 0.2, 0.025, 1.0),
    ]
    config = FitnessConfig(cost_tolerance=0.0)
    fitness = CompositeFitness.from_inputs(config, inputs)
    scores = [fitness.score(m) for m in inputs]
    for name in ("perplexity", "accuracy", "speed", "memory"):
        assert sum(s.terms[name] for s in scores) / 3 == pytest.approx(1.0)
    assert sum(s.total for s in scores) / 3 == pytest.approx(1.0)  # weights sum to 1
    assert scores[0].terms["perplexity"] == pytest.approx(
        (1 / 10) / ((1 / 10 + 1 / 20 + 1 / 40) / 3)
    )
    assert scores[1].raw == {"perplexity": 20, "accuracy": 0.4, "speed": 0.030, "memory": 1.0}
    # normalize: none is the seed's raw formula
    raw = CompositeFitness(FitnessConfig(normalize="none")).score(inputs[0])
    assert raw.total == pytest.approx(0.4 / 10 + 0.3 * 0.3 + 0.2 / 0.020 + 0.1 / 1.0)


def test_cost_tolerance_ignores_noise_but_not_real_differences() -> None:
    inputs = [_measurements(10, 0.3, 0.020, 1.0)] * 3
    fitness = CompositeFitness.from_inputs(FitnessConfig(cost_tolerance=0.05), inputs)
    noisy = fitness.score(_measurements(10, 0.3, 0.0208, 1.0))  # 4 % slower: noise
    slower = fitness.score(_measurements(10, 0.3, 0.030, 1.0))  # 50 % slower: real
    assert noisy.terms["speed"] == 1.0 and noisy.raw["speed"] == pytest.approx(0.0208)
    assert slower.terms["speed"] == pytest.approx(0.020 / 0.030)


def test_normalising_needs_inputs_and_known_terms() -> None:
    with pytest.raises(ValueError, match="from_inputs"):
        CompositeFitness(FitnessConfig())
    with pytest.raises(
        UnknownFitnessTermError,
        match="no plugin registers fitness term 'nope'; registered: .*accuracy",
    ):
        CompositeFitness(FitnessConfig(normalize="none", weights={"nope": 1.0}))
    with pytest.raises(ValueError, match="'accuracy': the inputs' mean goodness is 0"):
        CompositeFitness.from_inputs(FitnessConfig(), [_measurements(10, 0.0, 0.02, 1.0)])


class _NarrativeAccNormPlugin:
    @hookimpl
    def evomerge_register_fitness_terms(self) -> list[TaskMetricTerm]:
        return [
            TaskMetricTerm(
                "narrative_acc_norm", cloze_task_name("narrative", "fitness"), "acc_norm"
            )
        ]


def test_plugin_term_is_weighted_into_the_total(harness: FitnessHarness, trained) -> None:
    pm = get_plugin_manager()
    pm.register(_NarrativeAccNormPlugin(), name="test_fitness_term_plugin")  # registries see it
    try:
        weights = {"perplexity": 0.4, "accuracy": 0.3, "narrative_acc_norm": 0.5}
        config = FitnessConfig(normalize="none", weights=weights)
        m = harness.measure(trained, cost=False)
        score = CompositeFitness(config).score(m)
        expected = m.tasks[cloze_task_name("narrative", "fitness")]["acc_norm"]
        assert score.raw["narrative_acc_norm"] == expected
        assert score.weighted["narrative_acc_norm"] == pytest.approx(0.5 * expected)
        assert score.total == pytest.approx(0.4 / m.perplexity + 0.3 * m.accuracy + 0.5 * expected)
    finally:
        pm.unregister(name="test_fitness_term_plugin")
    assert "narrative_acc_norm" not in registered_fitness_terms()


def test_recipe_task_metric_is_its_own_term_outside_the_pooled_accuracy(
    task_dir: Path, tokenizer, trained
) -> None:
    """``task_metrics``: the user's task weighs in by name, on ``task`` in the search and
    ``test_task`` in the held-out report, and stays out of the pooled ``accuracy``."""
    from evomerge.fitness.config import TaskMetric

    own = TaskMetric(
        name="narrative_mc",
        task=cloze_task_name("narrative", "fitness"),
        test_task=cloze_task_name("narrative", "test"),
    )
    weights = {"perplexity": 0.4, "accuracy": 0.3, "narrative_mc": 0.5}
    config = FitnessConfig(
        normalize="none", weights=weights, task_metrics=[own], max_items=N_ITEMS, time_repeats=1
    )
    assert config.metric_tasks("fitness") == [own.task]
    assert config.metric_tasks("test") == [own.test_task]
    for split, task in (("fitness", own.task), ("test", own.test_task)):
        suite = suite_for(task_dir, split=split, extra_tasks=config.metric_tasks(split))
        harness = FitnessHarness.build(
            suite, tokenizer, "cpu", config=config, model_config=trained.config
        )
        m = harness.measure(trained, cost=False)
        score = CompositeFitness(config).score(m)
        assert score.raw["narrative_mc"] == m.tasks[task]["acc"]
        others = [cloze_task_name(d, split) for d in ("technical", "dialogue")]
        # pooled by items: the two tasks can have different counts (fewer than max_items
        # where the fixture data has fewer; Python 3.12's docstrings give other items)
        pooled = sum(m.tasks[t]["acc"] * m.n_items[t] for t in others)
        assert m.accuracy == pytest.approx(pooled / sum(m.n_items[t] for t in others))
        assert score.total == pytest.approx(
            0.4 / m.perplexity + 0.3 * m.accuracy + 0.5 * m.tasks[task]["acc"]
        )
    with pytest.raises(ValueError, match="task and test_task are both"):
        TaskMetric(name="x", task=own.task, test_task=own.task)
    with pytest.raises(ValueError, match="name 'narrative_mc' is used twice"):
        FitnessConfig(task_metrics=[own, own], weights=weights)
    with pytest.raises(ValueError, match="does not know whether a higher 'score' is better"):
        CompositeFitness(
            config.model_copy(update={"task_metrics": [own.model_copy(update={"metric": "score"})]})
        )


def test_plugin_task_term_counts_once_and_is_held_out_on_its_test_task(
    task_dir: Path, tokenizer, trained
) -> None:
    """A plugin's TaskMetricTerm with a test_task behaves as a recipe's task_metrics entry:
    its tasks join the suites, and they stay out of the pooled accuracy."""
    from evomerge.fitness.terms import term_tasks

    task, test_task = cloze_task_name("narrative", "fitness"), cloze_task_name("narrative", "test")

    class Plugin:
        @hookimpl
        def evomerge_register_fitness_terms(self) -> list[TaskMetricTerm]:
            return [TaskMetricTerm("narrative_acc", task, "acc", test_task=test_task)]

    pm = get_plugin_manager()
    pm.register(Plugin(), name="test_held_out_term_plugin")
    try:
        weights = {"perplexity": 0.4, "accuracy": 0.3, "narrative_acc": 0.5}
        config = FitnessConfig(normalize="none", weights=weights, max_items=N_ITEMS)
        assert term_tasks(config, "fitness") == [task]
        assert term_tasks(config, "test") == [test_task]
        for split, read in (("fitness", task), ("test", test_task)):
            suite = suite_for(task_dir, split=split)
            harness = FitnessHarness.build(
                suite, tokenizer, "cpu", config=config, model_config=trained.config
            )
            m = harness.measure(trained, cost=False)
            assert CompositeFitness(config).score(m).raw["narrative_acc"] == m.tasks[read]["acc"]
            others = [cloze_task_name(d, split) for d in ("technical", "dialogue")]
            pooled = sum(m.tasks[t]["acc"] * m.n_items[t] for t in others)
            assert m.accuracy == pytest.approx(pooled / sum(m.n_items[t] for t in others))
    finally:
        pm.unregister(name="test_held_out_term_plugin")


class _TokenLimit(torch.nn.Module):
    """``model`` on a device that holds at most ``limit`` input tokens per forward: beyond
    it, the allocation error a GPU raises (CI has no GPU to run out of memory on)."""

    def __init__(self, model: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.config = model, limit, model.config
        self.largest = 0

    def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0, use_cache: bool = False):  # type: ignore[no-untyped-def]
        if input_ids.numel() > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. ({input_ids.numel()} tokens)")
        self.largest = max(self.largest, input_ids.numel())
        return self.model(input_ids=input_ids, logits_to_keep=logits_to_keep, use_cache=use_cache)


def test_out_of_memory_halves_the_eval_batch_and_scores_the_same(
    task_dir: Path, tokenizer, trained, caplog: pytest.LogCaptureFixture
) -> None:
    suite = suite_for(task_dir, split="fitness")

    def build(batch_tokens: int | str) -> FitnessHarness:
        config = FitnessConfig(max_items=N_ITEMS, batch_tokens=batch_tokens, shared_contexts="off")
        return FitnessHarness.build(
            suite, tokenizer, "cpu", config=config, model_config=trained.config
        )

    unlimited = _TokenLimit(trained, limit=10**9)
    plain = build("auto")  # on the CPU: the fixed default, nothing measured
    assert plain.batch_tokens == 8192
    whole = plain.measure(unlimited, cost=False)
    limit = 600
    assert unlimited.largest > limit  # the default packing does not fit the "device"

    backing_off = build(8192)
    limited = _TokenLimit(trained, limit=limit)
    with caplog.at_level(logging.WARNING, logger="evomerge.fitness.harness"):
        halved = backing_off.measure(limited, cost=False)
    assert backing_off.batch_tokens == 512 and limited.largest <= limit
    assert "out of memory at 8192 tokens per eval batch; retrying at 4096" in caplog.text
    # exactly what a harness packed at 512 from the start scores; the 8192 packing's
    # numbers up to float rounding (other padding)
    assert halved.tasks == build(512).measure(trained, cost=False).tasks
    for task, metrics in whole.tasks.items():
        for name, value in metrics.items():
            assert halved.tasks[task][name] == pytest.approx(value, rel=1e-5), (task, name)
    # the smaller size stays: the next candidate is scored without another error
    caplog.clear()
    assert backing_off.measure(limited, cost=False).tasks == halved.tasks
    assert "out of memory" not in caplog.text

    with pytest.raises(torch.OutOfMemoryError):  # below 512 tokens the error is the user's
        build(512).measure(_TokenLimit(trained, limit=100), cost=False)


def test_forward_largest_runs_the_biggest_batch_of_the_layout(
    harness: FitnessHarness, trained
) -> None:
    """What ``batch_tokens: auto`` measures on a GPU: one forward of the largest batch."""
    counted = _TokenLimit(trained, limit=10**9)
    packed = harness._packed
    tokens = packed.forward_largest(counted)
    assert tokens == max(b.input_ids.numel() for b in packed.batches) == counted.largest


def test_auto_eval_batch_fits_its_share_of_the_device() -> None:
    from evomerge.fitness.batching import AUTO_MAX_TOKENS, MIN_BATCH_TOKENS, auto_batch_tokens

    gib = 2**30
    # a 25M model on an H200: the cap
    assert auto_batch_tokens(50e3, total=140 * gib) == AUTO_MAX_TOKENS
    # an 8B model with a 128k vocabulary (~1 MiB per token) on an 80 GB GPU: a quarter of
    # the total (20 GiB) fits 20480 tokens, rounded down to a power of two
    assert auto_batch_tokens(2**20, total=80 * gib) == 16384
    assert auto_batch_tokens(2**30, total=80 * gib) == MIN_BATCH_TOKENS
    with pytest.raises(ValueError, match="batch_tokens"):
        FitnessConfig(batch_tokens=0)
    with pytest.raises(ValueError, match="batch_tokens"):
        FitnessConfig.from_yaml("batch_tokens: big\n")


def test_config_yaml_round_trip_and_validation(tmp_path: Path) -> None:
    config = FitnessConfig(weights={"perplexity": 1.0}, task_dirs=[tmp_path], max_items=None)
    assert FitnessConfig.from_yaml(config.to_yaml()) == config
    with pytest.raises(ValueError, match="weights.speed must be >= 0"):
        FitnessConfig(weights={"speed": -1})
    with pytest.raises(ValueError, match="normalize"):
        FitnessConfig.from_yaml("normalize: mean\n")


def test_task_files_are_absolute_and_errors_name_the_file(task_dir: Path, tmp_path: Path) -> None:
    text = (task_dir / f"{ppl_task_name('dialogue', 'test')}.yaml").read_text()
    assert f'"{task_dir.parent}/data/dialogue/ppl_test.jsonl"' in text
    assert set(generated_task_names(["narrative"], "test")) == {
        "evomerge_ppl_narrative_test",
        "evomerge_cloze_narrative_test",
    }
    bad = write_fixture_data(tmp_path / "data", stdlib_paragraphs())
    bad.cloze_path("technical", "fitness").write_text('{"id": "x", "context": "a"}\n')
    with pytest.raises(
        ValueError, match=r"cloze_fitness.jsonl: line 1 lacks field\(s\) choices, label"
    ):
        write_tasks(bad, tmp_path / "tasks")
    suite = TaskSuite(names=("evomerge_ppl_nowhere_fitness",), include_paths=(task_dir,))
    with pytest.raises(KeyError, match="unknown task"):
        suite.load()


def test_calibration_is_never_drawn_from_the_test_split(task_dir: Path, tokenizer, trained) -> None:
    config = FitnessConfig(max_items=1, time_seq_len=16)
    test_harness = FitnessHarness.build(
        suite_for(task_dir, split="test"), tokenizer, "cpu", config=config, max_length=64
    )
    with pytest.raises(ValueError, match="test split"):
        test_harness.calibration_loss(trained)
    assert test_harness.measure(trained, cost=False).n_items == dict.fromkeys(
        generated_task_names(["narrative", "technical", "dialogue"], "test"), 1
    )


def test_adapter_does_not_retie_merged_weights(tokenizer) -> None:
    from lm_eval.models.huggingface import HFLM

    from evomerge.fitness.lm_eval_adapter import EvoMergeLM

    def merged_untied():
        model = make_llama(len(tokenizer), tie_word_embeddings=True)
        emb = model.get_input_embeddings().weight
        model.lm_head.weight = torch.nn.Parameter(emb.detach().clone() + 1.0)
        return model

    plain = merged_untied()
    HFLM(pretrained=plain, tokenizer=tokenizer)
    assert plain.lm_head.weight is plain.get_input_embeddings().weight  # HFLM re-ties: the bug
    ours = merged_untied()
    head = ours.lm_head.weight
    lm = EvoMergeLM(pretrained=ours, tokenizer=tokenizer)
    assert ours.lm_head.weight is head and head is not ours.get_input_embeddings().weight
    assert "tie_weights" not in vars(ours)  # the guard was removed afterwards
    assert lm.batch_size == 16


def test_auto_cost_tolerance_follows_the_inputs_timing_noise() -> None:
    def timed(time: float) -> Measurements:
        m = _measurements(10, 0.3, time, 1.0)
        m.time_samples = [time] * 3
        return m

    inputs = [timed(0.018), timed(0.020), timed(0.022)]  # same architecture: 8 % spread is noise
    fitness = CompositeFitness.from_inputs(FitnessConfig(), inputs)
    assert fitness.cost_tolerance == pytest.approx(3 * math.sqrt(8e-6 / 3) / 0.020)
    assert fitness.score(timed(0.024)).terms["speed"] == 1.0  # 20 % slower: within the noise
    assert fitness.score(timed(0.030)).terms["speed"] < 0.7  # 50 % slower: real
    quiet = CompositeFitness.from_inputs(FitnessConfig(), [timed(0.020)] * 3)
    assert quiet.cost_tolerance == 0.05  # the floor


def test_prefix_rows_are_shared_and_score_the_same() -> None:
    from evomerge.fitness.scoring import PackedRequests, TokenRequest

    model = make_llama(50, hidden=16)
    ctx = (3, 4, 5, 6)
    requests = [
        TokenRequest(ctx, (7,)),  # input ctx: a prefix of the others
        TokenRequest(ctx, (7, 8)),  # input ctx + (7,)
        TokenRequest(ctx, (9, 10, 11)),  # input ctx + (9, 10): hosts neither of the above
        TokenRequest(ctx, (7,)),  # identical input to the first
    ]
    shared = PackedRequests(requests, max_length=32, device=torch.device("cpu"))
    assert shared.n_tokens == len(ctx) + 1 + len(ctx) + 2  # two rows forwarded
    alone = [PackedRequests([r], max_length=32, device=torch.device("cpu")) for r in requests]
    lls, greedy = shared.score(model, context_cache=False)
    for i, packed in enumerate(alone):
        (ll,), (g,) = packed.score(model)
        assert lls[i] == pytest.approx(ll, rel=1e-6) and greedy[i] == g


def _choice_requests(seed: int, n_items: int, longest: int) -> list:
    """Multiple-choice-shaped requests (4 continuations of 1-3 tokens per context) and a
    few rows of their own, as the harness makes them; contexts up to ``longest`` tokens."""
    from evomerge.fitness.scoring import TokenRequest

    gen = torch.Generator().manual_seed(seed)

    def tokens(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(1, 500, (n,), generator=gen).tolist())

    requests = []
    for item in range(n_items):
        ctx = tokens(int(torch.randint(3, longest - 3, (1,), generator=gen)))
        requests += [TokenRequest(ctx, tokens(1 + (item + k) % 3)) for k in range(4)]
        requests.append(TokenRequest(tokens(2), tokens(int(longest * 0.75))))  # unshared
    return requests


@pytest.mark.parametrize("name", ["llama", "mistral", "qwen2", "qwen3", "gemma2", "phi3"])
def test_shared_contexts_through_the_kv_cache_score_like_full_rows(name: str, tokenizer) -> None:
    """Each choice scored from its context's cached keys/values = the whole row forwarded;
    sliding-window families take the cache only when every input fits their window."""
    from real_families import family_config
    from transformers import AutoModelForCausalLM

    from evomerge.fitness.scoring import PackedRequests, supports_context_cache

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(family_config(name, tokenizer)).eval()
    window = getattr(model.config, "sliding_window", None)
    for longest in (24, 60):
        packed = PackedRequests(
            _choice_requests(longest, 9, longest),
            max_length=64,
            device=torch.device("cpu"),
            batch_tokens=160,  # several context batches of unequal context lengths
        )
        assert len(packed.context_batches) > 1
        assert packed.n_tokens_context < packed.n_tokens
        windowed = name in ("mistral", "gemma2")
        assert supports_context_cache(model, packed.context_span) == (
            not windowed or packed.context_span <= window
        )
        rows_ll, rows_greedy = packed.score(model, context_cache=False)
        if supports_context_cache(model, packed.context_span):
            cached_ll, cached_greedy = packed.score(model, context_cache=True)
            assert cached_ll == pytest.approx(rows_ll, rel=2e-5)
            assert cached_greedy == rows_greedy
        assert packed.score(model) == packed.score(model, context_cache=None)


def test_models_without_a_kv_cache_keep_the_row_layout() -> None:
    from evomerge.fitness.scoring import supports_context_cache

    class NoCache(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
            raise AssertionError("not called")

    assert not supports_context_cache(NoCache(), 8)
    assert supports_context_cache(make_llama(50, hidden=16), 8)


def test_trm_titans_model_matches_lm_eval(task_dir: Path, tokenizer, no_network) -> None:
    """The Phase-2 family (plugin): same numbers as lm-eval, rolling windows included."""
    import lm_eval

    from evomerge.architectures import get_architecture
    from evomerge.fitness.lm_eval_adapter import EvoMergeLM

    arch = get_architecture("trm_titans_mag")
    torch.manual_seed(0)
    model = arch.model_class(arch.config("tiny", vocab_size=len(tokenizer))).eval()
    names = [ppl_task_name("narrative", "fitness"), cloze_task_name("dialogue", "fitness")]
    suite = TaskSuite(names=tuple(names), include_paths=(task_dir,), split="fitness")
    config = FitnessConfig(max_items=3, max_length=48)
    ours = FitnessHarness.build(suite, tokenizer, "cpu", config=config).measure(model, cost=False)
    lm = EvoMergeLM(pretrained=model, tokenizer=tokenizer, max_length=48, batch_size=5)
    theirs = lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=suite.task_manager(), limit=3
    )
    for task in names:
        for metric, value in ours.tasks[task].items():
            expected = theirs["results"][task][f"{metric},none"]
            if metric.startswith("acc"):
                assert value == expected, (task, metric)
            else:
                assert value == pytest.approx(expected, rel=1e-4), (task, metric)
    docs = (
        (task_dir.parent / "data" / "narrative" / "ppl_fitness.jsonl").read_text().splitlines()[:3]
    )
    assert (
        max(len(tokenizer.encode(json.loads(d)["text"])) for d in docs) > 2 * 48
    )  # windows rolled
