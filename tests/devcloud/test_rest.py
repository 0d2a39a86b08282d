"""REST v1 as seed 001 shows it: shapes, auth, strict validation, seed-003 errors."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd import protocol as p
from tests.devcloud.conftest import API_KEY, DEVICE_ID, Cloud, device_body


def assert_error(body: Any, type_: str) -> None:
    """The seed-003 error shape."""
    assert body["ok"] is False
    assert body["error"]["type"] == type_
    assert isinstance(body["error"]["message"], str)
    assert isinstance(body["error"]["request_id"], str)
    assert set(body["error"]) <= {"type", "message", "validation_errors", "request_id"}


async def test_locations_are_created_and_listed(cloud: Cloud) -> None:
    status, created = await cloud.post(
        "/v1/locations", {"name": "12119 robinridge ln", "timezone": "America/Los_Angeles"}
    )
    assert status == 200
    assert set(created) == {"id", "name"}
    assert created["name"] == "12119 robinridge ln"
    await cloud.post("/v1/locations", {"name": "210 Church St", "timezone": "America/New_York"})
    listed = await cloud.get("/v1/locations")
    assert [loc["name"] for loc in listed] == ["12119 robinridge ln", "210 Church St"]
    assert listed[0] == created


async def test_groups_is_the_seeds_older_name_for_the_location_list(cloud: Cloud) -> None:
    """Seed 001's authentication example is `curl /v1/groups -u "$KEY:"`, answered with the
    location list; devcloud answered 404."""
    await cloud.post("/v1/locations", {"name": "12119 robinridge ln", "timezone": "UTC"})
    assert await cloud.get("/v1/groups") == await cloud.get("/v1/locations")
    async with cloud.http.get(cloud.url("/v1/groups")) as resp:
        assert resp.status == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": aiohttp.encode_basic_auth("wrong-key")},
        {"Authorization": "Bearer " + API_KEY},
        {"Authorization": "Basic !!!not-base64"},
    ],
)
async def test_requests_without_the_api_key_get_401(cloud: Cloud, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/v1/locations"), ("POST", "/v1/devices/x/actions/unlock")):
        async with cloud.http.request(method, cloud.url(path), headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
            body = await resp.json()
        assert_error(body, "unauthorized")
        assert API_KEY not in json.dumps(body)


async def test_the_openapi_document_describes_every_route(cloud: Cloud) -> None:
    async with cloud.http.get(cloud.url("/v1/openapi.json")) as resp:
        assert resp.status == 200
        spec = await resp.json()
    assert spec["openapi"].startswith("3.1")
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = {
        (r.resource.canonical, r.method)
        for r in cloud.server.app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    served_plain = {
        (path, m)
        for path, m in served
        if "{action" not in path and path not in ("/v1/openapi.json", "/v1/gateway/tunnel")
    }
    assert served_plain <= described
    for action in ("lock", "unlock", "set_code", "clear_code"):
        assert (f"/v1/devices/{{device_id}}/actions/{action}", "POST") in described
    for action in ("pair_devices", "unpair_devices"):
        assert (f"/v1/gateways/{{gateway_id}}/actions/{action}", "POST") in described


async def test_the_openapi_document_gives_the_limits_the_server_applies(cloud: Cloud) -> None:
    """It allowed an unpair `device_id` of 200 characters where the server refuses over 100,
    and listed no 413 though every POST refuses a body over 64 KiB."""
    spec = await cloud.get("/v1/openapi.json")
    posts = {path: ops["post"] for path, ops in spec["paths"].items() if "post" in ops}
    assert posts
    assert all("413" in op["responses"] for op in posts.values())
    status, body = await cloud.post("/v1/locations", {"name": "x" * 70_000})
    assert status == 413
    assert_error(body, "payload_too_large")
    unpair = posts["/v1/gateways/{gateway_id}/actions/unpair_devices"]
    limit = unpair["requestBody"]["content"]["application/json"]["schema"]["properties"]["data"]
    assert limit["properties"]["device_id"]["maxLength"] == 100
    _, gateway_id, _ = await cloud.claimed_gateway()
    path = f"/v1/gateways/{gateway_id}/actions/unpair_devices"
    for length, error in ((100, "device_not_found"), (101, "invalid_input")):
        status, body = await cloud.post(path, {"data": {"duration": 5, "device_id": "d" * length}})
        assert status in (400, 404), body
        assert_error(body, error)


async def test_unknown_resources_are_404_in_the_seed_shape(cloud: Cloud) -> None:
    for path, type_ in (
        ("/v1/devices/nope", "device_not_found"),
        ("/v1/gateways/nope", "gateway_not_found"),
        ("/v1/action_requests/nope", "action_request_not_found"),
        ("/v1/no/such/route", "not_found"),
    ):
        status, body = await cloud.request("GET", path)
        assert status == 404, path
        assert_error(body, type_)
    status, body = await cloud.post("/v1/devices/nope/actions/unlock")
    assert status == 404
    assert_error(body, "device_not_found")
    status, body = await cloud.post(
        "/v1/locations/nope/register_gateway", {"registration_token": "a-b-1", "name": "x"}
    )
    assert status == 404
    assert_error(body, "location_not_found")


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"timezone": "UTC"}, "name", "Required"),
        ({"name": 5, "timezone": "UTC"}, "name", "Expected string"),
        ({"name": "", "timezone": "UTC"}, "name", "Must be between 1 and 200 characters"),
        ({"name": "a", "timezone": "UTC", "color": "red"}, "color", "Unrecognized field"),
        # seed 001: "When creating a new location, you must specify the timezone"
        ({"name": "a"}, "timezone", "Required"),
        ({"name": "a", "timezone": "no spaces allowed"}, "timezone", "IANA"),
        ({"name": "a", "timezone": "Not/A_Zone"}, "timezone", "IANA"),
        ({"name": "a", "timezone": "america/new_york"}, "timezone", "IANA"),
    ],
)
async def test_location_bodies_are_validated_strictly(
    cloud: Cloud, body: dict[str, Any], field: str, rule: str
) -> None:
    status, resp = await cloud.post("/v1/locations", body)
    assert status == 400
    assert_error(resp, "invalid_input")
    assert resp["error"]["validation_errors"]["_errors"] == []
    assert rule in resp["error"]["validation_errors"][field]["_errors"][0]
    assert await cloud.get("/v1/locations") == []


async def test_bodies_that_are_not_json_objects_are_400(cloud: Cloud) -> None:
    auth = {"Authorization": aiohttp.encode_basic_auth(API_KEY)}
    for data, ctype in (
        (b"{nope", "application/json"),
        (b"[1,2]", "application/json"),
        (b'{"name": "x"}', "text/plain"),
        (b'{"name": NaN}', "application/json"),
    ):
        async with cloud.http.post(
            cloud.url("/v1/locations"), data=data, headers={**auth, "Content-Type": ctype}
        ) as resp:
            assert resp.status == 400
            assert_error(await resp.json(), "invalid_input")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decode_as_its_content_encoding_is_400(
    cloud: Cloud, encoding: str
) -> None:
    """A body sent as gzip or deflate that was neither got a 500 `internal_error`."""
    headers = {
        "Authorization": aiohttp.encode_basic_auth(API_KEY),
        "Content-Type": "application/json",
        "Content-Encoding": encoding,
    }
    async with cloud.http.post(
        cloud.url("/v1/locations"), data=b'{"name": "x"}', headers=headers
    ) as resp:
        assert resp.status == 400
        assert_error(await resp.json(), "invalid_input")
    assert await cloud.get("/v1/locations") == []


@pytest.mark.parametrize(
    ("action", "data", "field"),
    [
        ("set_code", {"code": "12a4", "slot_id": 3}, "code"),
        ("set_code", {"code": 1234, "slot_id": 3}, "code"),
        ("set_code", {"code": "123", "slot_id": 3}, "code"),
        ("set_code", {"code": "1234567", "slot_id": 3}, "code"),
        ("set_code", {"code": "\uff11\uff12\uff13\uff14", "slot_id": 3}, "code"),  # fullwidth
        ("set_code", {"code": "1234", "slot_id": 12}, "slot_id"),
        ("set_code", {"code": "1234", "slot_id": "3"}, "slot_id"),
        ("set_code", {"code": "1234", "slot_id": True}, "slot_id"),
        ("set_code", {"code": "1234"}, "slot_id"),  # default slot 1 is outside 2..11
        ("set_code", {"code": "1234", "slot_id": 3, "user": "x"}, "user"),
        ("clear_code", {}, "slot_id"),
        ("clear_code", {"slot_id": 1}, "slot_id"),
        ("lock", {"force": True}, "force"),
    ],
)
async def test_device_action_inputs_follow_the_locks_constraints(
    cloud: Cloud, action: str, data: dict[str, Any], field: str
) -> None:
    tunnel, _, _ = await cloud.claimed_gateway()
    status, body = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/{action}", {"data": data})
    assert status == 400
    assert_error(body, "invalid_input")
    assert field in body["error"]["validation_errors"]
    code = data.get("code")
    if isinstance(code, str):  # (the random request id may hold a short code's digits)
        assert code not in json.dumps({**body, "error": {**body["error"], "request_id": ""}})
    # Nothing went down the tunnel: the next frame is the ack of a new report.
    await tunnel.send(p.DeviceRemovedMsg(seq=2, device_id="other"))
    assert await tunnel.recv() == p.Ack(seq=2)


async def test_set_code_defaults_to_slot_1_where_the_lock_has_it(cloud: Cloud) -> None:
    await cloud.claimed_gateway(
        device=device_body(code_slots={"min": 1, "max": 30}, supported_code_lengths=[4])
    )
    status, body = await cloud.post(
        f"/v1/devices/{DEVICE_ID}/actions/set_code", {"data": {"code": "0000"}}
    )
    assert status == 200, body
    assert body["data"] == {"set_code": {"code": "****", "slot_id": 1}}


async def test_a_lock_whose_slot_count_is_unread_takes_a_slot_beyond_the_guess(
    cloud: Cloud,
) -> None:
    """A gateway that has not read the lock's slot count reports `code_slots.max` null: a slot
    past the old guess of 11 goes to the gateway (the lock refuses one it lacks). Before, the
    cloud fell back to 1..11 and refused it with 422."""
    await cloud.claimed_gateway(device=device_body(code_slots={"min": 1, "max": None}))
    status, body = await cloud.post(
        f"/v1/devices/{DEVICE_ID}/actions/set_code", {"data": {"code": "0000", "slot_id": 20}}
    )
    assert status == 200, body
    assert body["data"] == {"set_code": {"code": "****", "slot_id": 20}}
    # 0xFFFF is a Zigbee lock's "all users", which the gateway refuses: no slot the cloud takes
    status, body = await cloud.post(
        f"/v1/devices/{DEVICE_ID}/actions/set_code", {"data": {"code": "0000", "slot_id": 65535}}
    )
    assert status == 400, body
    assert body["error"]["validation_errors"]["slot_id"]["_errors"] == [
        "Must be between 1 and 65534"
    ]


async def test_a_lock_whose_code_lengths_are_unread_takes_a_code_beyond_the_guess(
    cloud: Cloud,
) -> None:
    """A gateway that has not read the lock's code lengths reports `supported_code_lengths`
    null: a 10-digit code goes to the gateway (the lock refuses a length it does not take).
    Before, the cloud fell back to 4..8 and refused it."""
    await cloud.claimed_gateway(device=device_body(supported_code_lengths=None))
    status, body = await cloud.post(
        f"/v1/devices/{DEVICE_ID}/actions/set_code", {"data": {"code": "0123456789", "slot_id": 5}}
    )
    assert status == 200, body
    assert body["data"] == {"set_code": {"code": "****", "slot_id": 5}}


async def test_device_action_responses_have_the_seed_shape(cloud: Cloud) -> None:
    _, gateway_id, _ = await cloud.claimed_gateway()
    status, body = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/lock")
    assert status == 200
    assert set(body) == {
        "id",
        "device_id",
        "location_id",
        "data",
        "status",
        "created_at",
        "updated_at",
    }
    assert body["device_id"] == DEVICE_ID
    assert body["data"] == {"lock": {}}
    assert body["created_at"].endswith("Z")
    status, other = await cloud.post(f"/v1/devices/{DEVICE_ID}/actions/launch")
    assert status == 400
    assert_error(other, "action_not_supported")
    # the same for a gateway action this cloud does not have (a generic `not_found` before)
    status, other = await cloud.post(f"/v1/gateways/{gateway_id}/actions/reboot")
    assert status == 400
    assert_error(other, "action_not_supported")
    status, other = await cloud.post("/v1/gateways/no-such-gateway/actions/reboot")
    assert status == 404
    assert_error(other, "gateway_not_found")
    status, other = await cloud.post(
        f"/v1/gateways/{gateway_id}/actions/pair_devices", {"data": {"duration": 0}}
    )
    assert status == 400
    assert "duration" in other["error"]["validation_errors"]
    status, other = await cloud.post(
        f"/v1/gateways/{gateway_id}/actions/unpair_devices",
        {"data": {"duration": 30, "device_id": "unknown"}},
    )
    assert status == 404
    assert_error(other, "device_not_found")


async def test_a_gateway_can_be_renamed(cloud: Cloud) -> None:
    _, gateway_id, _ = await cloud.claimed_gateway()
    status, body = await cloud.request(
        "PUT", f"/v1/gateways/{gateway_id}", json={"name": "538 Folsom - Unit 20"}
    )
    assert status == 200
    assert body["name"] == "538 Folsom - Unit 20"
    assert (await cloud.get("/v1/gateways"))[0]["name"] == "538 Folsom - Unit 20"
    status, body = await cloud.request("PUT", f"/v1/gateways/{gateway_id}", json={"name": None})
    assert status == 400
    assert_error(body, "invalid_input")


async def test_events_are_filtered_by_device_and_time(cloud: Cloud) -> None:
    tunnel, _, _ = await cloud.claimed_gateway()

    def event(n: int, device_id: str, when: str) -> dict[str, Any]:
        return {
            "id": f"e{n}",
            "type": "device_event",
            "device_id": device_id,
            "event_name": "door locked",
            "details": {"method": "manual"},
            "date_created": when,
        }

    sent = [
        event(1, DEVICE_ID, "2020-06-11T21:08:36.000Z"),
        event(2, "other-lock", "2020-06-11T21:10:00.000Z"),
        event(3, DEVICE_ID, "2020-06-11T21:12:20.000Z"),
    ]
    for seq, e in enumerate(sent, start=2):
        await tunnel.send(p.EventMsg(seq=seq, event=e))
        assert await tunnel.recv() == p.Ack(seq=seq)
    assert await cloud.get("/v1/events") == sent
    assert await cloud.get("/v1/events", params={"device_id": DEVICE_ID}) == [sent[0], sent[2]]
    assert await cloud.get("/v1/events", params={"since": "2020-06-11T21:09:00Z"}) == sent[1:]
    assert await cloud.get(
        "/v1/events", params={"since": "2020-06-11T21:09:00Z", "until": "2020-06-11T21:11:00Z"}
    ) == [sent[1]]
    # a limit keeps the latest (what just happened at the door), or the first ones from `since`
    assert await cloud.get("/v1/events", params={"limit": "2"}) == sent[1:]
    assert (
        await cloud.get("/v1/events", params={"limit": "2", "until": "2020-06-11T21:11:00Z"})
        == sent[:2]
    )
    assert await cloud.get(
        "/v1/events", params={"limit": "1", "since": "2020-06-11T21:09:00Z"}
    ) == [sent[1]]
    status, body = await cloud.request("GET", "/v1/events", params={"since": "yesterday"})
    assert status == 400
    assert "since" in body["error"]["validation_errors"]


async def test_events_before_the_year_1000_sort_and_filter_by_time(cloud: Cloud) -> None:
    """Stored times compare as text: a year below 1000 must be written with four digits, or
    `999-…` sorts after `2020-…`."""
    tunnel, _, _ = await cloud.claimed_gateway()
    old = {
        "id": "e-old",
        "type": "device_event",
        "device_id": DEVICE_ID,
        "event_name": "door locked",
        "details": {"method": "manual"},
        "date_created": "0999-06-11T21:08:36.000Z",
    }
    recent = {**old, "id": "e-recent", "date_created": "2020-06-11T21:08:36.000Z"}
    for seq, e in enumerate((recent, old), start=2):
        await tunnel.send(p.EventMsg(seq=seq, event=e))
        assert await tunnel.recv() == p.Ack(seq=seq)
    assert await cloud.get("/v1/events") == [old, recent]
    assert await cloud.get("/v1/events", params={"since": "0998-01-01T00:00:00Z"}) == [
        old,
        recent,
    ]
    assert await cloud.get("/v1/events", params={"until": "1000-01-01T00:00:00Z"}) == [old]


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "1.5", "\u0661", "9" * 5000])
async def test_an_event_limit_out_of_range_is_400_not_500(cloud: Cloud, limit: str) -> None:
    status, body = await cloud.request("GET", "/v1/events", params={"limit": limit})
    assert status == 400, body
    assert_error(body, "invalid_input")
    assert "limit" in body["error"]["validation_errors"]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    path=st.sampled_from(
        [
            "/v1/locations",
            f"/v1/devices/{DEVICE_ID}/actions/set_code",
            f"/v1/devices/{DEVICE_ID}/actions/clear_code",
            f"/v1/devices/{DEVICE_ID}/actions/unlock",
            "/v1/locations/x/register_gateway",
        ]
    ),
    body=st.one_of(_json_values, st.fixed_dictionaries({"data": _json_values})),
)
async def test_arbitrary_bodies_never_cause_a_server_error(
    cloud: Cloud, path: str, body: Any
) -> None:
    if not cloud.state.db.devices():
        await cloud.claimed_gateway()
    headers = {
        "Authorization": aiohttp.encode_basic_auth(API_KEY),
        "Content-Type": "application/json",
    }
    data = json.dumps(body, allow_nan=True)
    async with cloud.http.post(cloud.url(path), data=data, headers=headers) as resp:
        assert resp.status < 500
        payload = await resp.json()
    if resp.status >= 400:
        assert payload["ok"] is False


async def test_a_wrong_method_is_405_in_the_seed_shape(cloud: Cloud) -> None:
    status, body = await cloud.request("DELETE", "/v1/locations")
    assert status == 405
    assert_error(body, "method_not_allowed")


async def test_responses_match_the_openapi_schemas(cloud: Cloud) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    spec = await cloud.get("/v1/openapi.json")

    def check(name: str, value: Any) -> None:
        schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(value)

    tunnel, gateway_id, _ = await cloud.claimed_gateway()
    check("Location", (await cloud.get("/v1/locations"))[0])
    check("Gateway", await cloud.get(f"/v1/gateways/{gateway_id}"))
    check("Device", await cloud.get(f"/v1/devices/{DEVICE_ID}"))
    _, action = await cloud.post(
        f"/v1/devices/{DEVICE_ID}/actions/set_code", {"data": {"code": "1234", "slot_id": 2}}
    )
    check("ActionRequest", action)
    _, action = await cloud.post(
        f"/v1/gateways/{gateway_id}/actions/pair_devices", {"data": {"duration": 30}}
    )
    check("ActionRequest", action)
    for _ in range(2):
        assert isinstance(await tunnel.recv(), p.ActionRequestMsg)
    await tunnel.send(
        p.EventMsg(
            seq=2,
            event={
                "id": "e1",
                "device_id": DEVICE_ID,
                "event_name": "door locked",
                "details": {"method": "keypad"},
                "date_created": "2020-06-11T21:12:20.000Z",
            },
        )
    )
    assert await tunnel.recv() == p.Ack(seq=2)
    check("Event", (await cloud.get("/v1/events"))[0])
    _, error = await cloud.post("/v1/locations", {"name": 1})
    check("Error", error)
    with pytest.raises(jsonschema.ValidationError):
        check("Gateway", {"id": gateway_id, "name": "x"})


async def test_paging_forward_reaches_every_event_when_more_than_a_page_share_a_time(
    cloud: Cloud,
) -> None:
    """Paging with `since` = the last `date_created` seen returned the same page for ever when
    more than `limit` events had one time (a lock's burst in one millisecond): the rest were
    never listed. `after` = the last event's id pages on past them."""
    tunnel, _, _ = await cloud.claimed_gateway()
    same = "2020-06-11T21:08:36.000Z"
    sent = [
        {
            "id": f"e{n}",
            "type": "device_event",
            "device_id": DEVICE_ID,
            "event_name": "door locked",
            "details": {"method": "manual"},
            "date_created": at,
        }
        for n, at in enumerate([same, same, same, "2020-06-11T21:09:00Z"], start=1)
    ]
    for seq, e in enumerate(sent, start=2):
        await tunnel.send(p.EventMsg(seq=seq, event=e))
        assert await tunnel.recv() == p.Ack(seq=seq)
    sent[3]["date_created"] = "2020-06-11T21:09:00.000Z"
    seen: list[dict[str, Any]] = []
    params = {"since": "2020-01-01T00:00:00Z", "limit": "2"}
    for _ in range(5):
        page = await cloud.get("/v1/events", params=params)
        if not page:
            break
        seen += page
        params = {"after": page[-1]["id"], "limit": "2"}
    assert seen == sent
    # with the other filters, and refused when it names no event
    assert await cloud.get("/v1/events", params={"after": "e1", "until": same}) == sent[1:3]
    status, body = await cloud.request("GET", "/v1/events", params={"after": "nope"})
    assert status == 400
    assert_error(body, "invalid_input")
    assert "after" in body["error"]["validation_errors"]
