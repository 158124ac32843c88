"""Shared pytest fixtures (append-only: several modules add theirs here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


# --------------------------------------------------------------------------- data
@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evomerge cache the tests share: ``$EVOMERGE_CACHE`` if set (CI shares one), else a session tmp dir."""
    env = os.environ.get("EVOMERGE_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("evomerge-cache")


@pytest.fixture(scope="session")
def data_layout(data_cache_dir: Path):  # -> evomerge.data.DataLayout
    """The real demo data, prepared once per session (downloads the pinned sources on first use)."""
    from evomerge.data import prepare_data

    return prepare_data(data_cache_dir, progress=False)


# --------------------------------------------------------------------------- merge
class TinyFamily:
    """A base model and three seeded 'fine-tunes' of it (base + small seeded perturbations)."""

    def __init__(self, config, base, models, build):  # type: ignore[no-untyped-def]
        self.config, self.base, self.models, self.build = config, base, models, build

    def calibration(self, seed: int = 0, shape: tuple[int, int] = (2, 16)):  # type: ignore[no-untyped-def]
        """A calibration callable: causal-LM loss on a fixed random token batch."""
        import torch

        ids = torch.randint(
            0, self.config.vocab_size, shape, generator=torch.Generator().manual_seed(seed)
        )

        def loss(model) -> float:  # type: ignore[no-untyped-def]
            with torch.no_grad():
                return float(model(input_ids=ids, labels=ids).loss)

        return loss


def _perturbed(state, seed: int, scale: float):  # type: ignore[no-untyped-def]
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}


@pytest.fixture(scope="session")
def tiny_llama_family() -> TinyFamily:
    """transformers Llama, hidden 32, 2 layers, untied head: fast enough for every merge test."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in LlamaForCausalLM(config).state_dict().items()}
    models = [_perturbed(base, seed, 0.02) for seed in (1, 2, 3)]

    def build(state=None):  # type: ignore[no-untyped-def]
        model = LlamaForCausalLM(config).eval()
        if state is not None:
            model.load_state_dict(state)
        return model

    return TinyFamily(config, base, models, build)


@pytest.fixture(scope="session")
def tiny_llama_dirs(
    tiny_llama_family: TinyFamily, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The tiny family saved with save_pretrained: {"base": path, "models": [p1, p2, p3]} (absolute)."""
    root = tmp_path_factory.mktemp("tiny-llama")
    paths = {}
    for name, state in [("base", tiny_llama_family.base)] + [
        (f"model_{i + 1}", s) for i, s in enumerate(tiny_llama_family.models)
    ]:
        tiny_llama_family.build(state).save_pretrained(root / name)
        paths[name] = str((root / name).resolve())
    return {"base": paths["base"], "models": [paths[f"model_{i}"] for i in (1, 2, 3)]}


# --------------------------------------------------------------------------- trm_titans
@pytest.fixture(scope="session")
def tiny_trm_config():  # -> evomerge_trm_titans.configuration.TrmTitansConfig
    """The ``tiny`` TRM x Titans-MAG preset (~0.8M parameters, vocab 2048, n = T = 1)."""
    from evomerge.architectures import get_architecture

    return get_architecture("trm_titans_mag").config("tiny")


