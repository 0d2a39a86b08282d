"""A fleet upgrade in place: state directories that older releases of gatewayd wrote (one per
schema version, see tests/fixtures/stores/make_stores.py), opened by the current code.

Each holds an identity, two sim locks, finished actions (one a set_code), an action that was
`processing` when the box lost power, and frames the cloud never acked. After the upgrade the
box must keep its identity and device ids, deliver every unacked frame once and in order, fail
the cut-off action without running it, and show the PIN nowhere."""

from __future__ import annotations

import gzip
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from devcloud.db import secret_hash
from gatewayd import protocol
from gatewayd.daemon import DB_NAME
from gatewayd.store import MIGRATIONS, SCHEMA_VERSION, Store, read_identity
from tests.cloudkit import Cloud, CloudFactory
from tests.e2e.conftest import tunnel_url
from tests.fixtures.stores.make_stores import summary
from tests.support import DaemonProcess, config_text, free_port, http_json

pytestmark = pytest.mark.stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "stores"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "manifest.json").is_file())
UNFINISHED = ("gateway_received", "processing")


def test_there_is_a_fixture_for_every_old_schema_version() -> None:
    versions = {
        json.loads((FIXTURES / c / "manifest.json").read_text())["schema_version"] for c in CASES
    }
    assert set(range(1, SCHEMA_VERSION)) <= versions


def unpack(case: str, state: Path) -> dict[str, Any]:
    """The fixture's store as a box's state directory (git keeps no file modes); its manifest."""
    state.mkdir(parents=True, mode=0o700)
    db = state / DB_NAME
    db.write_bytes(gzip.decompress((FIXTURES / case / f"{DB_NAME}.gz").read_bytes()))
    db.chmod(0o600)
    manifest: dict[str, Any] = json.loads((FIXTURES / case / "manifest.json").read_text())
    assert pragma(db, "user_version") == [manifest["schema_version"]]
    return manifest


def schema(db: Path) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        )
        return {(t, n, " ".join((s or "").split())) for t, n, s in rows}
    finally:
        conn.close()


def pragma(db: Path, name: str) -> list[Any]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute(f"PRAGMA {name}")]
    finally:
        conn.close()


def files_without(directory: Path, secret: str) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the PIN is in {path}"


@pytest.mark.parametrize("case", CASES)
def test_the_current_store_reads_what_an_old_release_wrote(tmp_path: Path, case: str) -> None:
    m = unpack(case, tmp_path / "state")
    db = tmp_path / "state" / DB_NAME
    before = read_identity(db)  # `gatewayd token` run on the box before the new daemon starts
    assert before is not None
    assert (before.registration_token, before.credential) == (
        m["registration_token"],
        m["credential"],
    )
    assert pragma(db, "user_version") == [m["schema_version"]]  # and it wrote nothing
    store = Store.open(db)
    try:
        assert pragma(db, "user_version") == [SCHEMA_VERSION] == [len(MIGRATIONS)]
        assert pragma(db, "integrity_check") == ["ok"]
        assert pragma(db, "foreign_key_check") == []

        ident = store.identity()
        assert ident.registration_token == m["registration_token"]
        assert (ident.gateway_id, ident.credential) == (m["gateway_id"], m["credential"])
        assert ident.claimed == (m["identity"] == "claimed")

        assert {d.native_id: d.device_id for d in store.devices()} == m["devices"]
        assert {d.driver for d in store.devices()} == {"sim"}

        assert store.acked_seq == m["acked_seq"]
        assert store.outbox_backlog() == len(m["unacked"])
        frames = store.outbox_after(0, limit=10_000)
        assert [summary(protocol.to_dict(protocol.decode(f))) for _, f in frames] == m["unacked"]
        assert [seq for seq, _ in frames] == [f["seq"] for f in m["unacked"]]

        cut = m["unfinished_action"]["id"]
        assert [a.id for a in store.actions_with_status(UNFINISHED)] == [cut]
        assert all(store.has_action(i) for i in [cut, *m["finished_actions"]])
        for action_id, status in m["finished_actions"].items():
            row = store.action(action_id)
            assert row is not None
            assert row.status == status
            assert [s for s, _ in row.transitions][-1] == status
    finally:
        store.close()
    fresh = tmp_path / "fresh" / DB_NAME
    Store.open(fresh).close()
    assert schema(db) == schema(fresh)  # the migrations end where a new box starts
    files_without(tmp_path / "state", m["pin"])


def cloud_events(cloud: Cloud, gateway_id: str) -> list[str]:
    rows = cloud.state.db._conn.execute(
        "SELECT id FROM events WHERE gateway_id = ? ORDER BY n", (gateway_id,)
    )
    return [r[0] for r in rows]


