"""NodeConfig: precedence of the sources, and a clear message for every bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lpnode.node.cli import main as cli_main
from lpnode.node.config import DEFAULT_RPC_PORT, NodeConfig, load_config
from lpnode.protocol.errors import ConfigError

PEER = "12D3KooWRAN4i3Rzr95wZF7wjbXBmbJjnLB8dWd9xBzmtrSMyNWs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lpnode.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_loopback_only() -> None:
    config = load_config()
    assert config == NodeConfig()
    assert config.rpc_host == "127.0.0.1" and config.rpc_port == DEFAULT_RPC_PORT
    assert config.mdns and not config.rpc_allow_remote


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config_file = write(tmp_path, 'rpc = "127.0.0.1:1001"\nlog_level = "debug"\nqueue_capacity = 7\nmdns = false\n')
    env = {"LPNODE_RPC": "127.0.0.1:1002", "LPNODE_LOG_LEVEL": "warning"}
    flags = {"rpc": "127.0.0.1:1003", "log_level": None}  # None: flag not given
    config = load_config(config_file=config_file, env=env, flags=flags)
    assert config.rpc == "127.0.0.1:1003"  # flag beats environment and file
    assert config.log_level == "warning"  # environment beats file
    assert config.queue_capacity == 7  # file beats default
    assert config.mdns is False


def test_environment_lists_booleans_and_numbers() -> None:
    addr = f"/ip4/10.0.0.1/tcp/9471/p2p/{PEER}"
    env = {
        "LPNODE_LISTEN": "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2",
        "LPNODE_BOOTSTRAP": addr,
        "LPNODE_MDNS": "off",
        "LPNODE_ADVERT_INTERVAL_S": "0.5",
        "LPNODE_MAX_PEERS": "10",
        "UNRELATED": "ignored",
    }
    config = load_config(env=env)
    assert config.listen == ("/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/2")
    assert config.bootstrap == (addr,)
    assert config.mdns is False
    assert config.advert_interval_s == 0.5
    assert config.max_peers == 10


def test_relative_data_dir_in_a_file_is_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(config_file=write(tmp_path, 'data_dir = "node-a"\n'))
    assert config.data_dir == (tmp_path / "node-a").resolve()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"rpc": "0.0.0.0:9470"}, "needs --rpc-allow-remote"),
        ({"rpc": "localhost"}, "is not HOST:PORT"),
        ({"rpc": "127.0.0.1:70000"}, "is not HOST:PORT"),
        ({"listen": ("tcp/9471",)}, "is not a multiaddr"),
        ({"listen": ()}, "at least one address"),
        ({"bootstrap": ("/ip4/127.0.0.1/tcp/1",)}, "must end in /p2p/<peer id>"),
        ({"log_level": "loud"}, "log_level: 'loud' is not one of debug, info, warning, error"),
        ({"queue_capacity": 0}, "queue_capacity: 0 is outside 1..10000"),
        ({"explore_share": 1.5}, "explore_share: 1.5 is outside 0..1"),
        ({"advert_interval_s": 10.0, "advert_ttl_s": 5.0}, "must exceed advert_interval_s"),
        ({"serve": ("none", "tiny-sdxl")}, "'none' (requester only) cannot be combined"),
    ],
)
def test_invalid_values_name_the_setting(source: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(flags=source)


def test_remote_rpc_with_the_explicit_flag() -> None:
    config = load_config(flags={"rpc": "0.0.0.0:9470", "rpc_allow_remote": True})
    assert config.rpc_host == "0.0.0.0"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LPNODE_MDNS": "maybe"}, "mdns (from $LPNODE_MDNS): 'maybe' is not a boolean"),
        ({"LPNODE_QUEUE_CAPACITY": "four"}, "queue_capacity (from $LPNODE_QUEUE_CAPACITY)"),
        ({"LPNODE_ADVERT_TTL_S": "soon"}, "advert_ttl_s (from $LPNODE_ADVERT_TTL_S)"),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env=env)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "rpc = \n")
    with pytest.raises(ConfigError, match=f"config file {re.escape(str(path))} is not valid TOML"):
        load_config(config_file=path)


def test_toml_unknown_key_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "rcp = '127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'rcp' \(known: .*\brpc\b"):
        load_config(config_file=path)


def test_toml_wrong_type_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "queue_capacity = 2.5\nlisten = 5\n")
    with pytest.raises(ConfigError, match=r"queue_capacity \(from .*lpnode.toml\): 2.5 is not an integer"):
        load_config(config_file=path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(config_file=tmp_path / "absent.toml")


def test_unknown_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config(flags={"colour": "blue"})


# ---------------------------------------------------------------- through the CLI


def test_cli_reports_a_config_error_in_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli_main(["run", f"--data-dir={tmp_path}", "--rpc=0.0.0.0:9470"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lpnode: rpc: 0.0.0.0 is not a loopback address")


def test_cli_bad_toml_is_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["peers", f"--config={write(tmp_path, '[[')}"])
    assert code == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_cli_client_without_a_node_is_exit_code_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["peers", f"--data-dir={tmp_path}"]) == 1
    assert capsys.readouterr().err == (
        f"lpnode: no node running with data dir {tmp_path}: start one with `lpnode run --data-dir {tmp_path}`\n"
    )


def test_cli_id_creates_the_key_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["id", f"--data-dir={tmp_path}"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli_main(["id", f"--data-dir={tmp_path}"]) == 0
    assert capsys.readouterr().out.strip() == first
    assert first.startswith("12D3KooW")


def test_cli_environment_picks_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LPNODE_DATA_DIR", str(tmp_path / "from-env"))
    assert cli_main(["id"]) == 0
    assert (tmp_path / "from-env" / "identity.key").exists()
