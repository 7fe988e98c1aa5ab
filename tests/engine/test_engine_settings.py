"""The shared checks of settings, path-like names and output files (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dlr_hf.engine.report import check_writable, write_atomic
from dlr_hf.engine.settings import (
    MAX_SEED,
    looks_like_path,
    missing_path,
    validate_batch_size,
    validate_max_length,
    validate_num_samples,
    validate_precision,
    validate_seed,
)
from dlr_hf.errors import InvalidArgumentError


@pytest.mark.parametrize(
    "check, good, bad",
    [
        (validate_num_samples, [None, 1, 1000, np.int64(5)], [0, -3, 2.0, "10", True]),
        (validate_batch_size, [1, 64], [0, -1, 8.0, None]),
        (validate_seed, [0, 7, MAX_SEED], [-1, MAX_SEED + 1, 2**63, 1.5]),
        (validate_max_length, [1, 512], [0, -8]),
        (validate_precision, ["fp32", "bf16", "fp16"], ["fp8", "float32", None]),
    ],
)
def test_validators(check, good, bad):
    for value in good:
        assert check(value) == value
    for value in bad:
        with pytest.raises(InvalidArgumentError):
            check(value)


def test_messages_say_what_is_allowed():
    with pytest.raises(InvalidArgumentError, match=r"to use every example pass None \(CLI: --num-samples all\)"):
        validate_num_samples(0)
    with pytest.raises(InvalidArgumentError, match="from 0 to 4294967295"):
        validate_seed(-1)
    with pytest.raises(InvalidArgumentError) as raised:
        validate_seed("9" * 100_000)
    assert len(str(raised.value)) < 200  # a huge value is not echoed back


@pytest.mark.parametrize("name", ["/data/x", "./model", "../model", "~/model", "a/b/c", "data.csv", "train.PARQUET", "set.jsonl"])
def test_path_like_names(name):
    assert looks_like_path(name)


@pytest.mark.parametrize("name", ["bert-base-uncased", "org/name", "stanfordnlp/imdb", "org/model.v2"])
def test_hub_ids_are_not_paths(name):
    assert not looks_like_path(name) and not missing_path(name)


def test_missing_path(tmp_path):
    assert missing_path(str(tmp_path / "nothing"))
    assert not missing_path(str(tmp_path))


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "deep" / "er" / "report.json"
    write_atomic(target, "first\n")
    assert target.read_text() == "first\n"
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)

    def broken(stream):
        stream.write(b"half a rep")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, broken)
    assert target.read_text() == "first\n"  # the earlier file is untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temporary left behind
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"


def test_write_atomic_turns_os_errors_into_typed_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgumentError, match="cannot write"):
        write_atomic(tmp_path / "file" / "report.json", "x")


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "sub" / "r.json") == tmp_path / "new" / "sub" / "r.json"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        check_writable(tmp_path, "--output")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InvalidArgumentError, match="is a file"):
        check_writable(tmp_path / "plain" / "r.json", "--output")
