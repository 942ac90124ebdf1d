"""The one checkpoint mechanism (mmllm.training.checkpoints) and the integrity manifests of
saved directories: atomic steps, `latest`, keep-N, the run check, and flipped bytes refused
with the file named."""

import json

import pytest

from mmllm.fileio import MANIFEST, IntegrityError, verify_manifest, write_manifest
from mmllm.training.checkpoints import (
    CHECKPOINTS,
    check_run,
    latest_checkpoint,
    load_trainer_state,
    save_checkpoint,
)


def writer(payload: bytes):
    def write_state(tmp):
        (tmp / "model.bin").write_bytes(payload)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "optimizer.bin").write_bytes(payload[::-1])

    return write_state


def test_saves_publish_latest_and_keep_the_newest(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(
            tmp_path, step, {"loss": step / 10}, keep=2, write_state=writer(b"w%d" % step)
        )
    root = tmp_path / CHECKPOINTS
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000006"]
    latest = latest_checkpoint(tmp_path, clean=True)
    assert latest == root / "step-000006"
    assert load_trainer_state(latest) == {"loss": 0.6, "step": 6}
    assert (latest / "model.bin").read_bytes() == b"w6"
    assert set(json.loads((latest / MANIFEST).read_text())) == {
        "model.bin",
        "sub/optimizer.bin",
        "trainer_state.json",
    }


def test_a_flipped_byte_is_refused_naming_the_file(tmp_path):
    save_checkpoint(tmp_path, 1, {}, keep=2, write_state=writer(bytes(4096)))
    path = tmp_path / CHECKPOINTS / "step-000001" / "sub" / "optimizer.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path) is not None  # unchecked read (the non-main ranks)
    with pytest.raises(IntegrityError, match=r"sub/optimizer\.bin: contents differ"):
        latest_checkpoint(tmp_path, clean=True)


def test_a_kill_mid_save_leaves_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {}, keep=2, write_state=writer(b"one"))
    with pytest.raises(RuntimeError):

        def dies(tmp):
            (tmp / "model.bin").write_bytes(b"half")
            raise RuntimeError("killed")

        save_checkpoint(tmp_path, 2, {}, keep=2, write_state=dies)
    assert list((tmp_path / CHECKPOINTS).glob(".tmp-*"))  # what the kill left
    latest = latest_checkpoint(tmp_path, clean=True)
    assert latest.name == "step-000001" and not list((tmp_path / CHECKPOINTS).glob(".tmp-*"))


def test_run_check_refuses_another_run_naming_the_key(tmp_path):
    check_run(tmp_path, {"config_hash": "abc", "tokenizer": {"k": 1}})
    check_run(tmp_path, {"config_hash": "abc", "tokenizer": {"k": 1}})  # same run: fine
    with pytest.raises(ValueError, match="another config .differs in config_hash"):
        check_run(tmp_path, {"config_hash": "xyz", "tokenizer": {"k": 1}})


def test_manifest_names_a_missing_file_and_a_missing_manifest(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(IntegrityError, match="no readable integrity manifest"):
        verify_manifest(tmp_path)
    write_manifest(tmp_path)
    verify_manifest(tmp_path)
    (tmp_path / "a.json").unlink()
    with pytest.raises(IntegrityError, match=r"a\.json: missing"):
        verify_manifest(tmp_path)


def test_logs_drop_a_torn_last_line_and_never_duplicate_a_step(tmp_path):
    from mmllm.fileio import log_at_step, read_jsonl, truncate_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_jsonl(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    truncate_jsonl(log, 1)  # resumed from step 1: the torn line goes too
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n'
    evals = tmp_path / "evals.jsonl"
    for step in (0, 5, 10, 10, 0):  # a rerun logs step 10, then a fresh start logs step 0
        log_at_step(evals, {"step": step})
    assert read_jsonl(evals) == [{"step": 0}]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON record"):
        read_jsonl(log)