async def seed_cloud(cloud: Cloud, m: dict[str, Any]) -> None:
    """devcloud as the box left it: the gateway claimed with its credential, everything up to
    the store's acked seq received, and the cut-off action handed over."""
    db = cloud.state.db
    location = await cloud.location()
    now = "2026-12-04T11:00:00.000Z"
    with db.transaction():
        db.add_gateway(m["gateway_id"], location, "fixture box", secret_hash(m["credential"]), now)
        db.set_high_water(m["gateway_id"], m["acked_seq"])
        db.add_action(
            {
                "id": m["unfinished_action"]["id"],
                "entity_type": "Device",
                "entity_id": m["unfinished_action"]["device_id"],
                "gateway_id": m["gateway_id"],
                "location_id": location,
                "action": m["unfinished_action"]["action"],
                "data": {},
                "status": "gateway_received",
                "created_at": now,
                "deadline": "2026-12-04T11:02:00.000Z",
            }
        )


async def register(cloud: Cloud, token: str) -> str:
    """Claim the unclaimed box with the token it had before the upgrade; its gateway id."""
    location = await cloud.location()
    with anyio.fail_after(30):
        while True:  # the cloud knows a token once the box has presented it
            status, gw = await cloud.post(
                f"/v1/locations/{location}/register_gateway",
                {"registration_token": token, "name": "fixture box"},
            )
            if status == 200:
                return str(gw["id"])
            await anyio.sleep(0.1)


async def get(url: str) -> Any:
    return await anyio.to_thread.run_sync(http_json, url)


def old_frames(db: Path, version: int) -> list[tuple[int, bytes]]:
    """The outbox as the old release wrote it, read without gatewayd.store."""
    conn = sqlite3.connect(db)
    try:
        if version < 3:
            return [(s, bytes(f)) for s, f in conn.execute("SELECT seq, frame FROM outbox")]
        decoder = msgspec.msgpack.Decoder(list[bytes])
        rows = conn.execute("SELECT first_seq, frames FROM outbox ORDER BY last_seq").fetchall()
        return [(s, f) for first, blob in rows for s, f in enumerate(decoder.decode(blob), first)]
    finally:
        conn.close()


async def deliver_before_the_cut(cloud: Cloud, m: dict[str, Any], frames: list[bytes]) -> None:
    """The cloud received and acked `frames`, but the box lost power before it stored the acks."""
    tunnel = await cloud.tunnel(m["credential"])
    welcome = await tunnel.hello()
    assert isinstance(welcome, protocol.Welcome)
    assert welcome.acked_seq == m["acked_seq"]
    for raw in frames:
        await tunnel.ws.send_str(raw.decode())
        assert await tunnel.recv() == protocol.Ack(seq=json.loads(raw)["seq"])
    await tunnel.ws.close()


LOST_ACKS = 5
UPGRADES = [pytest.param(case, 0, id=case) for case in CASES] + [
    pytest.param(case, LOST_ACKS, id=f"{case}-lost-acks")
    for case in CASES
    if json.loads((FIXTURES / case / "manifest.json").read_text())["identity"] == "claimed"
]


