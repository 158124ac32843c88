"""Configuration of the TRM x Titans-MAG causal LM, and its named presets.

Field names follow Hugging Face conventions (``hidden_size``,
``num_hidden_layers``...) so that mergekit, lm-eval and transformers' own
helpers find what they look for without adapters.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class TrmTitansConfig(PretrainedConfig):
    """Hyper-parameters of :class:`~evomerge_trm_titans.modeling.TrmTitansForCausalLM`.

    The defaults are the ``phase1-25m`` preset (about 24.2M parameters).
    ``trm_inner_steps`` and ``trm_cycles`` own no parameters, so they may be
    changed on a trained checkpoint (e.g. more recursion at evaluation time).
    """

    model_type = "trm_titans_mag"

    def __init__(
        self,
        vocab_size: int = 8192,
        hidden_size: int = 512,  # C; the residual width of every state x, y, z
        num_attention_heads: int = 8,  # head dim = hidden_size / heads = 64
        num_hidden_layers: int = 4,  # MAG blocks in the shared network f
        intermediate_size: int = 1536,  # SwiGLU width
        max_position_embeddings: int = 1024,  # RoPE has no table; the longest context evaluated
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        sliding_window: int = 128,  # each query sees itself and the 127 tokens before it
        num_persistent_tokens: int = 16,  # learned K/V prefix visible to every query
        memory_heads: int = 4,
        memory_head_dim: int = 128,
        memory_expansion: int = 4,  # memory MLP: head_dim -> expansion * head_dim -> head_dim
        memory_chunk_size: int = 16,  # tokens written per memory update; chunk c reads M_{c-1}
        trm_inner_steps: int = 2,  # n: z = f(z + y + x), n times per cycle
        trm_cycles: int = 2,  # T: cycles of (n latent steps, then y = f(y + z))
        use_memory: bool = True,  # False freezes the memory at its learned M0 (no test-time updates)
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = False,  # no KV cache: generation recomputes the full forward
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.sliding_window = sliding_window
        self.num_persistent_tokens = num_persistent_tokens
        self.memory_heads = memory_heads
        self.memory_head_dim = memory_head_dim
        self.memory_expansion = memory_expansion
        self.memory_chunk_size = memory_chunk_size
        self.trm_inner_steps = trm_inner_steps
        self.trm_cycles = trm_cycles
        self.use_memory = use_memory
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self._validate()
        kwargs["tie_word_embeddings"] = (
            tie_word_embeddings  # a base-class field in transformers 4.x
        )
        super().__init__(**kwargs)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def _validate(self) -> None:
        """Fail at construction, naming the field, rather than deep inside a forward pass."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"TrmTitansConfig: hidden_size ({self.hidden_size}) is not a multiple of "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"TrmTitansConfig: head dim {self.head_dim} must be even for RoPE")
        positive = (
            "vocab_size",
            "num_hidden_layers",
            "intermediate_size",
            "sliding_window",
            "memory_heads",
            "memory_head_dim",
            "memory_expansion",
            "memory_chunk_size",
            "trm_inner_steps",
            "trm_cycles",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrmTitansConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_persistent_tokens < 0:
            raise ValueError(
                f"TrmTitansConfig: num_persistent_tokens must be >= 0, got {self.num_persistent_tokens}"
            )


#: Named configurations. Both have the same tensor names, so code and tests
#: written against ``tiny`` hold for ``phase1-25m``.
PRESETS: dict[str, dict[str, Any]] = {
    # The Phase-1 family (docs/trm-titans.md "Presets"), ~24.2M parameters.
    "phase1-25m": {
        "vocab_size": 8192,
        "hidden_size": 512,
        "num_attention_heads": 8,
        "num_hidden_layers": 4,
        "intermediate_size": 1536,
        "sliding_window": 128,
        "num_persistent_tokens": 16,
        "memory_heads": 4,
        "memory_head_dim": 128,
        "memory_expansion": 4,
        "memory_chunk_size": 16,
        "trm_inner_steps": 2,
        "trm_cycles": 2,
        "max_position_embeddings": 1024,
    },
    # CPU-trainable (~0.8M parameters): tests and CI train, merge and evolve it in
    # seconds on 2 cores. n = T = 1 makes one forward 2 block passes instead of 24.
    "tiny": {
        "vocab_size": 2048,
        "hidden_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "intermediate_size": 384,
        "sliding_window": 32,
        "num_persistent_tokens": 4,
        "memory_heads": 2,
        "memory_head_dim": 32,
        "memory_expansion": 4,
        "memory_chunk_size": 8,
        "trm_inner_steps": 1,
        "trm_cycles": 1,
        "max_position_embeddings": 1024,
    },
}
