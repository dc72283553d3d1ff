"""``lpnode sim`` refuses what cannot be a run before it starts (third outside-user pass)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from lpnode.simnet.cli import main


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--scale", "0"], "--scale: 0 must be above 0"),
        (["--scale", "-1"], "--scale: -1 must be above 0"),
        (["--duration", "-5"], "--duration: -5 must be above 0"),
        (["--duration", "nan"], "--duration: nan must be above 0"),
        (["--processes", "0"], "--processes: 0 must be above 0"),
        (["--scale", "lots"], "--scale: 'lots' is not a number"),
    ],
)
def test_a_scale_duration_or_process_count_that_is_not_positive_is_a_usage_error(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "churn", *flags])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_a_report_folder_that_cannot_be_written_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    out = io.StringIO()
    assert main(["run", "churn", "--scale", "0.01", "--duration", "1", "--quiet", "--out", str(a_file)], out) == 2
    assert "--out " + str(a_file) + ": a file is there, not a folder" in capsys.readouterr().err
    assert out.getvalue() == ""  # nothing simulated
    assert main(["run", "churn", "--quiet", "--out", str(a_file / "below")], out) == 2
    assert "cannot write under" in capsys.readouterr().err
