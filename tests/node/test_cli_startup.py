"""What every ``lpnode`` command pays before it does anything: imports, library chatter, a closed pipe.

Each test runs the CLI in a fresh interpreter: this process has long imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from lpnode.node.cli import EXIT_BROKEN_PIPE

HEAVY = ("torch", "diffusers", "transformers", "lpnode.simnet", "lpnode.models")


def run_cli(code: str, *args: str, **popen: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], **popen)  # type: ignore[call-overload,no-any-return]


def test_a_client_command_imports_no_model_stack(tmp_path: Path) -> None:
    # `lpnode id` (like `peers` or `receipt verify`) took ~5 s: the parser imported the simulator, hence torch
    code = (
        "import json, os, sys\n"
        "from lpnode.node.cli import main\n"
        "code = main(sys.argv[1:])\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "env = {k: os.environ.get(k) for k in ('DIFFUSERS_VERBOSITY', 'TRANSFORMERS_VERBOSITY')}\n"
        "print(json.dumps({'code': code, 'heavy': heavy, 'env': env}), file=sys.stderr)\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    child = run_cli(code, "id", "--data-dir", str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = child.communicate(timeout=60)
    report = json.loads(err.decode().strip().splitlines()[-1])
    assert report["code"] == 0 and out.decode().strip().startswith("12D3KooW")
    assert report["heavy"] == []
    # set before any command could import them: they read these only once, at import
    assert report["env"] == {"DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error"}


def test_the_sim_command_still_has_its_own_flags() -> None:
    child = run_cli(
        "import sys; from lpnode.node.cli import main; main(sys.argv[1:])",
        "sim",
        "run",
        "--help",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0 and b"--backend" in out


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    # `lpnode jobs | head -2` printed a BrokenPipeError traceback
    child = run_cli(
        "import sys; from lpnode.node.cli import main; sys.exit(main(sys.argv[1:]))",
        "id",
        "--data-dir",
        str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # before the child has even started: its one line meets a closed pipe
    err = child.stderr.read()
    assert child.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert b"Traceback" not in err and b"Exception ignored" not in err
