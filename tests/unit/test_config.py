from pathlib import Path

import pytest

from solo.config import (CONFIG_DIR, SCHEMA_BY_FOLDER, ConfigError, PipelineConfig, TrainConfig, load_config,
                         parse_override)

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
