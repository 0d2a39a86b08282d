"""Bad input: action validation under arbitrary inputs, a coverage-guided fuzz run of the
tunnel decoder (atheris), and schemathesis against devcloud's served OpenAPI document.

Property tests of the decoder and of config loading live in tests/unit/test_protocol.py and
tests/unit/test_config.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd import protocol
from gatewayd.actions import validate
from gatewayd.model import (
    Action,
    ActionRequest,
    CodeConstraints,
    Device,
    GatewayError,
    utcnow,
)
from tests.reliability.harness import API_KEY, DevcloudProcess
from tests.support import ROOT

LOCK = Device(
    id="d1",
    native_id="n1",
    protocol="sim",
    name="front",
    manufacturer="m",
    model="x",
    codes=CodeConstraints(min_length=4, max_length=8, min_slot=2, max_slot=11),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
actions = st.sampled_from(
    ["lock", "unlock", "set_code", "clear_code", "pair_devices", "unpair_devices"]
) | st.text(max_size=20)
inputs = (
    st.dictionaries(
        st.sampled_from(["code", "slot_id", "duration", "device_id", "dsk_pin"]) | st.text(),
        json_values
        | st.text(alphabet="0123456789", max_size=10)
        | st.integers(min_value=-5, max_value=300),
        max_size=4,
    )
    | json_values
)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    action=actions,
    entity_type=st.sampled_from(["Device", "Gateway"]) | st.text(max_size=10),
    raw=inputs,
    known=st.booleans(),
)
def test_validation_accepts_or_raises_a_gateway_error(
    action: str, entity_type: str, raw: Any, known: bool
) -> None:
    now = utcnow()
    request = ActionRequest("a1", entity_type, "d1", action, raw, now, now + timedelta(seconds=9))
    try:
        result = validate(request, LOCK if known else None)
    except GatewayError as exc:
        assert exc.type  # a typed error that can go upstream as {type, message}
        assert isinstance(exc.to_dict()["message"], str)
        return
    # Accepted: a device action only for a known device, or a gateway action.
    assert result is None or isinstance(result, Action)
    assert (result is None) == (entity_type == "Gateway")
    if entity_type == "Device":
        assert known


def _seed_corpus(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    samples: list[protocol.Message] = [
        protocol.Hello(
            protocol=1,
            software_version="0.1",
            hardware="x",
            drivers=["sim"],
            registration_token="a-b-1",
        ),
        protocol.Welcome(protocol=1, gateway_id="g", acked_seq=3, heartbeat_s=60.0),
        protocol.ActionRequestMsg(
            id="r",
            entity_type="Device",
            entity_id="d",
            action="set_code",
            inputs={"code": "1234", "slot_id": 2},
            created_at="2020-06-11T21:08:36.000Z",
            deadline="2020-06-11T21:09:36.000Z",
        ),
        protocol.Ack(seq=7),
        protocol.ErrorMsg(code="invalid", message="x"),
    ]
    for n, msg in enumerate(samples):
        (corpus / f"seed{n}").write_bytes(protocol.encode(msg))


def _fuzz(tmp_path: Path, seconds: int) -> None:
    corpus = tmp_path / "corpus"
    _seed_corpus(corpus)
    script = Path(__file__).with_name("fuzz_protocol.py")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            f"-max_total_time={seconds}",
            "-rss_limit_mb=1024",
            "-max_len=70000",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    tail = proc.stderr.strip().splitlines()[-3:]
    print("\n".join(tail))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))
    assert any("Done" in line for line in tail)


def test_atheris_fuzz_of_the_tunnel_decoder_briefly(tmp_path: Path) -> None:
    _fuzz(tmp_path, 5)


@pytest.mark.reliability
def test_atheris_fuzz_of_the_tunnel_decoder(tmp_path: Path) -> None:
    _fuzz(tmp_path, int(os.environ.get("GATEWAYD_FUZZ_S", "60")))


def _schemathesis(tmp_path: Path, seconds: int, phases: str) -> None:
    cloud = DevcloudProcess(tmp_path / "cloud.db", tmp_path / "cloud.log").start()
    try:
        proc = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{cloud.base}/v1/openapi.json",
                "--auth",
                f"{API_KEY}:",
                "--checks",
                "not_a_server_error,response_schema_conformance,status_code_conformance,"
                "content_type_conformance",
                "--phases",
                phases,
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--max-time",
                str(seconds),
                "--workers",
                "2",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
        alive = cloud.alive()
    finally:
        cloud.kill()
    summary = [line for line in proc.stdout.splitlines() if "generated" in line or "passed" in line]
    print("\n".join(summary[-4:]))
    assert alive, "devcloud died under schemathesis"
    assert proc.returncode == 0, proc.stdout[-4000:]
    # aiohttp logs (and answers 400 to) unparsable requests; no traceback may pass devcloud code.
    log = (tmp_path / "cloud.log").read_text()
    assert f'File "{ROOT / "devcloud"}' not in log, log[-3000:]


@pytest.mark.stack
def test_schemathesis_against_devcloud_briefly(tmp_path: Path) -> None:
    _schemathesis(tmp_path, 25, "coverage,fuzzing")


@pytest.mark.reliability
def test_schemathesis_against_devcloud(tmp_path: Path) -> None:
    _schemathesis(
        tmp_path, int(os.environ.get("GATEWAYD_SCHEMA_S", "180")), "coverage,fuzzing,stateful"
    )
