"""The layout the code is organized by, held: one name per stage everywhere, a package per stage, no
import cycle, no file over 500 lines, a README a newcomer reads in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from solo.config import CONFIG_DIR, REPO_ROOT, load_config
from solo.pipeline import LEGACY_FOLDERS, SCHEMA_BY_FOLDER, STAGES, PipelineConfig, migrate_run
from solo.store import Manifest, RunStore, read_manifest, write_manifest

SOURCES = sorted(p for folder in ("solo", "jobs", "services") for p in (REPO_ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every module of ours `path` imports, in any statement (inside functions and TYPE_CHECKING too), and the
    packages above each, which run on import."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in known)
    return found - {module_name(path)}


def test_no_import_cycle_among_our_modules():
    graph = {module_name(p): imported_modules(p, {module_name(q) for q in SOURCES}) for p in SOURCES}
    visiting, done, cycles = [], set(), []

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycles.append(visiting[visiting.index(module):] + [module])
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_no_import_of_ours_hides_inside_a_function():
    hidden = []
    for path in SOURCES:
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}" for node in ast.walk(function)
                           if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in
                           ("solo", "jobs", "services")]
    assert not hidden, hidden


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_a_package_per_stage_and_few_modules_flat_in_solo():
    flat = sorted(p.name for p in (REPO_ROOT / "solo").glob("*.py"))
    assert len(flat) <= 12, flat
    for package in ("data", "tokens", "train", "evals", "export", "serving", "cli"):
        assert (REPO_ROOT / "solo" / package / "__init__.py").is_file()


@pytest.mark.parametrize("stage", [s for s in STAGES if s.name in PipelineConfig.model_fields], ids=lambda s: s.name)
def test_a_stage_has_one_name_for_its_job_config_section_and_configs_folder(stage):
    assert (REPO_ROOT / "jobs" / f"{stage.name}.py").is_file(), f"no jobs/{stage.name}.py"
    default = CONFIG_DIR / stage.name / "default.yaml"
    schema = SCHEMA_BY_FOLDER[stage.name]
    assert schema is PipelineConfig.model_fields[stage.name].annotation
    # A stage's job with no --config runs its schema's defaults, whatever the file spells out.
    assert load_config(schema, default) == schema(), f"{default} must hold {schema.__name__}'s defaults"


def test_readme_is_short_and_each_stage_has_a_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "make demo" in readme and "make test" in readme
    for page in ("data", "tokenizer", "training", "finetuning", "evaluation", "export", "serving", "clusters"):
        assert (REPO_ROOT / "docs" / f"{page}.md").is_file() and f"docs/{page}.md" in readme


def test_a_run_made_under_the_old_names_is_renamed_and_still_up_to_date(tmp_path):
    """Folders tokens/, sft/, eval/ and the data stage's old name in manifests: renamed in place, each
    manifest's inputs keyed by the new names, and the keys downstream stages recorded still matching."""
    run = RunStore(tmp_path / "old")
    old_layout = {"data": ("prepare_data", {"embedded": "raw"}), "tokenizer": ("tokenizer", {"prepare_data": None}),
                  "tokens": ("tokenize", {"prepare_data": None, "tokenizer": None})}
    keys: dict[str, str] = {}
    for folder, (stage, inputs) in old_layout.items():
        recorded = {name: keys.get(name, value) for name, value in inputs.items()}
        manifest = Manifest(stage=stage, status="complete", config_hash=f"h-{stage}", inputs=recorded, started_at=0)
        (run.root / folder).mkdir(parents=True)
        write_manifest(run.root / folder, manifest)
        keys[stage] = manifest.key()
    (run.root / "sft.partial").mkdir()

    migrate_run(run)

    assert sorted(p.name for p in run.root.iterdir()) == ["data", "finetune.partial", "tokenize", "tokenizer"]
    data, tokenizer, tokenize = (read_manifest(run.stage_dir(s)) for s in ("data", "tokenizer", "tokenize"))
    assert data.stage == "data" and tokenizer.inputs == {"data": data.key()}
    assert tokenize.inputs == {"data": data.key(), "tokenizer": tokenizer.key()}
    assert set(LEGACY_FOLDERS.values()) == {"tokenize", "finetune", "evaluate"}
    migrate_run(run)  # a second time changes nothing
    assert read_manifest(run.stage_dir("tokenize")) == tokenize


def test_every_test_module_has_a_name_of_its_own():
    """tests/ has no __init__.py, so pytest imports each test file by its bare name: two of one name in different
    folders cannot both be collected in one run."""
    names = [p.name for p in (REPO_ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
