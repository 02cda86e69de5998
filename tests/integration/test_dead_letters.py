"""Dead letters end to end: a message that fails for good is kept in full, listed, sent again (to that
integration only) and deleted; retrying gives up into one; the bound per integration holds and says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink, Received
from tests.support.waiting import wait_for

APP = "dlq-app"


@pytest.fixture
def limited(tmp_path: Path, mosquitto: str) -> Iterator[RunningOrchestrator]:
    orch = RunningOrchestrator(
        tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_DEAD_LETTERS_PER_INTEGRATION="3"
    ).start()
    orch.create_application(APP)
    orch.create_device(APP, "dev-1")
    yield orch
    orch.stop()


def letters(orch: RunningOrchestrator, integration: str = "hook") -> list[dict]:
    page = orch.call("GET", f"/api/v1/applications/{APP}/integrations/{integration}/dead-letters", 200).json()
    return list(page["items"])


def test_a_refused_message_is_kept_whole_and_replay_delivers_it_to_that_integration_only(
    limited: RunningOrchestrator, sink: HttpSink
) -> None:
    orch = limited
    refusing = True

    def target(request: Received) -> tuple[int, dict[str, str], bytes]:
        return (422, {}, b"field temperature missing") if refusing else (204, {}, b"")

    sink.responder = target
    other = HttpSink()  # a second integration on the same uplinks must not get the replays
    try:
        orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
        orch.create_integration(APP, id="other", template_id="webhook", config={"url": other.url})
        orch.wait_state(APP, "hook", "running")
        orch.wait_state(APP, "other", "running")
        for n in range(3):
            orch.uplink(APP, "dev-1", {"f_port": 1, "f_cnt": n, "decoded_payload": {"n": n}})
        kept = wait_for(lambda: (found := letters(orch)) and len(found) == 3 and found, what="3 dead letters")
        by_count = {letter["message"]["uplink_message"]["f_cnt"]: letter for letter in kept}
        first = by_count[0]  # the whole message, as the worker got it
        assert first["event"] == "uplink" and first["device_id"] == "dev-1" and first["attempts"] == 1
        assert "HTTP 422" in first["error"] and first["details"]["response"]["status"] == 422
        assert orch.integration(APP, "hook")["counters"]["dead_lettered"] == 3
        wait_for(lambda: len(other.accepted()) == 3, what="the other integration's deliveries")

        # The target is fixed: one by id, then the rest; each leaves the list and arrives once more.
        refusing = False
        base = f"/api/v1/applications/{APP}/integrations/hook/dead-letters"
        assert orch.call("POST", f"{base}/replay", 200, json={"ids": [first["id"]]}).json() == {"count": 1}
        wait_for(lambda: [r.json()["uplink_message"]["f_cnt"] for r in sink.accepted()] == [0], what="replay of 0")
        orch.call("DELETE", f"{base}/{by_count[1]['id']}", 204)
        assert orch.call("POST", f"{base}/replay", 200, json={"all": True}).json() == {"count": 1}
        wait_for(lambda: len(sink.accepted()) == 2, what="the last replay")
        assert sorted(r.json()["uplink_message"]["f_cnt"] for r in sink.accepted()) == [0, 2]
        assert letters(orch) == []
        assert len(other.accepted()) == 3  # replays went to this integration's workers only
        # Bad selections are named.
        orch.call("POST", f"{base}/replay", 404, json={"ids": [999_999]})
        problem = orch.call("POST", f"{base}/delete", 422, json={"ids": [1], "all": True}).json()
        assert "either ids or all" in problem["detail"]
    finally:
        other.close()


def test_giving_up_after_the_retry_window_parks_the_message_and_the_bound_holds(
    limited: RunningOrchestrator, sink: HttpSink
) -> None:
    orch = limited
    sink.responder = lambda request: (503, {}, b"down for maintenance")
    config = {"url": sink.url, "retry_max_duration_seconds": 1}
    orch.create_integration(APP, id="hook", template_id="webhook", config=config)
    orch.wait_state(APP, "hook", "running")
    for n in range(4):
        orch.uplink(APP, "dev-1", {"f_port": 1, "f_cnt": n})
    kept = wait_for(
        lambda: (
            (found := letters(orch))
            and len(found) == 3
            and orch.integration(APP, "hook")["counters"]["dead_lettered"] == 4
            and found
        ),
        timeout=60,
        what="the bound of 3 dead letters after 4 failures",
    )
    assert len({letter["message"]["uplink_message"]["f_cnt"] for letter in kept}) == 3  # the oldest one went
    assert all(letter["attempts"] > 1 and "gave up after retrying" in letter["error"] for letter in kept)
    history = orch.call("GET", f"/api/v1/applications/{APP}/events/history?type=integration.dead_letters", 200)
    full = [item for item in history.json()["items"] if item["name"] == "integration.dead_letters.full"]
    assert full and "ORCH_DEAD_LETTERS_PER_INTEGRATION" in full[0]["data"]["message"]
    base = f"/api/v1/applications/{APP}/integrations/hook/dead-letters"
    assert orch.call("POST", f"{base}/delete", 200, json={"all": True}).json() == {"count": 3}
    assert letters(orch) == []
