"""load_recipe: errors name file:line and field; paths resolve against the recipe's folder; YAML round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.evolution.recipe import Recipe, RecipeError, load_recipe

GOOD = """\
name: round-trip
inputs:
  models: [m1, ../m2, /abs/m3]
  base_model: base
  expected_params: 791436
  params_tolerance: 0.1
stages:
  dare: {density: 0.3}
evolution:
  generations: 7
  mutation: {sigma: 0.02, sigma_mode: absolute, rate: 0.05}
  min_diversity: 0.25
  early_stop: null
  seed: 11
fitness:
  weights: {perplexity: 1.0, accuracy: 0.5}
  task_dirs: [tasks]
  min_improvement: 0.1
tracking: {wandb_mode: disabled, project: p}
device: {device: cpu, precision: bf16}
output: out/run
"""


def _write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _good(folder: Path) -> Path:
    """GOOD written into ``folder``, with the task dir it names (task dirs must exist)."""
    (folder / "tasks").mkdir(parents=True, exist_ok=True)
    return _write(folder, GOOD)


def _error(path: Path) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    return str(info.value)


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "inputs:\n  models: [a, b, c]\nevolution:\n  generations: 3\n  generatons: 10\n"
    )
    assert _error(path) == f"{path}:5: evolution.generatons: Extra inputs are not permitted"
    nested = _write(
        tmp_path, "inputs:\n  models: [a, b, c]\nevolution:\n  mutation:\n    sigmaa: 1\n", "n.yaml"
    )
    assert _error(nested).startswith(f"{nested}:5: evolution.mutation.sigmaa: Extra inputs")
    top = _write(tmp_path, "inputs:\n  models: [a, b, c]\ngenerations: 3\n", "t.yaml")
    assert _error(top).startswith(f"{top}:3: generations: Extra inputs")


def test_wrong_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "inputs:\n  models: [a, b, c]\nevolution:\n  generations: many\n")
    assert _error(path).startswith(
        f"{path}:4: evolution.generations: Input should be a valid integer"
    )
    lit = _write(
        tmp_path, "inputs:\n  models: [a, b, c]\ntracking:\n  wandb_mode: sometimes\n", "l.yaml"
    )
    assert _error(lit).startswith(
        f"{lit}:4: tracking.wandb_mode: Input should be 'offline', 'online' or 'disabled'"
    )
    bound = _write(tmp_path, "inputs:\n  models: [a, b, c]\n  params_tolerance: 2\n", "b.yaml")
    assert _error(bound).startswith(
        f"{bound}:3: inputs.params_tolerance: Input should be less than or equal to 1"
    )


def test_models_must_be_three(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ninputs:\n  models:\n    - a\n    - b\n")
    assert (
        _error(path)
        == f"{path}:3: inputs: Value error, `models` must list exactly 3 model dirs, got 2"
    )


def test_exactly_one_of_models_and_phase1(tmp_path: Path) -> None:
    both = _write(tmp_path, "inputs:\n  phase1: {preset: tiny}\n  models: [a, b, c]\n", "both.yaml")
    assert "give exactly one of `models` (three paths) or `phase1`" in _error(both)
    neither = _write(tmp_path, "inputs:\n  architecture: trm_titans_mag\n", "neither.yaml")
    assert _error(neither).startswith(f"{neither}:2: inputs: Value error, give exactly one of")
    missing = _write(tmp_path, "name: no-inputs\n", "missing.yaml")
    assert _error(missing) == f"{missing}:1: inputs: Field required"
    only_phase1 = load_recipe(
        _write(tmp_path, "inputs:\n  phase1: {preset: tiny, seed: 3}\n", "p1.yaml")
    )
    assert only_phase1.inputs.models is None and only_phase1.inputs.phase1 is not None
    assert only_phase1.inputs.phase1.seed == 3


def test_not_a_recipe(tmp_path: Path) -> None:
    assert _error(tmp_path / "absent.yaml") == f"{tmp_path / 'absent.yaml'}: recipe file not found"
    bad = _write(tmp_path, "inputs:\n  models: [a, b\n", "bad.yaml")
    assert _error(bad).startswith(f"{bad}:3: invalid YAML")
    seq = _write(tmp_path, "- a\n- b\n", "seq.yaml")
    assert _error(seq).startswith(f"{seq}:1: a recipe must be a mapping")


def test_relative_paths_resolve_against_the_recipe_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "project" / "recipes"
    path = _good(folder)
    monkeypatch.chdir(tmp_path)  # the current directory must not matter
    r = load_recipe(path)
    assert r.inputs.models == [folder / "m1", tmp_path / "project" / "m2", Path("/abs/m3")]
    assert r.inputs.base_model == folder / "base"
    assert r.fitness.task_dirs == [folder / "tasks"]
    assert r.output == folder / "out" / "run"
    p1 = load_recipe(_write(folder, "inputs:\n  phase1: {out: fam}\n", "p1.yaml"))
    assert p1.inputs.phase1 is not None and p1.inputs.phase1.out == folder / "fam"
    assert p1.output == folder / "runs" / "evomerge"  # defaults resolve too


def test_values_and_defaults(tmp_path: Path) -> None:
    r = load_recipe(_good(tmp_path))
    assert r.evolution.generations == 7 and r.evolution.early_stop is None
    assert r.evolution.mutation.sigma_mode == "absolute" and r.evolution.mutation.rate == 0.05
    assert r.stages == {"dare": {"density": 0.3}}
    assert r.fitness.weights == {"perplexity": 1.0, "accuracy": 0.5}
    d = load_recipe(_write(tmp_path, "inputs:\n  models: [a, b, c]\n", "d.yaml"))
    assert d.evolution.early_stop is not None and d.evolution.early_stop.patience == 5
    assert d.tracking.wandb_mode == "offline" and d.evolution.population == 8


def test_to_yaml_round_trips(tmp_path: Path) -> None:
    first = load_recipe(_good(tmp_path))
    dumped = first.to_yaml()
    second = load_recipe(
        _write(tmp_path / "elsewhere", dumped)
    )  # absolute paths now: folder no longer matters
    assert second == first
    assert second.to_yaml() == dumped
    assert Recipe.model_validate(first.model_dump(mode="json")) == first


# --------------------------------------------------------------------------- names resolve at load
MODELS3 = "inputs:\n  models: [a, b, c]\n"


def test_default_combos_table_and_its_stage_params(tmp_path: Path) -> None:
    from evomerge.merge import DEFAULT_COMBOS, StageParams

    r = load_recipe(_write(tmp_path, MODELS3))
    assert r.combo_table() == DEFAULT_COMBOS
    assert r.model_dump(mode="json")["combos"] == [
        ["linear", "slerp"],
        ["dare", "ties"],
        ["frankenmerge", "dfs"],
    ]
    swapped = load_recipe(
        _write(
            tmp_path,
            MODELS3 + "combos:\n  - [slerp, linear]\n  - [ties, dare]\n  - [dfs, frankenmerge]\n",
            "s.yaml",
        )
    )
    params = StageParams(methods=swapped.stages, table=swapped.combo_table())
    assert params.combo_methods("000") == ("slerp", "ties", "dfs")


def test_unknown_method_in_combos_names_its_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        MODELS3 + "combos:\n  - [linear, slerp]\n  - [dare, ties]\n  - [frankenmerge, dsf]\n",
    )
    assert _error(path).startswith(
        f"{path}:6: combos.2.1: no plugin registers merge method 'dsf'; registered: "
    )


def test_wrongly_staged_method_in_combos(tmp_path: Path) -> None:
    flow = _write(
        tmp_path, MODELS3 + "combos: [[linear, slerp], [dare, linear], [frankenmerge, dfs]]\n"
    )
    assert _error(flow) == (
        f"{flow}:3: combos.1.1: merge method 'linear' cannot fill the task_arithmetic stage "
        "(declared stage='interpolation', not a TaskArithmeticMethod); methods that can: dare, ties"
    )
    block = _write(
        tmp_path,
        MODELS3 + "combos:\n  - [ties, slerp]\n  - [dare, ties]\n  - [frankenmerge, dfs]\n",
        "b.yaml",
    )
    assert _error(block).startswith(
        f"{block}:4: combos.0.0: merge method 'ties' cannot fill the interpolation stage"
    )
    twice = _write(
        tmp_path,
        MODELS3 + "combos: [[linear, linear], [dare, ties], [frankenmerge, dfs]]\n",
        "t.yaml",
    )
    assert "combos: Value error, row 0 names 'linear' twice" in _error(twice)
    short = _write(tmp_path, MODELS3 + "combos: [[linear, slerp], [dare, ties]]\n", "s.yaml")
    assert _error(short).startswith(f"{short}:3: combos: List should have at least 3 items")


def test_stage_parameters_resolve_by_the_methods_declaration(tmp_path: Path) -> None:
    typo = _write(tmp_path, MODELS3 + "stages:\n  dare:\n    densty: 0.5\n")
    assert _error(typo) == (
        f"{typo}:5: stages.dare.densty: merge method 'dare' has no parameter 'densty'; "
        "parameters: density, lambda, seed"
    )
    choice = _write(tmp_path, MODELS3 + "stages:\n  slerp: {mode: bogus}\n", "c.yaml")
    assert _error(choice).startswith(
        f"{choice}:4: stages.slerp.mode: merge method 'slerp' parameter 'mode': 'bogus' is not one of"
    )
    kind = _write(
        tmp_path, MODELS3 + "stages:\n  ties:\n    lambda: 0.5\n    density: lots\n", "k.yaml"
    )
    assert _error(kind) == (
        f"{kind}:6: stages.ties.density: merge method 'ties' parameter 'density': "
        "expected float, got 'lots'"
    )
    unknown = _write(tmp_path, MODELS3 + "stages:\n  dara: {density: 0.5}\n", "u.yaml")
    assert _error(unknown).startswith(
        f"{unknown}:4: stages.dara: no plugin registers merge method 'dara'"
    )
    alias = _write(tmp_path, MODELS3 + "stages:\n  multislerp: {}\n", "a.yaml")
    assert _error(alias) == (
        f"{alias}:4: stages.multislerp: 'multislerp' is a mergekit name of merge method 'slerp'; "
        "key its parameters by 'slerp' (e.g. slerp: {mode: multislerp})"
    )


def test_stage_parameter_out_of_its_declared_range(tmp_path: Path) -> None:
    """dare's density is a fraction in (0, 1]: the method's declaration bounds it."""
    path = _write(tmp_path, MODELS3 + "stages:\n  dare: {density: 1.5}\n")
    message = _error(path)
    assert message.startswith(
        f"{path}:4: stages.dare.density: merge method 'dare' parameter 'density'"
    )
    assert "1.5" in message


def test_unknown_fitness_term(tmp_path: Path) -> None:
    path = _write(
        tmp_path, MODELS3 + "fitness:\n  weights:\n    perplexity: 1.0\n    acuracy: 0.5\n"
    )
    assert _error(path) == (
        f"{path}:6: fitness.weights.acuracy: no plugin registers fitness term 'acuracy'; "
        "registered: accuracy, memory, perplexity, speed"
    )


def test_unknown_task_and_domain(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        MODELS3
        + "fitness:\n  tasks:\n    - evomerge_ppl_narrative_fitness\n    - evomerge_ppl_poetry_fitness\n",
    )
    message = _error(path)
    assert message.startswith(
        f"{path}:6: fitness.tasks.1: unknown task 'evomerge_ppl_poetry_fitness': not a generated task; known: "
    )
    assert "evomerge_cloze_dialogue_fitness" in message and "\n" not in message
    domain = _write(tmp_path, MODELS3 + "fitness:\n  domains: [narrative, poetry]\n", "d.yaml")
    assert _error(domain) == (
        f"{domain}:4: fitness.domains.1: unknown domain 'poetry'; the data has: "
        "narrative, technical, dialogue"
    )
    no_dir = _write(tmp_path, MODELS3 + "fitness:\n  task_dirs: [my_tasks]\n", "n.yaml")
    assert (
        _error(no_dir)
        == f"{no_dir}:4: fitness.task_dirs.0: {tmp_path / 'my_tasks'}: not a directory"
    )


def test_tasks_of_task_dirs_are_known_without_lm_eval(tmp_path: Path) -> None:
    tasks = tmp_path / "my_tasks" / "sub"
    tasks.mkdir(parents=True)
    (tasks / "mine.yaml").write_text(
        "task: my_cloze\ntag: [my_tag]\ndataset_path: json\nprocess_docs: !function utils.process\n"
    )
    (tasks / "group.yaml").write_text("group: my_group\ntask: [my_cloze]\n")
    (tasks / "broken.yaml").write_text("task: [unclosed\n")
    recipe = _write(
        tmp_path,
        MODELS3
        + "fitness:\n  task_dirs: [my_tasks]\n  tasks: [my_cloze, my_group, my_tag, evomerge_fitness]\n",
    )
    assert load_recipe(recipe).fitness.tasks == [
        "my_cloze",
        "my_group",
        "my_tag",
        "evomerge_fitness",
    ]


def test_task_metrics_name_their_tasks_weights_and_data_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task metric's tasks must be defined in task_dirs, its data files readable from the
    working directory (lm-eval's rule), and its name weighted and not a registered term."""
    monkeypatch.chdir(tmp_path)
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    for name in ("mine", "mine_test"):
        (tasks / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\n"
            f"dataset_kwargs:\n  data_files:\n    test: data/{name}.jsonl\n"
        )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.jsonl").write_text("{}\n")

    def recipe(metric: str, weights: str = "{perplexity: 1.0, own: 0.5}") -> Path:
        text = MODELS3 + f"fitness:\n  task_dirs: [my_tasks]\n  weights: {weights}\n"
        return _write(tmp_path, text + f"  task_metrics:\n    - {metric}\n")

    missing = recipe("{name: own, task: mine, test_task: mine_test}")
    assert _error(missing) == (
        f"{missing}:7: fitness.task_metrics.0.test_task: {tasks / 'mine_test.yaml'}: "
        "dataset_kwargs.data_files: data/mine_test.jsonl not found (relative to the working "
        f"directory {tmp_path}, as lm-eval reads it)"
    )
    (tmp_path / "data" / "mine_test.jsonl").write_text("{}\n")
    assert load_recipe(missing).fitness.task_metrics[0].metric == "acc"
    unknown = recipe("{name: own, task: mine, test_task: yours}")
    assert _error(unknown) == (
        f"{unknown}:7: fitness.task_metrics.0.test_task: unknown task 'yours': not defined in "
        f"{tasks}"
    )
    unweighted = recipe("{name: own, task: mine, test_task: mine_test}", "{perplexity: 1.0}")
    assert _error(unweighted).endswith(
        "fitness.task_metrics.0.name: 'own' has no weight; add it to fitness.weights"
    )
    taken = recipe("{name: accuracy, task: mine, test_task: mine_test}", "{accuracy: 1.0}")
    assert _error(taken).endswith(
        "'accuracy' is already a registered fitness term; pick another name"
    )
    same = recipe("{name: own, task: mine, test_task: mine}")
    assert "task and test_task are both 'mine'" in _error(same)


