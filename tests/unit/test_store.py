import time

import pytest

from solo.store import Manifest, RunStore, read_manifest, staged_output


def manifest(config_hash="a", inputs=None):
    return Manifest(stage="s", status="running", config_hash=config_hash, inputs=inputs or {}, started_at=time.time())


def test_output_appears_only_when_whole(tmp_path):
    final = tmp_path / "stage"
    with staged_output(final, manifest()) as partial:
        (partial / "out.txt").write_text("x")
        assert not final.exists()
    assert (final / "out.txt").read_text() == "x"
    done = read_manifest(final)
    assert done.status == "complete" and done.outputs == ["out.txt"] and done.duration_s >= 0
    assert not partial.exists()


def test_a_crash_leaves_a_failed_partial_and_no_output(tmp_path):
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with staged_output(final, manifest()) as partial:
            (partial / "half.txt").write_text("x")
            raise RuntimeError("power cut")
    assert not final.exists()
    failed = read_manifest(partial)
    assert failed.status == "failed" and "power cut" in failed.error
    assert not RunStore(tmp_path).stage_dir("stage").exists()


def test_a_retry_with_the_same_config_resumes_in_the_partial(tmp_path):
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with staged_output(final, manifest()) as partial:
            (partial / "checkpoint").write_text("step 50")
            raise RuntimeError("killed")
    with staged_output(final, manifest()) as partial:
        assert (partial / "checkpoint").read_text() == "step 50"
    assert (final / "checkpoint").exists()


def test_a_retry_with_another_config_starts_clean(tmp_path):
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with staged_output(final, manifest("a")) as partial:
            (partial / "checkpoint").write_text("step 50")
            raise RuntimeError("killed")
    with staged_output(final, manifest("b")) as partial:
        assert not (partial / "checkpoint").exists()


def test_republishing_replaces_the_old_output(tmp_path):
    final = tmp_path / "stage"
    with staged_output(final, manifest("a")) as partial:
        (partial / "old.txt").write_text("old")
    with staged_output(final, manifest("b")) as partial:
        (partial / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["manifest.json", "new.txt"]
    assert read_manifest(final).config_hash == "b"


def test_manifest_key_changes_with_config_and_inputs():
    assert manifest("a").key() != manifest("b").key()
    assert manifest("a", {"x": "1"}).key() != manifest("a", {"x": "2"}).key()
    assert manifest("a", {"x": "1"}).key() == manifest("a", {"x": "1"}).key()


def test_adapters_are_registered_by_name_and_replaced_whole(tmp_path, monkeypatch):
    from solo.errors import SoloError
    from solo.store import find_adapter, register_adapter

    monkeypatch.setenv("SOLO_HOME", str(tmp_path / "home"))
    with pytest.raises(SoloError, match="no adapter named 'chat'.*registered: none"):
        find_adapter("chat")
    for version in ("1", "2"):
        source = tmp_path / f"adapter{version}"
        source.mkdir()
        (source / "adapter_config.json").write_text(version)
        register_adapter("chat", source, base_model="/models/base", method="qlora", metrics={"loss": 1.5, "x": [1]})
    folder, registered = find_adapter("chat")
    assert folder == tmp_path / "home" / "adapters" / "chat"
    assert (folder / "adapter_config.json").read_text() == "2"
    assert registered.method == "qlora" and registered.base_model == "/models/base" and \
        registered.metrics == {"loss": 1.5}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["chat"]  # nothing half-written left beside it