@pytest.fixture(scope="session")
def tiny_trm_model(tiny_trm_config):  # type: ignore[no-untyped-def]
    """A seeded, randomly initialised tiny TRM x Titans-MAG model in eval mode (do not mutate)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_trm_config).eval()


@pytest.fixture(scope="session")
def tiny_trm_family() -> TinyFamily:
    """TRM×Titans-MAG ``tiny``: base + three seeded perturbations applied through the
    parameters (so the tied embedding/head stay tied, as in a real fine-tune)."""
    import torch

    from evomerge.architectures import UnknownArchitectureError, get_architecture

    try:
        arch = get_architecture("trm_titans_mag")
    except UnknownArchitectureError:
        pytest.skip("the evomerge_trm_titans plugin is not installed")
    config = arch.config("tiny")

    def build(state=None):  # type: ignore[no-untyped-def]
        model = arch.model_class(config).eval()
        if state is not None:
            model.load_state_dict(state)
        return model

    torch.manual_seed(0)
    base_model = build()
    states = []
    for seed in (1, 2, 3):
        model = build(base_model.state_dict())
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=generator))
        states.append(model.state_dict())
    return TinyFamily(config, base_model.state_dict(), states, build)


# --------------------------------------------------------------------------- phase 1
@pytest.fixture(scope="session")
def phase1_tiny(data_cache_dir: Path, data_layout) -> dict:  # type: ignore[no-untyped-def]
    """The shipped `tiny` demo family, made once (reused while the cache lives)."""
    from evomerge.phase1 import FamilySpec, make_family

    return make_family(
        data_cache_dir / "phase1-tiny",
        FamilySpec.for_preset("tiny"),
        cache_dir=data_cache_dir,
        progress=False,
    )


# --------------------------------------------------------------------------- plugins
class DocsPlugin:
    """The example plugin package of docs/plugins.md, installed into a private site dir.

    ``site`` holds the package and a ``.dist-info`` with its entry point (what
    ``pip install`` writes), so a subprocess with ``env`` finds it through
    ``importlib.metadata`` exactly as an installed plugin; nothing is installed
    into the test environment itself.
    """

    def __init__(self, site: Path, files: dict[str, str]) -> None:
        self.site, self.files = site, files

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with ``site`` first on PYTHONPATH."""
        path = os.pathsep.join(p for p in (str(self.site), os.environ.get("PYTHONPATH", "")) if p)
        return {**os.environ, "PYTHONPATH": path}


def docs_plugin_files() -> dict[str, str]:
    """The files of docs/plugins.md's "A complete merge-method plugin", by the path each block names first."""
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = docs[docs.index("## A complete merge-method plugin") :]
    files = {}
    for block in re.findall(r"```(?:toml|python)\n(.*?)```", section, re.S):
        first, _, body = block.partition("\n")
        files[first.removeprefix("# ").strip()] = body
    return files


def write_docs_plugin(site: Path) -> DocsPlugin:
    """Write the docs example into ``site`` as an installed distribution (package + dist-info)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the same parser, before it joined the standard library
        import tomli as tomllib

    files = docs_plugin_files()
    project_dir = next(Path(p).parent for p in files if p.endswith("pyproject.toml"))
    project = tomllib.loads(files[str(project_dir / "pyproject.toml")])["project"]
    for rel, text in files.items():
        if not rel.endswith("pyproject.toml"):
            dest = site / Path(rel).relative_to(project_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    group = project["entry-points"]["evomerge"]
    points = "".join(f"{name} = {value}\n" for name, value in group.items())
    (info / "entry_points.txt").write_text(f"[evomerge]\n{points}")
    return DocsPlugin(site, files)


@pytest.fixture
def docs_plugin(tmp_path: Path) -> DocsPlugin:
    """docs/plugins.md's ``evomerge-median`` example, installed for subprocesses (``.env``)."""
    return write_docs_plugin(tmp_path / "site")


@pytest.fixture(scope="session", autouse=True)
def _plugins_loaded() -> None:
    """Load the plugins once, as the CLI does, so any test alone finds plugin families in Auto*.

    ``import evomerge`` itself loads nothing (tests/test_plugins.py checks that in a
    fresh process); a test session is an evomerge application like the CLI.
    """
    import evomerge

    evomerge.load_plugins()


# --------------------------------------------------------------------------- real families
@pytest.fixture(scope="session")
def real_family(data_layout, data_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``real_family(name)`` -> ``tests/real_families.RealFamily``: base + three domain fine-tunes
    of the real transformers class ``name`` (llama, mistral, qwen2, qwen3, gemma2, phi3) at toy
    size, with the demo tokenizer; built once per session (a few seconds each), no download."""
    import real_families

    from evomerge.data.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(2048, cache_dir=data_cache_dir)
    texts = {d: data_layout.paragraphs(d, "train") for d in real_families.DOMAINS}
    root = tmp_path_factory.mktemp("real-families")
    built: dict[str, real_families.RealFamily] = {}

    def get(name: str) -> real_families.RealFamily:
        if name not in built:
            built[name] = real_families.build_family(name, root / name, tokenizer, texts)
        return built[name]

    return get


@pytest.fixture(scope="session")
def calibration_text(data_layout, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fitness-split demo text (all domains) in one file: `combos export --calibration`'s input."""
    path = tmp_path_factory.mktemp("calibration") / "fitness.txt"
    paragraphs = [
        p
        for d in ("narrative", "technical", "dialogue")
        for p in data_layout.paragraphs(d, "fitness")[:20]
    ]
    path.write_text("\n\n".join(paragraphs), encoding="utf-8")
    return path