def test_a_default_that_does_not_resolve_says_so(tmp_path: Path) -> None:
    """No `combos:` in the file: the error points at the file and says the default is at fault."""
    from evomerge.evolution.recipe import _check_names

    path = _write(tmp_path, MODELS3)
    recipe = load_recipe(path)
    recipe.combos = [("linear", "slerp"), ("dare", "ties"), ("frankenmerge", "absent_plugin")]
    import yaml

    with pytest.raises(RecipeError) as info:
        _check_names(path, yaml.compose(MODELS3), {"inputs": {}}, recipe)
    assert str(info.value).startswith(f"{path}:1: combos.2.1: no plugin registers merge method")
    assert str(info.value).endswith("(from the default: the recipe sets no `combos`)")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_exits_2_and_writes_nothing(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from evomerge.cli import app

    out = tmp_path / "out"
    path = _write(
        tmp_path,
        MODELS3 + f"fitness:\n  weights: {{perplexity: 1.0, sped: 0.2}}\noutput: {out}\n",
    )
    result = CliRunner().invoke(app, ["recipe", command, str(path)])
    assert result.exit_code == 2, result.output
    assert f"{path}:4: fitness.weights.sped: no plugin registers fitness term 'sped'" in " ".join(
        result.output.split()
    )
    assert "Traceback" not in result.output
    assert not out.exists()


def test_combos_show_uses_the_recipes_table_and_stages(tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from evomerge.cli import app

    path = _write(
        tmp_path,
        "inputs:\n  models: [/m/a, /m/b, /m/c]\n"
        "combos: [[slerp, linear], [ties, dare], [dfs, frankenmerge]]\n"
        "stages: {ties: {density: 0.3}}\n",
    )
    result = CliRunner().invoke(
        app, ["combos", "show", "000", "--recipe", str(path), "--set", "ties.lambda=0.5"]
    )
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["merge_method"] for d in docs] == ["slerp_chain", "ties", "dfs"]
    assert docs[0]["models"][0]["model"] == "/m/a"  # the recipe's inputs
    assert docs[1]["parameters"]["density"] == 0.3 and docs[1]["parameters"]["lambda"] == 0.5
    bad = _write(
        tmp_path,
        MODELS3 + "combos: [[linear, nope], [dare, ties], [frankenmerge, dfs]]\n",
        "b.yaml",
    )
    result = CliRunner().invoke(app, ["combos", "show", "--recipe", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:3: combos.0.1: no plugin registers merge method 'nope'" in " ".join(
        result.output.split()
    )
