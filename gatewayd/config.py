"""TOML configuration decoded into frozen, validated settings; every mistake names its key."""

from __future__ import annotations

import ipaddress
import re
import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit

import msgspec

__all__ = [
    "ActionsConfig",
    "CloudConfig",
    "Config",
    "ConfigError",
    "DriversConfig",
    "GatewayConfig",
    "LogConfig",
    "SimConfig",
    "StatusConfig",
    "StoreConfig",
    "ZWaveConfig",
    "ZigbeeConfig",
    "is_loopback_ws_host",
    "load_config",
    "parse_config",
]

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65_535)]


class ConfigError(Exception):
    """A configuration file that cannot be used; the message is one line naming the key."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class GatewayConfig(_Section, frozen=True):
    state_dir: str = "/var/lib/gatewayd"
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] = "gatewayd"


class CloudConfig(_Section, frozen=True):
    url: str = ""  # empty: no tunnel (local only)
    ca_file: str = ""
    insecure: bool = False  # allow ws:// to a non-loopback host
    connect_timeout_s: PositiveSeconds = 10.0


class StatusConfig(_Section, frozen=True):
    listen: str = "127.0.0.1:8181"
    allow_remote: bool = False  # a non-loopback listen address must be opted into
    # host names the endpoint answers to besides IP addresses and localhost (DNS rebinding)
    allowed_hosts: list[Annotated[str, msgspec.Meta(min_length=1, max_length=253)]] = []
    local_actions: bool = False  # development: POST /actions and /simulate on this endpoint


class LogConfig(_Section, frozen=True):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ActionsConfig(_Section, frozen=True):
    default_timeout_s: PositiveSeconds = 30.0
    max_queue_per_device: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


class StoreConfig(_Section, frozen=True):
    synchronous: Literal["normal", "full"] = "normal"
    action_log_days: Annotated[int, msgspec.Meta(ge=1, le=3650)] = 30
    disk_low_mb: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 50  # 0: no warning


class SimConfig(_Section, frozen=True):
    enabled: bool = False
    locks: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 2
    latency_ms: Annotated[float, msgspec.Meta(ge=0, le=60_000)] = 50.0
    code_lengths: tuple[int, int] = (4, 8)
    slots: tuple[int, int] = (1, 11)
    auto_relock_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 0.0  # 0: off
    battery_drain_per_action: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    pair_delay_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.1  # pairing -> new lock joins


class ZWaveConfig(_Section, frozen=True):
    enabled: bool = False
    url: str = "ws://127.0.0.1:3000"  # the zwave-js-server websocket
    code_recheck_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 30.0  # 0: off
    interview_timeout_s: PositiveSeconds = 120.0
    connect_timeout_s: PositiveSeconds = 10.0
    heartbeat_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 15.0  # ping zwave-server
    reconnect_max_s: PositiveSeconds = 30.0  # backoff cap between reconnect attempts
    event_merge_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0  # report + notification -> 1
    code_confirm_s: PositiveSeconds = 5.0  # wait for a masked lock's programming notification
    command_timeout_s: PositiveSeconds = 60.0  # keep asking a silent lock (the deadline cuts first)
    mock_control_url: str = ""  # tests only: the mock controller's control channel


class ZigbeeConfig(_Section, frozen=True):
    enabled: bool = False
    radio_type: Literal["znp", "ezsp", "deconz", "zigate", "xbee", "virtual"] = "znp"
    device: str = "/dev/ttyUSB0"
    baudrate: Annotated[int, msgspec.Meta(ge=1200, le=4_000_000)] = 115_200
    flow_control: Literal["", "hardware", "software"] = ""
    channel: Annotated[int, msgspec.Meta(ge=11, le=26)] = 15
    database_path: str = "zigbee.db"  # relative to gateway.state_dir
    quirks: bool = True  # apply zha-quirks where a device matches (when installed)
    command_timeout_s: PositiveSeconds = 20.0  # one command to a lock, answer included
    report_wait_s: PositiveSeconds = 2.0  # wait this long for a state report, then read it
    event_merge_s: Annotated[float, msgspec.Meta(ge=0, le=10)] = 0.3  # report + notification
    availability_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 3600.0  # ping; 0: off
    reconnect_max_s: PositiveSeconds = 60.0  # backoff cap while the radio is unreachable
    virtual_locks: Annotated[int, msgspec.Meta(ge=0, le=200)] = 2  # radio_type "virtual" only
    virtual_joining_locks: Annotated[int, msgspec.Meta(ge=0, le=200)] = 0  # join on permit


class DriversConfig(_Section, frozen=True):
    sim: SimConfig = SimConfig()
    zwave: ZWaveConfig = ZWaveConfig()
    zigbee: ZigbeeConfig = ZigbeeConfig()


class Config(_Section, frozen=True):
    gateway: GatewayConfig = GatewayConfig()
    cloud: CloudConfig = CloudConfig()
    status: StatusConfig = StatusConfig()
    log: LogConfig = LogConfig()
    actions: ActionsConfig = ActionsConfig()
    store: StoreConfig = StoreConfig()
    drivers: DriversConfig = DriversConfig()

    @property
    def state_path(self) -> Path:
        return Path(self.gateway.state_dir)

    def enabled_drivers(self) -> list[str]:
        return [n for n in ("sim", "zwave", "zigbee") if getattr(self.drivers, n).enabled]

    def status_address(self) -> tuple[str, int]:
        return _split_listen(self.status.listen)


_LISTEN = re.compile(r"^\[?(?P<host>[^\[\]]+?)\]?:(?P<port>\d{1,5})$")


_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


def _split_listen(value: str) -> tuple[str, int]:
    """HOST:PORT with HOST an IP address or localhost: what the endpoint can bind at start-up,
    whatever DNS says then."""
    m = _LISTEN.match(value)
    if not m or not 0 <= int(m["port"]) <= 65_535 or not _is_address(m["host"]):
        raise ConfigError(
            f"status.listen: expected IP:PORT, [IPv6]:PORT or localhost:PORT, got {value!r}"
        )
    return m["host"], int(m["port"])


def _is_address(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str, *, ipv4_mapped: bool = False) -> bool:
    """localhost or a loopback address; `ipv4_mapped`: ::ffff:127.x counts too."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ipv4_mapped and isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1, as every Python version judges it
    return address.is_loopback


