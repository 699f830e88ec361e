"""Where the commands get the cluster secret: --secret-file, --secret, $GOBUCKET_SECRET."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gobucket.cli.secret import (
    ENV_VAR,
    MAX_SECRET_FILE,
    SecretError,
    add_secret_options,
    read_secret,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_secret_options(parser)
    return parser.parse_args(list(argv))


def test_no_secret_anywhere_is_none() -> None:
    assert read_secret(parse(), {}) is None


def test_the_environment_gives_the_secret() -> None:
    assert read_secret(parse(), {ENV_VAR: "from-env"}) == b"from-env"


def test_a_file_gives_the_secret_without_its_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"from file \r\n")
    assert read_secret(parse("--secret-file", str(path)), {}) == b"from file "


def test_flags_win_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"file")
    env = {ENV_VAR: "env"}
    assert read_secret(parse("--secret-file", str(path)), env) == b"file"
    assert read_secret(parse("--secret", "flag"), env) == b"flag"


def test_binary_secret_files_are_kept_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"\x00\xffkey")
    assert read_secret(parse("--secret-file", str(path)), {}) == b"\x00\xffkey"


@pytest.mark.parametrize("content", [b"", b"\n", b"x" * (MAX_SECRET_FILE + 1)])
def test_an_empty_or_huge_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    with pytest.raises(SecretError, match="--secret-file"):
        read_secret(parse("--secret-file", str(path)), {})


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match="cannot read --secret-file"):
        read_secret(parse("--secret-file", str(tmp_path / "missing")), {})


def test_empty_values_are_refused() -> None:
    with pytest.raises(SecretError):
        read_secret(parse("--secret", ""), {})
    with pytest.raises(SecretError, match=ENV_VAR):
        read_secret(parse(), {ENV_VAR: ""})
