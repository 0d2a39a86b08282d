"""Radio types, zigpy's configuration and log hygiene. Imports zigpy only when called."""

from __future__ import annotations

import importlib
import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from gatewayd import salvage
from gatewayd.config import ZigbeeConfig

# zigpy registers no entry points for these libraries, so the map is explicit; imported lazily.
RADIO_TYPES: Final[Mapping[str, str]] = {
    "znp": "zigpy_znp.zigbee.application:ControllerApplication",
    "ezsp": "bellows.zigbee.application:ControllerApplication",
    "deconz": "zigpy_deconz.zigbee.application:ControllerApplication",
    "zigate": "zigpy_zigate.zigbee.application:ControllerApplication",
    "xbee": "zigpy_xbee.zigbee.application:ControllerApplication",
    "virtual": "drivers.zigbee.virtual.radio:VirtualControllerApplication",
}

# Loggers of the stack whose debug records carry frames (PINs) or network settings (the key).
_STACK_LOGGERS: Final = ("zigpy", "bellows", "zigpy_znp", "zigpy_deconz", "zigpy_xbee")
# aiosqlite: zigpy's database thread, whose debug records carry each statement's values
_STACK_LOGGERS_ALSO: Final = ("zigpy_zigate", "zhaquirks", "zha", "aiosqlite")
_DOOR_LOCK: Final = 0x0101
_NIMLY_PIN: Final = 0x0101  # Onesti's (Nimly's) "last PIN code" attribute of the Door Lock


def load_radio(radio_type: str) -> Any:
    """The ControllerApplication class of a radio library."""
    target = RADIO_TYPES[radio_type]
    module_name, _, cls_name = target.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


def zigpy_config(
    cfg: ZigbeeConfig, database: Path, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """zigpy's config dict for our settings. OTA and topology scans are off: battery locks."""
    virtual = cfg.radio_type == "virtual"
    return {
        "device": {
            "path": cfg.device,
            "baudrate": cfg.baudrate,
            "flow_control": cfg.flow_control or None,
        },
        "database_path": str(database),
        "network": {"channel": cfg.channel, "channels": [cfg.channel]},
        "ota": {"enabled": False},
        "topology_scan_enabled": False,
        "backup_enabled": not virtual,
        "watchdog_enabled": not virtual,
        **(extra or {}),
    }


def private_file(path: Path) -> None:
    """Create `path` 0600 if missing and make sure it is 0600: zigpy keeps the key in clear."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.chmod(side, 0o600)


class DatabaseDamaged(sqlite3.DatabaseError):
    """`PRAGMA quick_check` found zigpy's database damaged."""


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` says zigpy's database file is damaged, as opposed to full, read-only or
    busy (sqlite3.OperationalError is a DatabaseError too): only a backup mends damage, a retry
    mends those once the disk has room again. SQLite says so as it does of the store's; zigpy
    of a schema version its tables disagree with."""
    from zigpy.exceptions import CorruptDatabase

    return isinstance(exc, DatabaseDamaged | CorruptDatabase) or salvage.is_corruption(exc)


def check_database(path: Path) -> None:
    """Raise sqlite3.DatabaseError if zigpy's database is damaged (`PRAGMA quick_check`). zigpy
    would find out itself, but then leaves the connection's thread running: its clean-up runs a
    statement on the damaged file, which fails before the close. That thread is not a daemon
    thread, so each attempt leaked one, and the process could no longer exit."""
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check(1)")]
    finally:
        db.close()
    if problems != ["ok"]:
        raise DatabaseDamaged(f"damaged ({problems[0] if problems else 'no answer'})")


def scrub_pins(path: Path) -> int:
    """Delete the PINs zigpy stored before the driver stripped them (`lock.guard_pins`): a
    Nimly lock's attribute 0x0101 of the Door Lock cluster, in zigpy's attribute cache tables.
    Their bytes are overwritten, not only unlinked. The number of rows deleted."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA secure_delete = ON")
        tables = [
            str(row[0])
            for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name LIKE 'attributes_cache%'"
            )
        ]
        where = f"cluster_id = {_DOOR_LOCK} AND attr_id = {_NIMLY_PIN}"
        deleted = 0
        for table in tables:
            columns = {str(row[1]) for row in db.execute(f'PRAGMA table_info("{table}")')}
            if {"cluster_id", "attr_id"} <= columns:
                deleted += db.execute(f'DELETE FROM "{table}" WHERE {where}').rowcount  # noqa: S608
        db.commit()
        if deleted:
            db.execute("VACUUM")  # no copy left in a free page, nor in the write-ahead log
    finally:
        db.close()
    return deleted


class _DropDebug(logging.Filter):
    """Drop the stack's debug records: they print raw frames and network settings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


_FILTER: Final = _DropDebug()


def guard_stack_logs() -> None:
    """Attach the filter to every logger of the zigbee stack that exists now (idempotent)."""
    prefixes = _STACK_LOGGERS + _STACK_LOGGERS_ALSO
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in prefixes]
    for name in [*prefixes, *names]:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