@pytest.mark.parametrize(("case", "lost_acks"), UPGRADES)
async def test_an_upgraded_box_loses_nothing(
    tmp_path: Path,
    case: str,
    lost_acks: int,
    cloud_factory: CloudFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`lost_acks`: the cloud holds that many frames past the store's acked seq."""
    state = tmp_path / "state"
    m = unpack(case, state)
    cloud = await cloud_factory()
    claimed = m["identity"] == "claimed"
    if claimed:
        await seed_cloud(cloud, m)
    if lost_acks:
        outbox = old_frames(state / DB_NAME, m["schema_version"])
        held = [f for s, f in outbox if m["acked_seq"] < s <= m["acked_seq"] + lost_acks]
        assert len(held) == lost_acks
        await deliver_before_the_cut(cloud, m, held)
    received: list[tuple[str, dict[str, Any]]] = []
    apply = cloud.state.ingest.apply

    def record(gateway_id: str, msg: Any) -> Any:
        received.append((gateway_id, protocol.to_dict(msg)))
        return apply(gateway_id, msg)

    monkeypatch.setattr(cloud.state.ingest, "apply", record)
    cut = m["unfinished_action"]["id"]
    lock_b = m["unfinished_action"]["device_id"]
    old = m["unacked"][lost_acks:]  # the cloud holds the first lost_acks, and its welcome says so
    event_ids = {f["event_id"] for f in m["unacked"] if f["type"] == "event"}

    port = free_port()
    cfg = tmp_path / "gw.toml"
    assert cloud.server.port is not None
    cfg.write_text(config_text(state, status_port=port, cloud_url=tunnel_url(cloud.server.port)))
    log = tmp_path / "daemon.log"
    daemon = DaemonProcess(cfg, log).start()
    try:
        await anyio.to_thread.run_sync(daemon.wait_healthy, port)
        gateway_id = m["gateway_id"] if claimed else await register(cloud, m["registration_token"])

        def cloud_has_all() -> bool:
            stored = set(cloud_events(cloud, gateway_id))
            failed = [
                f
                for _, f in received
                if f.get("action_request_id") == cut and f["status"] == "failed"
            ]
            return event_ids <= stored and bool(failed)

        with anyio.fail_after(30):
            while not cloud_has_all():
                await anyio.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        with anyio.fail_after(15):
            while (status := await get(f"{base}/status"))["store"]["outbox_backlog"]:
                await anyio.sleep(0.05)
        assert status["tunnel"]["state"] == "connected"
        # a claimed box's kept credential is accepted at once; an unclaimed one redials once claimed
        assert status["tunnel"]["reconnects"] == (0 if claimed else 1)
        assert status["actions"]["counts"] == {"failed": 1}  # the cut-off action, and no run
        # an id from the old action log, sent again, is still never executed
        for action_id in [cut, *m["finished_actions"]]:
            again = {"device_id": lock_b, "action": "unlock", "id": action_id}
            answer = await anyio.to_thread.run_sync(http_json, f"{base}/actions", again)
            assert answer == {"action_request_id": action_id, "accepted": False}
        await anyio.sleep(0.3)
        status = await get(f"{base}/status")
        assert status["actions"]["counts"] == {"failed": 1}
        daemon.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(daemon.wait, 20) == 0
    finally:
        daemon.kill()

    # every frame reached the cloud once, in order: the old ones first, as they were
    assert {g for g, _ in received} == {gateway_id}
    frames = [f for _, f in received]
    seqs = [f["seq"] for f in frames]
    first = m["acked_seq"] + lost_acks + 1
    assert seqs == list(range(first, first + len(seqs)))
    assert [summary(f) for f in frames[: len(old)]] == old
    stored = cloud_events(cloud, gateway_id)
    assert sorted(stored) == sorted(set(stored))
    assert event_ids <= set(stored)
    assert {d["id"] for d in cloud.state.db.devices(gateway_id)} == set(m["devices"].values())

    # the cut-off action: failed as gateway_restarted, never run again
    new = frames[len(old) :]
    about_cut = [f for f in new if f.get("action_request_id") == cut]
    assert [(f["status"], f["error"]["type"]) for f in about_cut] == [
        ("failed", "gateway_restarted")
    ]
    assert not [
        f
        for f in new
        if f["type"] == "event" and f["event"]["details"].get("action_request_id") == cut
    ]
    reports = [f["device"] for f in new if f["type"] == "device" and f["device"]["id"] == lock_b]
    assert reports  # the lock as the new daemon found it: still locked
    assert all(d["properties"]["locked"] for d in reports)
    if claimed:
        action = cloud.state.db.action(cut)
        assert action is not None
        assert (action["status"], action["error"]["type"]) == ("failed", "gateway_restarted")
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert [
        (ln["event"], ln.get("action_request_id"))
        for ln in lines
        if ln["event"] == "actions.failed_after_restart"
    ] == [("actions.failed_after_restart", cut)]
    logged = [ln.get("status") for ln in lines if ln.get("action_request_id") == cut]
    assert [st for st in logged if st] == ["failed"]  # neither processing nor completed again

    # the store after the upgrade: migrated, intact, same identity and devices, nothing waiting
    db = state / DB_NAME
    assert pragma(db, "user_version") == [SCHEMA_VERSION]
    assert pragma(db, "integrity_check") == ["ok"]
    store = Store.open(db)
    try:
        ident = store.identity()
        assert ident.gateway_id == gateway_id
        if claimed:
            assert (ident.registration_token, ident.credential) == (
                m["registration_token"],
                m["credential"],
            )
        assert {d.native_id: d.device_id for d in store.devices()} == m["devices"]
        assert store.outbox_backlog() == 0
        assert store.acked_seq == seqs[-1]
        row = store.action(cut)
        assert row is not None
        assert row.status == "failed"
        assert row.error is not None
        assert row.error["type"] == "gateway_restarted"
        assert [s for s, _ in row.transitions] == ["gateway_received", "processing", "failed"]
        assert store.actions_with_status(UNFINISHED) == []
    finally:
        store.close()

    pin = m["pin"]
    assert pin not in json.dumps(frames)
    assert pin not in log.read_text()
    files_without(tmp_path, pin)  # devcloud's database and its WAL are there too
