"""Configuration: the example file passes; every mistake is a one-line error naming its key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.config import ConfigError, parse_config
from tests.support import ROOT

MINIMAL = "[drivers.sim]\nenabled = true\n"


def test_example_config_passes_and_documents_every_section() -> None:
    text = (ROOT / "config.example.toml").read_text()
    cfg = parse_config(text)
    for section in ("[gateway]", "[cloud]", "[status]", "[log]", "[actions]", "[store]"):
        assert section in text
    for section in ("[drivers.sim]", "[drivers.zwave]", "[drivers.zigbee]"):
        assert section in text
    assert cfg.status_address() == ("127.0.0.1", 8181)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL + "[gateway]\nstate_dirr = '/x'\n", "state_dirr"),
        (MINIMAL + "[actions]\ndefault_timeout_s = 'soon'\n", "$.actions.default_timeout_s"),
        (MINIMAL + "[actions]\ndefault_timeout_s = -1\n", "$.actions.default_timeout_s"),
        (MINIMAL + "[log]\nlevel = 'loud'\n", "$.log.level"),
        (MINIMAL + "[store]\naction_log_days = 0\n", "$.store.action_log_days"),
        (MINIMAL + "[store]\ndisk_low_mb = -1\n", "$.store.disk_low_mb"),
        (MINIMAL + "[drivers.zigbee]\nchannel = 27\n", "$.drivers.zigbee.channel"),
        (MINIMAL + "[status]\nlisten = '0.0.0.0:8181'\n", "status.listen"),
        (MINIMAL + "[status]\nlisten = 'nohost'\n", "status.listen"),
        (MINIMAL + "[cloud]\nurl = 'ws://cloud.example.com/v1/gateway/tunnel'\n", "cloud.url"),
        (MINIMAL + "[cloud]\nurl = 'http://x'\n", "cloud.url"),
        (MINIMAL + "[drivers.sim]\nlocks = 3\n", "not valid TOML"),
        ("[[[", "not valid TOML"),
        (
            MINIMAL + "[cloud]\nurl = 'wss://cloud.example.com:99999/v1/gateway/tunnel'\n",
            "cloud.url",
        ),
        (
            MINIMAL + "[cloud]\nurl = 'wss://cloud.example.com:443x/v1/gateway/tunnel'\n",
            "cloud.url",
        ),
        (MINIMAL + "[cloud]\nurl = 'wss://:443/v1/gateway/tunnel'\n", "cloud.url"),
        (
            MINIMAL + "[status]\nlisten = 'gateway.invalid:8181'\nallow_remote = true\n",
            "status.listen",
        ),
        (MINIMAL + "[status]\nlisten = '999.0.0.1:8181'\nallow_remote = true\n", "status.listen"),
        (
            MINIMAL + "[drivers.zwave]\nenabled = true\nurl = '127.0.0.1:3000'\n",
            "drivers.zwave.url",
        ),
        (MINIMAL + "[gateway]\nstate_dir = ''\n", "gateway.state_dir"),
        (MINIMAL + "[status]\nallowed_hosts = ['box.lan:8181']\n", "status.allowed_hosts"),
        (MINIMAL + "[status]\nallowed_hosts = ['http://box.lan']\n", "status.allowed_hosts"),
        (MINIMAL + "[cloud]\nurl = 'wss://[::1/v1/gateway/tunnel'\n", "cloud.url"),
        (
            MINIMAL + "[drivers.zwave]\nenabled = true\nurl = 'ws://[::1:3000'\n",
            "drivers.zwave.url",
        ),
        ('[gateway]\nstate_dir = "/var/lib/a\\u0000b"\n', "gateway.state_dir"),
        (MINIMAL + '[drivers.zigbee]\ndevice = "/dev/tty\\nUSB0"\n', "drivers.zigbee.device"),
        (MINIMAL + "[drivers.zigbee]\ndatabase_path = ''\n", "drivers.zigbee.database_path"),
        (MINIMAL + "[drivers.zigbee]\ndatabase_path = 'db/'\n", "drivers.zigbee.database_path"),
        (
            MINIMAL + "[drivers.zigbee]\ndatabase_path = '/etc/zigbee.db'\n",
            "drivers.zigbee.database_path",
        ),
        (
            MINIMAL + "[drivers.zigbee]\ndatabase_path = '../zigbee.db'\n",
            "drivers.zigbee.database_path",
        ),
    ],
)
def test_bad_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    message = str(info.value)
    assert key in message
    assert "\n" not in message


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", ".corrupt-20261206T052545Z", "."])
def test_a_zigbee_database_path_naming_a_gatewayd_file_is_refused(suffix: str) -> None:
    """zigpy took the gateway's own store (or the state dir itself, for ".") as its database,
    and the radio stayed down on a bare RuntimeError while check-config said ok."""
    from gatewayd.daemon import DB_NAME
    from gatewayd.disk import RESERVE_NAME

    for name in (DB_NAME + suffix, RESERVE_NAME) if suffix != "." else (".", "zigbee/."):
        with pytest.raises(ConfigError, match=r"drivers\.zigbee\.database_path"):
            parse_config(MINIMAL + f"[drivers.zigbee]\ndatabase_path = '{name}'\n")
    parse_config(MINIMAL + "[drivers.zigbee]\ndatabase_path = 'zigbee-gatewayd.db'\n")


def test_remote_status_bind_needs_opt_in() -> None:
    cfg = parse_config(MINIMAL + "[status]\nlisten = '0.0.0.0:8181'\nallow_remote = true\n")
    assert cfg.status_address() == ("0.0.0.0", 8181)


def test_insecure_ws_to_remote_host_needs_opt_in() -> None:
    cfg = parse_config(
        MINIMAL + "[cloud]\nurl = 'ws://10.0.0.5:9000/v1/gateway/tunnel'\ninsecure = true\n"
    )
    assert cfg.cloud.url.startswith("ws://")


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("ws://127.0.0.1:9000@cloud.example.com/v1/gateway/tunnel", False),  # cloud.example.com
        ("ws://[0:0:0:0:0:0:0:1]:9000/v1/gateway/tunnel", True),
        ("ws://localhost:9000/v1/gateway/tunnel", True),
        ("ws://[::1]:9000/v1/gateway/tunnel", True),
        ("ws://127.0.0.2:9000/v1/gateway/tunnel", True),
        ("wss://cloud.example.com/v1/gateway/tunnel", True),
    ],
)
def test_a_cloud_url_check_config_accepts_is_one_the_tunnel_accepts(
    url: str, accepted: bool
) -> None:
    """check-config passed URLs the tunnel then refused as it was made, which stopped the
    daemon at start-up (and a user@host URL passed as loopback while it named another host)."""
    from typing import Any, cast

    from gatewayd.tunnel import Tunnel

    if not accepted:
        with pytest.raises(ConfigError, match=r"cloud\.url"):
            parse_config(MINIMAL + f"[cloud]\nurl = '{url}'\n")
        return
    cfg = parse_config(MINIMAL + f"[cloud]\nurl = '{url}'\n")
    Tunnel(cfg.cloud, cast(Any, None), lambda _request: None, dict)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("localhost", True),
        ("[::1]", True),
        ("[0:0:0:0:0:0:0:1]", True),
        ("127.evil.com", False),
        ("127.0.0.1.nip.io", False),
        ("127.1", False),
        ("10.0.0.5", False),
        ("cloud.example.com", False),
    ],
)
def test_check_config_and_the_tunnel_judge_plain_ws_hosts_alike(host: str, loopback: bool) -> None:
    """Both ways: a ws:// host the tunnel took as loopback and check-config refused (or the
    reverse) left `check-config` and `run` disagreeing about one file."""
    from typing import Any, cast

    from gatewayd.config import CloudConfig
    from gatewayd.tunnel import Tunnel

    url = f"ws://{host}:9000/v1/gateway/tunnel"
    try:
        parse_config(MINIMAL + f"[cloud]\nurl = '{url}'\n")
        config_ok = True
    except ConfigError:
        config_ok = False
    try:
        Tunnel(CloudConfig(url=url), cast(Any, None), lambda _request: None, dict)
        tunnel_ok = True
    except ValueError:
        tunnel_ok = False
    assert config_ok == tunnel_ok == loopback  # alike, and right: one shared rule could be wrong


@pytest.mark.parametrize("key", ["cloud.url", "drivers.zwave.url"])
@pytest.mark.parametrize("host", ["cloud..example.com", "a" * 64 + ".example.com", ".example.com"])
def test_a_host_name_the_resolver_cannot_encode_is_refused(key: str, host: str) -> None:
    """An empty label or one over 63 characters passed check-config, then each dial raised
    UnicodeError out of the resolver, which no reconnect catches: the daemon ended, at every
    restart."""
    section, _, field = key.rpartition(".")
    enable = "enabled = true\n" if section == "drivers.zwave" else ""
    with pytest.raises(ConfigError, match=re.escape(key) + ".*not a host name"):
        parse_config(MINIMAL + f"[{section}]\n{enable}{field} = 'wss://{host}/v1'\n")
    # a name with letters outside ASCII is one the resolver encodes: still taken
    parse_config(MINIMAL + f"[{section}]\n{enable}{field} = 'wss://b\u00fcro.example.com/v1'\n")


def test_a_url_with_a_password_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + "[cloud]\nurl = 'wss://gw:s3cret@cloud.example.com/v1'\n")
    assert "cloud.url" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ("cloud", "wss://cloud.example.com/v1/gateway/tunnel?token=s3cret"),
        ("cloud", "wss://cloud.example.com/v1/gateway/tunnel#s3cret"),
        ("drivers.zwave", "ws://127.0.0.1:3000/?token=s3cret"),
        ("drivers.zwave", "https://127.0.0.1:3000/?token=s3cret"),  # not ws: quoted before
    ],
)
def test_a_url_with_a_query_is_refused_without_quoting_it(section: str, url: str) -> None:
    """zwave-js-server and the cloud's tunnel take no query: a token written there was sent
    along, shown on /status (the Z-Wave driver's `url`) and in every `zwave.down` line."""
    with pytest.raises(ConfigError) as info:
        parse_config(
            MINIMAL
            + f"[{section}]\nenabled = true\nurl = '{url}'\n".replace(
                "[cloud]\nenabled = true\n", "[cloud]\n"
            )
        )
    assert str(info.value).startswith(f"{section}.url: ")
    assert "s3cret" not in str(info.value)


def test_a_ca_file_that_cannot_be_loaded_is_a_config_error(tmp_path: Path) -> None:
    """The tunnel loads the bundle as the daemon starts: check-config passed a missing one and
    `run` then stopped with a traceback."""
    cloud = "[cloud]\nurl = 'wss://cloud.example.com/v1/gateway/tunnel'\nca_file = '{}'\n"
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", tmp_path, not_pem):
        with pytest.raises(ConfigError) as info:
            parse_config(MINIMAL + cloud.format(path))
        assert str(info.value).startswith("cloud.ca_file: "), info.value
        assert "\n" not in str(info.value)
    import trustme

    good = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(good))
    assert parse_config(MINIMAL + cloud.format(good)).cloud.ca_file == str(good)


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd.cli", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = _check_config(ROOT / "config.example.toml")
    assert good.returncode == 0, good.stderr
    assert good.stdout.endswith(": ok (drivers: none enabled)\n")  # was "(drivers: )"
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text(MINIMAL + "[actions]\nmax_queue_per_device = 0\n")
    bad = _check_config(bad_file)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "max_queue_per_device" in lines[0]
    missing = _check_config(tmp_path / "nope.toml")
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    # `gatewayd status` typed without -c where nothing is installed: the line says what to do
    assert missing.stderr.rstrip().endswith("(-c FILE names the config to use)"), missing.stderr


