"""The `smartedit` entry point: one error line by default, the traceback too with -v."""

from __future__ import annotations

from smartedit_cli.main import main


def test_error_is_one_line_and_verbose_keeps_the_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    assert main(["shards", "inspect", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err
    assert main(["-v", "shards", "inspect", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and str(missing) in err
