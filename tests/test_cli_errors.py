"""The `smartedit` entry point: one error line by default, the full traceback with -v."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def test_error_is_one_line_and_verbose_keeps_the_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    assert main(["shards", "inspect", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err
    with pytest.raises((FileNotFoundError, ValueError), match="no-such-dataset"):
        main(["-v", "shards", "inspect", str(missing)])
