"""The web console in a real browser (Debian's Chromium driven by Playwright) against a real orchestrator."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import RunningOrchestrator, free_port
from tests.support.sink import HttpSink, ok_json
from tests.support.waiting import wait_for

SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from Debian. Missing is a failure: scripts/test installs it."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is not installed; ./scripts/test installs the Debian package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    yield opened
    context.close()


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def tab(page: Page, name: str) -> Locator:
    return page.get_by_role("navigation", name="Application").get_by_role("link", name=name)


def sign_in(page: Page, orch: RunningOrchestrator) -> None:
    page.goto(orch.url + "/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("API token").fill("wrong-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    page.get_by_label("API token").fill(orch.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Applications")).to_be_visible()


def test_user_adds_tests_watches_and_removes_a_webhook(
    page: Page, orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    sink.responder = ok_json({"ok": True})
    sign_in(page, orchestrator)
    page.get_by_label("Id").fill("greenhouse")
    page.get_by_label("Name").fill("Greenhouse")
    page.get_by_role("button", name="Create application").click()
    expect(page.get_by_role("heading", name="Greenhouse")).to_be_visible()

    # A device, through the devices tab.
    tab(page, "Devices").click()
    page.get_by_label("Device id").fill("sensor-1")
    page.get_by_label("Attributes (JSON)").fill('{"bed": "north"}')
    page.get_by_role("button", name="Save device").click()
    expect(page.locator("[data-device=sensor-1]")).to_contain_text("bed=north")
    shot(page, "console-devices")

    # The gallery and the generated form; invalid input shows errors next to each field.
    tab(page, "Integrations").click()
    page.get_by_role("link", name="Add integration").click()
    expect(page.locator("[data-template=influxdb-v2]")).to_be_visible()
    shot(page, "console-gallery")
    page.get_by_role("link", name="Use HTTP webhook").click()
    expect(page.get_by_label("Method")).to_have_value("POST")  # defaults filled
    expect(page.locator("#field-auth_token")).to_have_attribute("type", "password")  # secret masked
    page.locator("summary", has_text="Advanced settings").click()
    page.locator("#field-timeout_seconds").fill("-3")
    page.get_by_role("button", name="Create integration").click()
    expect(page.locator("#field-url-error")).to_contain_text("URL is required")
    expect(page.locator("#field-url")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#field-timeout_seconds-error")).to_contain_text("at least 0.1")
    shot(page, "console-form-errors")

    page.locator("#field-timeout_seconds").fill("10")
    page.get_by_label("Id").fill("to-sink")
    page.locator("#field-url").fill(sink.url + "/in/{{device_id}}?bed={{device.attributes.bed}}")
    page.locator("#field-auth_token").fill("tok-very-secret-42")
    page.get_by_role("button", name="Create integration").click()

    # The detail page: live state, TEST, counters, activity, logs.
    expect(page.locator("[data-state=running]").first).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Test").click()
    expect(page.locator("[data-test-outcome=delivered]")).to_contain_text("HTTP 200", timeout=30_000)
    received = wait_for(sink.accepted, what="the test request")[0]
    assert received.path == "/in/sensor-1" and received.query == {"bed": ["north"]}
    assert received.headers["authorization"] == "Bearer tok-very-secret-42"
    expect(page.locator("[data-counter=delivered]")).to_have_text("1", timeout=15_000)
    expect(page.locator("[data-kind=delivery]").first).to_be_visible(timeout=15_000)
    expect(page.get_by_role("log")).to_contain_text("integration to-sink running")
    shot(page, "console-integration")
    assert "tok-very-secret-42" not in page.content()
    expect(page.locator("dd", has_text="(secret, set)")).to_be_visible()

    # Editing never shows the secret; leaving it empty keeps it.
    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#field-auth_token")).to_have_value("")
    assert "tok-very-secret-42" not in page.content()
    page.get_by_role("button", name="Save changes").click()
    expect(page.locator("[data-state=running]").first).to_be_visible(timeout=30_000)
    assert orchestrator.integration("greenhouse", "to-sink")["secrets_set"] == ["auth_token"]

    # Live events of the application; older ones page in from the log.
    page.get_by_role("link", name="← greenhouse").click()
    tab(page, "Events").click()
    expect(page.locator("[data-event='integration.delivery']").first).to_be_visible()
    shot(page, "console-events")
    for n in range(120):  # more than a stream replays when it opens (100)
        orchestrator.uplink("greenhouse", "sensor-1", {"f_port": 1, "decoded_payload": {"n": n}})
    page.get_by_role("button", name="Apply").click()  # opens the stream again
    expect(page.locator("[data-event=uplink]").first).to_be_visible()
    expect(page.locator("[data-event='device.create']")).to_have_count(0)
    for _ in range(10):
        if page.locator("[data-event='device.create']").count():
            break
        page.get_by_role("button", name="Older events").click()
        page.wait_for_timeout(300)
    expect(page.locator("[data-event='device.create']").first).to_be_visible()
    expect(page.locator("[data-event=uplink]")).to_have_count(120)

    # Disable, then delete with confirmation.
    tab(page, "Integrations").click()
    expect(page.locator("[data-integration=to-sink]")).to_contain_text("running")
    shot(page, "console-integrations")
    page.get_by_label("Show").select_option("failed")
    expect(page.get_by_text("No failed integrations.")).to_be_visible()
    page.get_by_label("Show").select_option("running")
    expect(page.locator("[data-integration=to-sink]")).to_be_visible()
    page.get_by_role("link", name="HTTP webhook").click()
    page.get_by_role("button", name="Disable").click()
    expect(page.locator("[data-state=stopped]").first).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("No integrations yet")).to_be_visible()
    orchestrator.call("GET", "/api/v1/applications/greenhouse/integrations/to-sink", 404)


def test_console_fits_a_phone(browser: Browser, orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application("pocket")
    orchestrator.create_device("pocket", "tracker-1")
    orchestrator.create_integration(
        "pocket", id="to-nowhere", template_id="webhook", config={"url": "http://127.0.0.1:9/none"}
    )
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    phone = context.new_page()
    sign_in(phone, orchestrator)
    phone.goto(orchestrator.url + "/#/apps/pocket")
    expect(phone.locator("[data-integration=to-nowhere]")).to_be_visible()
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    shot(phone, "console-phone")
    context.close()


def test_console_pages_through_many_integrations_and_devices(
    browser: Browser, orchestrator: RunningOrchestrator
) -> None:
    orchestrator.create_application("fleet")
    for number in range(52):
        orchestrator.create_integration(
            "fleet", id=f"hook-{number:02}", template_id="webhook", enabled=False, config={"url": "http://127.0.0.1:9/"}
        )
    page = browser.new_page()
    sign_in(page, orchestrator)
    page.goto(orchestrator.url + "/#/apps/fleet")
    expect(page.get_by_text("1\u201350 of 52")).to_be_visible()
    expect(page.locator("[data-integration]")).to_have_count(50)
    expect(page.get_by_role("button", name="Previous")).to_be_disabled()
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_text("51\u201352 of 52")).to_be_visible()
    expect(page.locator("[data-integration]")).to_have_count(2)
    expect(page.locator("[data-integration=hook-51]")).to_be_visible()
    expect(page.get_by_role("button", name="Next")).to_be_disabled()

    for number in range(51):
        orchestrator.create_device("fleet", f"sensor-{number:02}")
    page.goto(orchestrator.url + "/#/apps/fleet/devices")
    expect(page.get_by_role("heading", name="Devices (51)")).to_be_visible()
    expect(page.locator("[data-device]")).to_have_count(50)
    page.get_by_role("button", name="Next").click()
    expect(page.get_by_text("51\u201351 of 51")).to_be_visible()
    expect(page.locator("[data-device=sensor-50]")).to_be_visible()
    page.get_by_role("button", name="Previous").click()
    expect(page.locator("[data-device=sensor-00]")).to_be_visible()
    page.close()


def test_a_user_sees_a_dead_letter_and_sends_it_again(
    page: Page, orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    refusing = [True]
    sink.responder = lambda request: (400, {}, b"no such channel") if refusing[0] else (204, {}, b"")
    orchestrator.create_application("plant")
    orchestrator.create_device("plant", "pump-1")
    orchestrator.create_integration("plant", id="hook", template_id="webhook", config={"url": sink.url})
    orchestrator.wait_state("plant", "hook", "running")
    orchestrator.uplink("plant", "pump-1", {"f_port": 1, "decoded_payload": {"rpm": 1200}})
    sign_in(page, orchestrator)
    page.goto(orchestrator.url + "/#/apps/plant/integrations/hook")
    letter = page.locator(".dead-letter").first
    expect(letter).to_contain_text("HTTP 400", timeout=20_000)
    expect(page.locator("[data-counter=dead_lettered]")).to_have_text("1", timeout=15_000)
    letter.locator("summary").click()
    expect(letter).to_contain_text('"rpm": 1200')  # the whole message
    refusing[0] = False
    letter.get_by_role("button", name="Replay").click()
    expect(page.get_by_text("None: nothing failed for good.")).to_be_visible(timeout=15_000)
    received = wait_for(sink.accepted, what="the replayed uplink")[0]
    assert received.json()["uplink_message"]["decoded_payload"] == {"rpm": 1200}


def test_the_gallery_stays_easy_to_use_with_many_templates(
    browser: Browser, tmp_path: Path, mosquitto: str, sink: HttpSink
) -> None:
    # Forty of The Things Stack's templates beside ours; logos from a URL (served here), gone, or none.
    folder = tmp_path / "lorawan-webhook-templates"
    folder.mkdir()
    for number in range(40):
        template: dict[str, object] = {
            "template-id": f"platform-{number}",
            "name": f"Platform {number}",
            "description": f"Dashboards number {number}",
            "base-url": sink.url,
            "paths": {"uplink-message": "/"},
        }
        if number == 7:
            template |= {"logo-url": sink.url + "/logo.svg", "documentation-url": sink.url + "/docs"}
        if number == 17:
            template["logo-url"] = "http://127.0.0.1:9/gone.png"
        (folder / f"platform-{number}.yml").write_text(yaml.safe_dump(template))
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48"><rect width="48" height="48"/></svg>'
    sink.responder = lambda request: (200, {"Content-Type": "image/svg+xml"}, svg)
    orch = RunningOrchestrator(
        tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_TTS_TEMPLATES_DIR=str(folder)
    ).start()
    try:
        total = len(orch.call("GET", "/api/v1/templates", 200).json())
        assert total >= 46
        orch.create_application("many")
        page = browser.new_page()
        sign_in(page, orch)
        page.goto(orch.url + "/#/apps/many/gallery")
        expect(page.get_by_text(f"{total} of {total} templates")).to_be_visible()
        page.get_by_label("Search").fill("platform 7")  # every word must match: 7, 17, 27, 37
        expect(page.get_by_text(f"4 of {total} templates")).to_be_visible()
        expect(page.locator("[data-template]:visible")).to_have_count(4)
        loaded = page.locator("[data-template=platform-7] img.logo")
        expect(loaded).to_be_visible()
        page.wait_for_function("document.querySelector('[data-template=platform-7] img').naturalWidth > 0")
        expect(page.locator("[data-template=platform-7]").get_by_role("link", name="Documentation")).to_be_visible()
        gone = page.locator("[data-template=platform-17]")
        expect(gone.locator(".initial")).to_have_text("P")  # the broken logo fell back to the initial
        expect(gone.locator("img")).to_have_count(0)
        shot(page, "console-gallery-search")
        page.get_by_label("Search").fill("no such platform anywhere")
        expect(page.get_by_text("No template matches")).to_be_visible()
        page.get_by_label("Search").fill("")
        page.get_by_label("Category").select_option("the-things-stack")
        expect(page.get_by_text(f"40 of {total} templates")).to_be_visible()
        page.get_by_label("Search").fill("platform 27")
        page.get_by_role("link", name="Use Platform 27").click()
        expect(page.get_by_role("heading", name="Platform 27")).to_be_visible()
        page.close()
    finally:
        orch.stop()


def test_a_browsers_event_source_reads_the_stream_with_a_stream_token(
    browser: Browser, orchestrator: RunningOrchestrator
) -> None:
    orchestrator.create_application("live")
    orchestrator.create_application("other")
    orchestrator.create_device("live", "meter-1")
    reader = orchestrator.create_key("live", "messages:read")
    reader_id = ".".join(reader.split(".")[:2])
    made = httpx.post(
        f"{orchestrator.url}/api/v1/applications/live/events/tokens?ttl_seconds=300",
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert made.status_code == 201
    stream_url = made.json()["url"]
    assert reader not in stream_url and made.json()["token"].startswith("st.")

    # A plain web page on another origin would do the same; EventSource cannot send an Authorization header.
    page = browser.new_page()
    page.goto(orchestrator.url + "/")
    page.evaluate(
        """url => { window.got = []; const source = new EventSource(url);
                   source.addEventListener("uplink", event => window.got.push(JSON.parse(event.data))); }""",
        stream_url + "&prefix=uplink",
    )
    page.wait_for_timeout(500)  # the stream is open before the uplink is sent
    orchestrator.uplink("live", "meter-1", {"f_port": 1, "decoded_payload": {"kwh": 12}})
    page.wait_for_function("window.got.length > 0")
    assert page.evaluate("window.got[0].uplink_message.decoded_payload") == {"kwh": 12}
    page.close()

    token = made.json()["token"]
    elsewhere = httpx.get(f"{orchestrator.url}/api/v1/applications/other/events?stream_token={token}")
    assert elsewhere.status_code == 403  # it opens its own application's stream only
    devices = httpx.get(f"{orchestrator.url}/api/v1/applications/live/devices?stream_token={token}")
    assert devices.status_code == 401  # and nothing else
    assert httpx.get(f"{orchestrator.url}/api/v1/applications/live/events?stream_token=st.forged").status_code == 401
    orchestrator.call("DELETE", f"/api/v1/applications/live/keys/{reader_id}", 204)
    revoked = httpx.get(f"{orchestrator.url}/api/v1/applications/live/events?stream_token={token}")
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]


def hang_up(end: socket.socket) -> None:
    """Close a socket so its peer sees it at once, also while another thread is blocked reading it."""
    with contextlib.suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)  # close() alone would leave a blocked recv() holding the connection open
    end.close()


class LineBetween:
    """A TCP relay on 127.0.0.1 between the browser and the orchestrator that keeps the head of each request
    it carries, and can go down (every connection closed both ways, new ones refused) and come back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.requests: list[tuple[float, str]] = []  # (when, request head), in arrival order
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> LineBetween:
        """Listen on the same port again; new connections go through."""
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def down(self) -> None:
        """As if the network went: every connection closes at both ends, new ones are refused."""
        if self._listener is not None:
            hang_up(self._listener)  # shutdown wakes the thread in accept()
            self._listener = None
        with self._lock:
            for end in self._sockets:
                hang_up(end)
            self._sockets.clear()

    def heads(self, path_part: str) -> list[tuple[float, str]]:
        """The requests whose request line contains `path_part`."""
        return [(when, head) for when, head in self.requests if path_part in head.split("\r\n", 1)[0]]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                browser, _ = listener.accept()
            except OSError:
                return  # the line is down
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                hang_up(browser)
                continue
            with self._lock:
                self._sockets.update((browser, server))
            threading.Thread(target=self._pump, args=(browser, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, browser, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_browser: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_browser and data.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"):
                    self.requests.append((time.monotonic(), data.decode("latin-1").split("\r\n\r\n", 1)[0]))
                sink.sendall(data)
        hang_up(source)
        hang_up(sink)


def request_headers(head: str) -> dict[str, str]:
    """The headers of a request head, by lower-case name."""
    lines = head.split("\r\n")[1:]
    return {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}


def test_a_browsers_event_source_resumes_after_a_disconnect_without_missing_an_uplink(
    browser: Browser, orchestrator: RunningOrchestrator
) -> None:
    """A page following the event stream loses its connection for a moment and still shows every uplink, once."""
    orchestrator.create_application("field")
    orchestrator.create_device("field", "meter-1")
    reader = orchestrator.create_key("field", "messages:read")
    made = httpx.post(
        f"{orchestrator.url}/api/v1/applications/field/events/tokens?ttl_seconds=300",
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert made.status_code == 201
    line = LineBetween(orchestrator.port).up()
    page = browser.new_page()
    try:
        page.goto(line.url + "/")  # the page and its stream both come through the line: one origin
        page.evaluate(
            """url => { window.got = []; window.opened = 0; const source = new EventSource(url);
                       source.onopen = () => { window.opened += 1; };
                       source.addEventListener("uplink", event => window.got.push(
                           {id: event.lastEventId, n: JSON.parse(event.data).uplink_message.decoded_payload.n})); }""",
            made.json()["url"] + "&prefix=uplink",
        )
        page.wait_for_function("window.opened === 1")
        orchestrator.uplink("field", "meter-1", {"f_port": 1, "decoded_payload": {"n": 1}})
        page.wait_for_function("window.got.length === 1")
        first_id = page.evaluate("window.got[0].id")

        line.down()
        went_down = time.monotonic()
        orchestrator.uplink("field", "meter-1", {"f_port": 1, "decoded_payload": {"n": 2}})  # while it is down
        orchestrator.uplink("field", "meter-1", {"f_port": 1, "decoded_payload": {"n": 3}})
        line.up()

        page.wait_for_function("window.opened === 2 && window.got.length >= 3", timeout=15_000)
        page.wait_for_timeout(500)  # room for a duplicate to show up
        got = page.evaluate("window.got")
        assert [item["n"] for item in got] == [1, 2, 3]
        assert [int(item["id"]) for item in got] == sorted({int(item["id"]) for item in got})  # distinct, rising

        (_, first_head), *again = line.heads("/events?stream_token=")
        assert "last-event-id" not in request_headers(first_head)
        assert again and all(request_headers(head).get("last-event-id") == first_id for _, head in again)
        # The server sends no `retry:` line, so the browser waits its own default (3 s in Chromium).
        assert again[0][0] - went_down < 10
    finally:
        page.close()
        line.down()
