import typing
from pathlib import Path

import pytest

from solo.config import CONFIG_DIR, ConfigError, Schema, load_config, parse_override
from solo.pipeline import SCHEMA_BY_FOLDER, PipelineConfig
from solo.train.config import FinetuneConfig, TrainConfig

ALL_YAML = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_there_are_configs():
    assert ALL_YAML, "configs/ should hold YAML"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_yaml_in_configs_validates(path: Path):
    folder = path.relative_to(CONFIG_DIR).parts[0]
    assert folder in SCHEMA_BY_FOLDER, f"no schema validates configs/{folder}/: add it to SCHEMA_BY_FOLDER"
    load_config(SCHEMA_BY_FOLDER[folder], path)


def test_unknown_key_names_the_file_and_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\npretrain:\n  max_stepz: 10\n")
    with pytest.raises(ConfigError) as error:
        load_config(PipelineConfig, bad)
    assert str(bad) in str(error.value)
    assert "pretrain.max_stepz" in str(error.value)


def test_wrong_type_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  workers: many\n")
    with pytest.raises(ConfigError, match="pretrain.workers"):
        load_config(PipelineConfig, bad)


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(PipelineConfig, tmp_path / "nope.yaml")


def test_overrides_are_typed_and_nested():
    config = load_config(PipelineConfig, None, ["pretrain.max_steps=7", "pretrain.optim.lr=1e-4", "run=other",
                                                "data.inputs=[{path: embedded, max_documents: 5}]"])
    assert config.pretrain.max_steps == 7
    assert config.pretrain.optim.lr == pytest.approx(1e-4)
    assert config.run == "other"
    assert config.data.inputs[0].max_documents == 5


def test_override_of_unknown_key_fails_before_work():
    with pytest.raises(ConfigError, match="pretrain.nope"):
        load_config(PipelineConfig, None, ["pretrain.nope=1"])


def test_override_needs_an_equals_sign():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("pretrain.max_steps")


def test_global_batch_must_divide_into_worker_micro_batches():
    with pytest.raises(ConfigError, match="global_batch"):
        load_config(TrainConfig, None, ["workers=2", "micro_batch=3", "global_batch=8"])


def test_fingerprint_tracks_every_setting():
    a = load_config(PipelineConfig)
    b = load_config(PipelineConfig, None, ["finetune.max_steps=61"])
    assert a.pretrain.fingerprint() == b.pretrain.fingerprint()
    assert a.finetune.fingerprint() != b.finetune.fingerprint()


def _schemas(root: type[Schema]) -> set[type[Schema]]:
    """`root` and every schema reachable from its fields (nested sections, lists and unions of them)."""
    found, stack = set(), [root]
    while stack:
        schema = stack.pop()
        if schema in found:
            continue
        found.add(schema)
        for field in schema.model_fields.values():
            for kind in _types(field.annotation):
                if isinstance(kind, type) and issubclass(kind, Schema):
                    stack.append(kind)
    return found


def _types(annotation) -> list:
    args = typing.get_args(annotation)
    return [annotation] if not args else [t for arg in args for t in _types(arg)]


EVERY_SCHEMA = sorted(set().union(*(_schemas(s) for s in SCHEMA_BY_FOLDER.values())), key=lambda s: s.__name__)


@pytest.mark.parametrize("schema", EVERY_SCHEMA, ids=lambda s: s.__name__)
def test_every_setting_says_what_it_does(schema: type[Schema]):
    undescribed = [name for name, field in schema.model_fields.items() if not (field.description or "").strip()]
    assert not undescribed, f"{schema.__name__}: give {undescribed} a docstring under the field"


def test_a_redeclared_setting_keeps_its_bounds():
    for name, field in FinetuneConfig.model_fields.items():
        inherited = TrainConfig.model_fields.get(name)
        if inherited is not None:
            assert field.metadata == inherited.metadata, f"FinetuneConfig.{name} lost {inherited.metadata}"
    with pytest.raises(ConfigError, match="finetune.max_steps"):
        load_config(PipelineConfig, None, ["finetune.max_steps=0"])


def test_a_bad_override_is_blamed_on_the_override_not_the_file_or_defaults(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(PipelineConfig, None, ["no_such_key=1"])
    assert str(error.value).startswith("--set no_such_key: no_such_key: Extra inputs are not permitted")
    good = tmp_path / "good.yaml"
    good.write_text("pretrain:\n  max_steps: 5\n")
    with pytest.raises(ConfigError) as error:
        load_config(PipelineConfig, good, ["pretrain.workers=3"])
    assert str(error.value).startswith("--set pretrain.workers: pretrain: ")  # global_batch 16 ÷ (8 × 3)
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  max_steps: 0\n")
    with pytest.raises(ConfigError) as error:
        load_config(PipelineConfig, bad, ["run=other"])
    assert str(error.value).startswith(f"{bad}: pretrain.max_steps: ")


def test_a_value_that_is_not_yaml_is_one_clear_error():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("pretrain.max_steps=[1")