def is_loopback_ws_host(host: str) -> bool:
    """Whether plain ws:// to `host` (a URL's hostname) stays on this box: localhost or a
    loopback address, never a name that merely starts like one (`127.evil.com`).

    The one rule for check-config and the tunnel: a host one let through and the other refused
    stopped the daemon at start-up.
    """
    return _is_loopback(host, ipv4_mapped=True)


def _ws_url(key: str, url: str) -> SplitResult:
    """A ws:// or wss:// URL with a host and a valid port, and no user or password in it."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ of an IPv6 host; not quoted back, like the user part
        raise ConfigError(f"{key}: not a URL (an IPv6 host must be written [address])") from None
    if "@" in parts.netloc:
        # not quoted back: what precedes the @ may be a password
        raise ConfigError(f"{key}: no user or password in the URL")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        # neither zwave-js-server nor the tunnel takes one, and a token there would be shown
        # (the Z-Wave driver's url on /status and in its log lines): refused, not quoted
        raise ConfigError(f"{key}: no query (?…) or fragment (#…) in the URL")
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        parts.scheme not in ("ws", "wss")
        or not parts.hostname
        or not port_ok
        or (any(c.isspace() for c in url))
    ):
        raise ConfigError(f"{key}: expected ws:// or wss:// URL, got {url!r}")
    if not _is_address(parts.hostname):
        try:
            # what the resolver does at each dial: a UnicodeError there (an empty label, one
            # over 63 characters) ended the daemon, at every restart
            parts.hostname.encode("idna")
        except UnicodeError:
            raise ConfigError(
                f"{key}: {parts.hostname!r} is not a host name (empty label, or one over 63"
                " characters)"
            ) from None
    return parts


def _check_ca_file(path: str) -> None:
    """The tunnel loads it at start-up; a missing or unreadable bundle stopped the daemon."""
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:  # an OSError too: first
        raise ConfigError(f"cloud.ca_file: {path} holds no PEM certificate") from None
    except OSError as exc:
        raise ConfigError(f"cloud.ca_file: cannot read {path}: {exc.strerror or exc}") from None


# gatewayd's files in the state dir: daemon.DB_NAME with its -wal, -shm and .corrupt-* copies,
# disk.RESERVE_NAME (not imported: the CLI loads the config before anything heavier)
_GATEWAYD_FILES = ("gatewayd.db", "store.reserve")


def _check_database_path(value: str) -> None:
    """zigpy's file, inside the state directory: the only place the service may write (an empty
    path named the directory itself, and the radio stayed down on IsADirectoryError)."""
    path = Path(value)
    if (
        not value.strip()
        or value.endswith(("/", "/."))
        or not path.parts  # ".": the directory itself
        or path.is_absolute()
        or ".." in path.parts
    ):
        raise ConfigError(
            f"drivers.zigbee.database_path: expected a file name inside gateway.state_dir, "
            f"got {value!r}"
        )
    if len(path.parts) == 1 and path.name.startswith(_GATEWAYD_FILES):
        # zigpy opened the gateway's own store (or its WAL, its reserve) as its database: the
        # radio stayed down on a bare RuntimeError while check-config said ok
        raise ConfigError(
            f"drivers.zigbee.database_path: {value!r} is gatewayd's own file; use zigbee.db"
        )


def _check(cfg: Config) -> None:
    """Cross-field rules msgspec's per-field constraints cannot say."""
    if not cfg.gateway.state_dir.strip():
        raise ConfigError("gateway.state_dir: expected a directory, got an empty string")
    for key, value in (
        ("gateway.state_dir", cfg.gateway.state_dir),
        ("cloud.ca_file", cfg.cloud.ca_file),
        ("drivers.zigbee.device", cfg.drivers.zigbee.device),
        ("drivers.zigbee.database_path", cfg.drivers.zigbee.database_path),
    ):
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            # a NUL passed check-config and ended `run` with "embedded null byte"
            raise ConfigError(f"{key}: a path cannot hold control characters")
    # the service and the CLI (status, token) run from different working directories: a
    # relative path would give each its own store
    for key, value in (
        ("gateway.state_dir", cfg.gateway.state_dir),
        ("cloud.ca_file", cfg.cloud.ca_file),
    ):
        if value and not Path(value).is_absolute():
            raise ConfigError(f"{key}: {value!r} is a relative path; write it from / on")
    _check_database_path(cfg.drivers.zigbee.database_path)
    host, _ = _split_listen(cfg.status.listen)
    if not _is_loopback(host) and not cfg.status.allow_remote:
        raise ConfigError(
            f"status.listen: {host} is not a loopback address; set status.allow_remote = true"
        )
    for name in cfg.status.allowed_hosts:
        # compared with the Host header's name, port removed: "box.lan:8181" never matched
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(
                f"status.allowed_hosts: {name!r} is not a host name (no scheme, port or path)"
            )
    for key, (lo, hi), lo_min, hi_max in (
        ("drivers.sim.code_lengths", cfg.drivers.sim.code_lengths, 1, 16),
        ("drivers.sim.slots", cfg.drivers.sim.slots, 0, 1000),
    ):
        if not lo_min <= lo <= hi <= hi_max:
            raise ConfigError(f"{key}: expected [low, high] within {lo_min}..{hi_max}")
    if cfg.drivers.zwave.enabled:
        _ws_url("drivers.zwave.url", cfg.drivers.zwave.url)
    url = cfg.cloud.url
    if url:
        parts = _ws_url("cloud.url", url)
        host = parts.hostname or ""
        if parts.scheme == "ws" and not cfg.cloud.insecure and not is_loopback_ws_host(host):
            raise ConfigError("cloud.url: ws:// is allowed only to loopback; use wss://")
        if parts.scheme == "wss" and cfg.cloud.ca_file:
            _check_ca_file(cfg.cloud.ca_file)


def parse_config(text: str | bytes) -> Config:
    """Decode and validate TOML text. Raises ConfigError with a one-line message."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start}"
            ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark, as some Windows editors write
    try:
        cfg = msgspec.toml.decode(text, type=Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(_one_line(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"not valid TOML: {_one_line(str(exc))}") from None
    except RecursionError:  # the TOML parser recurses into each nested array or table
        raise ConfigError("not valid TOML: values nested too deeply") from None
    _check(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(data)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())
