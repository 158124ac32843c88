"""The fast in-process harness: lm-eval's tasks and metrics, with per-candidate cost ~ forward passes.

``FitnessHarness.build`` is done once per run: lm-eval loads the task YAMLs and
builds its request instances (``Task.build_all_requests``), the requests are
tokenised the way HFLM does and packed into padded device tensors, and the
fixed speed/memory batch and the calibration batch are cut. ``measure(model)``
then only runs forward passes and hands the log-likelihoods back to lm-eval's
own ``Task.apply_filters``, ``process_results`` and aggregation functions, so
the metrics are lm-eval's by construction (pinned by a test against
``lm_eval.simple_evaluate``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evomerge.device import resolve_device
from evomerge.fitness import batching
from evomerge.fitness.config import FitnessConfig
from evomerge.fitness.cost import CostProbe, noise_stats
from evomerge.fitness.measurements import Measurements
from evomerge.fitness.offline import ensure_offline
from evomerge.fitness.scoring import PackedRequests, RequestEncoder, TokenRequest, forward_kwargs
from evomerge.fitness.tasks import TaskSuite

SUPPORTED_OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")
logger = logging.getLogger(__name__)
#: Allocator bytes per input token of one eval batch, by (device, model class, parameters,
#: parameter dtype, autocast dtype, max length, shared contexts): measured once per run,
#: reused by every harness built after (minibatches); doubled at each out-of-memory backoff,
#: so later harnesses start from the size that worked.
_BYTES_PER_TOKEN: dict[tuple[Any, ...], float] = {}


@dataclass
class _TaskPlan:
    task: Any  # lm_eval.api.task.Task with its instances built
    # per instance: the token-request indices whose log-likelihoods it sums (rolling: windows)
    spans: list[list[int]]
    docs: list[tuple[int, Any]]  # (doc_id, doc) in lm-eval's order


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast for "bf16", and for "auto" on CUDA devices with bf16 support; else None."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _token_stream(encoder: RequestEncoder, texts: Sequence[str], n: int) -> list[int]:
    """``n`` tokens of ``texts`` joined by the prefix (eos) token, cycling if they are short."""
    if not texts:
        raise ValueError("the task suite has no text to cut a speed/calibration batch from")
    stream: list[int] = []
    while len(stream) < n:
        for text in texts:
            stream.extend(encoder.tok_encode(text))
            stream.append(encoder.prefix_token_id)
            if len(stream) >= n:
                break
    return stream[:n]


class FitnessHarness:
    """Measures models on a fixed task suite; build once, then ``measure`` many candidates."""

    def __init__(
        self,
        *,
        plans: dict[str, _TaskPlan],
        requests: Sequence[TokenRequest],
        packed: PackedRequests,
        probe: CostProbe,
        calibration: torch.Tensor | None,
        config: FitnessConfig,
        device: torch.device,
        max_length: int,
    ) -> None:
        self._plans = plans
        self._requests = requests
        self._packed = packed
        #: Tokens per eval batch now; ``auto`` on a GPU sizes it at the first ``measure``.
        self.batch_tokens = batching.initial_batch_tokens(config.batch_tokens)
        self._size_pending = batching.sizes_to_device(config.batch_tokens, device)
        self._size_key: tuple[Any, ...] | None = None  # set once auto has sized the batches
        self.probe = probe
        self._calibration = calibration
        self.config = config
        self.device = device
        self.max_length = max_length
        self.autocast_dtype = resolve_autocast(config.precision, device)
        from evomerge.fitness.terms import own_term_tasks

        #: tasks that are terms of their own (recipe's task_metrics, plugins' TaskMetricTerms)
        self._own_terms = own_term_tasks(config)

    @classmethod
    def build(
        cls,
        suite: TaskSuite,
        tokenizer: Any,
        device: str | torch.device | None = None,
        *,
        config: FitnessConfig | None = None,
        model_config: Any = None,
        max_length: int | None = None,
        samples: Mapping[str, Sequence[int]] | None = None,
    ) -> FitnessHarness:
        """Load ``suite``'s tasks and pre-tokenise everything once.

        ``samples`` (task name -> document indices, lm-eval's own ``samples``
        of ``simple_evaluate``) scores chosen documents instead of the first
        ``config.max_items``: the search's minibatches and validation sample.

        ``max_length`` (else ``config.max_length``, else lm-eval's rule on
        ``model_config`` and the tokenizer) sets rolling windows and truncation
        exactly as lm-eval would for that model.
        """
        ensure_offline()
        from lm_eval.models.utils import resolve_max_length

        config = config or FitnessConfig()
        dev = resolve_device(device)
        max_length = max_length or config.max_length or resolve_max_length(model_config, tokenizer)
        encoder = RequestEncoder(tokenizer, max_length)
        requests: list[TokenRequest] = []
        plans: dict[str, _TaskPlan] = {}
        texts: list[str] = []
        for name, task in suite.load().items():
            output_type = task.OUTPUT_TYPE
            if output_type not in SUPPORTED_OUTPUT_TYPES:
                raise ValueError(
                    f"task {name!r}: output_type {output_type!r} is not supported by the fast "
                    f"harness (supported: {', '.join(SUPPORTED_OUTPUT_TYPES)})"
                )
            # lm-eval draws a tqdm bar here that no argument turns off, once per task and
            # harness build (several per run); its log records go through logging, not this
            with contextlib.redirect_stderr(io.StringIO()):
                if samples is not None:
                    task.build_all_requests(samples=list(samples[name]), rank=0, world_size=1)
                else:
                    task.build_all_requests(limit=config.max_items, rank=0, world_size=1)
            spans: list[list[int]] = []
            docs: dict[int, Any] = {}
            for inst in task.instances:
                docs.setdefault(inst.doc_id, inst.doc)
                if inst.request_type == "loglikelihood_rolling":
                    (text,) = inst.args
                    texts.append(text)
                    windows = encoder.rolling(text)
                else:
                    context, continuation = inst.args[:2]
                    windows = [encoder.loglikelihood(context, continuation)]
                spans.append(list(range(len(requests), len(requests) + len(windows))))
                requests.extend(windows)
            plans[name] = _TaskPlan(task=task, spans=spans, docs=sorted(docs.items()))
        if not texts:  # no perplexity task: cut the fixed batches from the other requests' text
            texts = [
                str(inst.args[0]) + str(inst.args[1])
                for p in plans.values()
                for inst in p.task.instances
            ]
        packed = PackedRequests(
            requests,
            max_length=max_length,
            device=dev,
            batch_tokens=batching.initial_batch_tokens(config.batch_tokens),
        )
        seq = min(config.time_seq_len, max_length)
        probe_ids = _token_stream(encoder, texts, config.time_batch_size * seq)
        probe = CostProbe(torch.tensor(probe_ids, device=dev).view(config.time_batch_size, seq))
        calibration = None
        if suite.split != "test":
            cal_len = min(config.calibration_seq_len, max_length)
            cal = _token_stream(encoder, texts, config.calibration_sequences * cal_len)
            calibration = torch.tensor(cal, device=dev).view(config.calibration_sequences, cal_len)
        return cls(
            plans=plans,
            requests=requests,
            packed=packed,
            probe=probe,
            calibration=calibration,
            config=config,
            device=dev,
            max_length=max_length,
        )

    @property
    def task_names(self) -> list[str]:
        return list(self._plans)

    @property
    def n_tokens(self) -> int:
        """Input tokens forwarded per candidate for the task metrics."""
        return self._packed.n_tokens

    def _prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        if next(model.parameters()).device != self.device:
            model.to(self.device)  # in place, once: later candidates edit weights in place
        return model.eval()

    def measure(self, model: torch.nn.Module, *, cost: bool = True) -> Measurements:
        """Every task metric, pooled perplexity and accuracy, and (if ``cost``) speed and memory."""
        start = time.perf_counter()
        model = self._prepare(model)
        lls, greedy = self._score(model)
        m = self.aggregate(
            {name: self._process(plan, lls, greedy) for name, plan in self._plans.items()}
        )
        if cost:
            m.time_samples = self.probe.latency_samples(
                model,
                repeats=self.config.time_repeats,
                warmup=self.config.time_warmup,
                autocast_dtype=self.autocast_dtype,
            )
            m.time_per_1k_tokens = noise_stats(m.time_samples)["median"]
            m.peak_memory_bytes = self.probe.peak_memory(model, autocast_dtype=self.autocast_dtype)
        m.seconds = time.perf_counter() - start
        return m

    def aggregate(self, per_doc: Mapping[str, dict[tuple[str, str], list[Any]]]) -> Measurements:
        """Task metrics with lm-eval's own aggregations, and the pooled perplexity and
        accuracy, from per-document values (``Measurements.per_doc``; a resample of them
        gives the same figures over other documents)."""
        tasks: dict[str, dict[str, float]] = {}
        n_items: dict[str, int] = {}
        ppl_items: list[tuple[float, float]] = []
        acc_items: list[float] = []
        own_terms = self._own_terms
        for name, plan in self._plans.items():
            raw = per_doc[name]
            agg = plan.task.aggregation()
            tasks[name] = {
                (metric if filt == "none" else f"{metric},{filt}"): float(agg[metric](values))
                for (metric, filt), values in raw.items()
            }
            n_items[name] = len(next(iter(raw.values()), plan.docs))
            if name in own_terms:
                continue  # a task metric is its own term, not part of the pooled ones
            if plan.task.OUTPUT_TYPE == "loglikelihood_rolling":
                ppl_items.extend(raw.get((self.config.ppl_metric, "none"), []))
            elif plan.task.OUTPUT_TYPE == "multiple_choice":
                acc_items.extend(raw.get(("acc", "none"), []))
        return Measurements(
            tasks=tasks,
            perplexity=math.exp(-sum(a for a, _ in ppl_items) / sum(b for _, b in ppl_items))
            if ppl_items
            else math.nan,
            accuracy=sum(acc_items) / len(acc_items) if acc_items else math.nan,
            n_items=n_items,
            per_doc={name: dict(raw) for name, raw in per_doc.items()},
        )

    def _score(self, model: torch.nn.Module) -> tuple[list[float], list[bool]]:
        """Every request's log-likelihood and is-greedy; an out-of-memory error halves the
        eval batch and scores again (the smaller size is kept for later candidates)."""
        use_cache = self._packed.can_share_contexts(model, self.config.shared_contexts)
        if self._size_pending:
            self._size_pending = False
            try:
                self._size_to_device(model, use_cache)
            except Exception as exc:  # out of memory at the default size: the loop halves it
                if not batching.is_out_of_memory(exc):
                    raise
        while True:
            try:
                return self._packed.score(
                    model, autocast_dtype=self.autocast_dtype, context_cache=use_cache
                )
            except Exception as exc:
                if not batching.is_out_of_memory(exc):
                    raise
                if self.batch_tokens <= batching.MIN_BATCH_TOKENS:
                    raise
            # outside the handler: its traceback holds the failed batch's tensors
            smaller = self.batch_tokens // 2
            if self._size_key is not None:
                _BYTES_PER_TOKEN[self._size_key] *= self.batch_tokens / smaller
            logger.warning(
                "fitness: out of memory at %d tokens per eval batch; retrying at %d",
                self.batch_tokens,
                smaller,
            )
            self._repack(smaller)

    def _size_to_device(self, model: torch.nn.Module, use_cache: bool) -> None:
        """``batch_tokens: auto`` on a GPU: measure one batch's memory per token, size to the
        device (evomerge/fitness/batching.py)."""
        first = next(model.parameters())
        n_params = sum(p.numel() for p in model.parameters())
        key = (
            str(self.device),
            type(model).__name__,
            n_params,
            first.dtype,
            self.autocast_dtype,
            self.max_length,
            use_cache,
        )
        if key not in _BYTES_PER_TOKEN:
            _BYTES_PER_TOKEN[key] = batching.bytes_per_token(
                self.device,
                lambda: self._packed.forward_largest(
                    model, autocast_dtype=self.autocast_dtype, context_cache=use_cache
                ),
            )
        self._size_key = key
        total = batching.device_total_memory(self.device)
        tokens = batching.auto_batch_tokens(_BYTES_PER_TOKEN[key], total)
        if tokens != self.batch_tokens:
            self._repack(tokens)

    def _repack(self, batch_tokens: int) -> None:
        self._packed = PackedRequests(
            self._requests,
            max_length=self.max_length,
            device=self.device,
            batch_tokens=batch_tokens,
        )
        self.batch_tokens = batch_tokens
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def _process(
        plan: _TaskPlan, lls: list[float], greedy: list[bool]
    ) -> dict[tuple[str, str], list]:
        """lm-eval's own filters, ``process_results`` and raw-metric collection for one task."""
        task = plan.task
        by_doc: dict[int, list[Any]] = defaultdict(list)
        for inst, span in zip(task.instances, plan.spans, strict=True):
            if inst.request_type == "loglikelihood_rolling":
                result: Any = sum(lls[i] for i in span)
            else:
                (i,) = span
                result = (lls[i], greedy[i])
            inst.resps = [result] * (inst.repeats or 1)
            inst.filtered_resps = {}
            by_doc[inst.doc_id].append(inst)
        task.apply_filters()
        raw: dict[tuple[str, str], list] = defaultdict(list)
        for filt in task.instances[0].filtered_resps:
            for doc_id, doc in plan.docs:
                insts = sorted(by_doc[doc_id], key=lambda x: x.idx)
                metrics = task.process_results(doc, [x.filtered_resps[filt] for x in insts])
                for metric, value in metrics.items():
                    raw[(metric, filt)].append(value)
        return raw

    @torch.inference_mode()
    def calibration_loss(self, model: torch.nn.Module) -> float:
        """Mean token NLL on a small fixed batch of the fitness split (for frankenmerge layer picks)."""
        if self._calibration is None:
            raise ValueError(
                "calibration_loss: this harness scores the test split, never used for selection"
            )
        model = self._prepare(model)
        ids = self._calibration
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            logits = model(input_ids=ids, **forward_kwargs(model)).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
        )
        return float(loss)

    def repeat_noise(
        self, model: torch.nn.Module, repeats: int = 10
    ) -> dict[str, dict[str, float]]:
        """Noise of the cost terms on one model: ``repeats`` full measurements of each.

        Each latency value is itself the median of ``config.time_repeats``
        forwards, exactly as in :meth:`measure`, so this is the noise a
        candidate's speed term really carries.
        """
        model = self._prepare(model)
        times, mems = [], []
        for _ in range(repeats):
            samples = self.probe.latency_samples(
                model,
                repeats=self.config.time_repeats,
                warmup=self.config.time_warmup,
                autocast_dtype=self.autocast_dtype,
            )
            times.append(noise_stats(samples)["median"])
            peak = self.probe.peak_memory(model, autocast_dtype=self.autocast_dtype, cache=False)
            mems.append(float(peak))
        return {"time_per_1k_tokens": noise_stats(times), "peak_memory_bytes": noise_stats(mems)}