def test_check_config_on_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    """A file saved in Latin-1 (a name with an umlaut) gave a UnicodeDecodeError traceback and
    exit 1, which systemd retries, instead of the config error."""
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(MINIMAL.encode() + "[gateway]\nname = 'Tür'\n".encode("latin-1"))
    result = _check_config(latin1)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "not UTF-8" in line


@pytest.mark.parametrize("nested", ["[" * 5000 + "]" * 5000, "{a = " * 5000 + "1" + "}" * 5000])
def test_check_config_on_a_value_nested_too_deeply(tmp_path: Path, nested: str) -> None:
    """A few KB of nested arrays or inline tables (a fuzzer's file, a template gone wrong) gave
    a RecursionError traceback from the TOML parser, and exit 1, which systemd retries."""
    deep = tmp_path / "deep.toml"
    deep.write_text(MINIMAL + f"[gateway]\nname = {nested}\n")
    result = _check_config(deep)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "not valid TOML" in line


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_config_or_a_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)


_values = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=20), st.booleans()
)


@settings(max_examples=200, deadline=None)
@given(
    section=st.sampled_from(
        ["gateway", "cloud", "status", "log", "actions", "store", "drivers.sim"]
    ),
    key=st.sampled_from(
        ["state_dir", "url", "listen", "level", "default_timeout_s", "synchronous", "locks", "x"]
    ),
    value=_values,
)
def test_any_key_value_is_accepted_or_refused_cleanly(
    section: str, key: str, value: object
) -> None:
    import json

    literal = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
    text = f"[{section}]\n{key} = {literal}\n"
    if section != "drivers.sim":
        text += MINIMAL
    else:
        text += "enabled = true\n"
    try:
        parse_config(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def _fields(struct: type, prefix: str) -> list[tuple[str, str]]:
    import msgspec

    out: list[tuple[str, str]] = []
    for field in msgspec.structs.fields(struct):
        typ = field.type
        if isinstance(typ, type) and issubclass(typ, msgspec.Struct):
            out += _fields(typ, f"{prefix}.{field.name}" if prefix else field.name)
        else:
            out.append((prefix, field.name))
    return out


def test_example_config_shows_every_key_in_its_section() -> None:
    """A key added to the settings without a line in config.example.toml fails here."""
    from gatewayd.config import Config

    text = (ROOT / "config.example.toml").read_text()
    sections: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[] ")
            sections[current] = ""
        elif current:
            sections[current] += line + "\n"
    for section, key in _fields(Config, ""):
        body = sections.get(section, "")
        assert f"\n{key} =" in "\n" + body, f"{section}.{key} is not in config.example.toml"


def test_relative_paths_are_refused_since_the_service_and_the_cli_run_elsewhere(
    tmp_path: Path,
) -> None:
    """`gatewayd token -c FILE` from a shell and the service started from / would each open a
    store of their own under a relative state_dir."""
    with pytest.raises(ConfigError) as info:
        parse_config("[gateway]\nstate_dir = 'var/gatewayd'\n")
    assert str(info.value).startswith("gateway.state_dir: 'var/gatewayd' is a relative path")
    cloud = "[cloud]\nurl = 'wss://cloud.example.com/v1/gateway/tunnel'\nca_file = 'ca.pem'\n"
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + cloud)
    assert str(info.value).startswith("cloud.ca_file: 'ca.pem' is a relative path")
    assert parse_config(f"[gateway]\nstate_dir = '{tmp_path}'\n").state_path == tmp_path
