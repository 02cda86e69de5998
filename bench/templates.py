"""Template rendering: the webhook's Handlebars subset against pystache (the Mustache library it replaced) on the
same templates and variables, checking that both print the same text; and a Handlebars-only template."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import save
from webhook_worker.render import Template, build_context, html_template, js_text
from worker_sdk import Device, Event

ROUNDS = 5
SECONDS_PER_ROUND = 0.5
PRESETS = Path(__file__).resolve().parent.parent / "integration_templates"

UPLINK: dict[str, Any] = {
    "end_device_ids": {"device_id": "dev-1", "application_ids": {"application_id": "app-1"}},
    "correlation_ids": ["up:1"],
    "received_at": "2026-12-06T10:00:00.123456Z",
    "uplink_message": {
        "f_port": 2,
        "f_cnt": 7,
        "frm_payload": base64.b64encode(b"\x01\x02").decode(),
        "decoded_payload": {"temperature": 21.5, "humidity": 40, "battery": 3.61, "door": "open", "co2": 415},
    },
}
THINGSPEAK_LIKE = (
    '{"created_at": "{{received_at}}", "field1": "{{decoded_payload.temperature}}", '
    '"field2": "{{decoded_payload.humidity}}", "field3": "{{decoded_payload.battery}}", '
    '"status": "{{decoded_payload.door}}", "device": "{{device.name}}", "site": "{{device.attributes.site}}"}'
)
HANDLEBARS_ONLY = (
    "{{#each decoded_payload}}{{@key}}={{#if this}}{{this}}{{else}}0{{/if}}{{#unless @last}},{{/unless}}{{/each}}"
    " {{#with device}}{{name}}@{{attributes.site}}{{/with}}"
)


def _influx_body() -> str:
    preset = yaml.safe_load((PRESETS / "influxdb-v2.yaml").read_text())
    return str(preset["environment"]["WEBHOOK_BODY"])


def _rate(render: Callable[[], str]) -> float:
    """Best of a few rounds, in renders per second (the best round is the least disturbed by the machine)."""
    best = 0.0
    for _ in range(ROUNDS):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < SECONDS_PER_ROUND:
            for _ in range(100):
                render()
            count += 100
        best = max(best, count / elapsed)
    return best


def _pystache(source: str, escape: Callable[[str], str]) -> Callable[[dict[str, Any]], str]:
    import pystache  # the baseline only: not a dependency of the image any more

    class JsRenderer(pystache.Renderer):  # type: ignore[misc]
        def str_coerce(self, val: Any) -> str:
            return js_text(val)

    renderer = JsRenderer(escape=escape, missing_tags="ignore")
    parsed = pystache.parse(source)
    return lambda context: str(renderer.render(parsed, context))


def run() -> dict[str, Any]:
    """Render each template for one uplink's variables, with ours and with pystache."""
    event = Event(
        "uplink", "v3/app-1/devices/dev-1/up", "app-1", "dev-1", UPLINK, Device("dev-1", "Boiler", {"site": "north"})
    )
    context = build_context(event, "hook")
    results: dict[str, Any] = {}
    for name, source, ours in [
        ("influxdb line protocol (raw, HTML-escaped)", _influx_body(), html_template(_influx_body(), "B")),
        ("thingspeak-like JSON text", THINGSPEAK_LIKE, Template(THINGSPEAK_LIKE, "B")),
    ]:
        escape = ours._escape  # the same escaping for both
        baseline = _pystache(source, escape)
        same = ours.render(context) == baseline(context)
        rate, base_rate = _rate(lambda t=ours: t.render(context)), _rate(lambda b=baseline: b(context))
        results[name] = {
            "ours_per_s": round(rate),
            "pystache_per_s": round(base_rate),
            "ratio": round(rate / base_rate, 2),
            "same_text": same,
        }
        print(f"{name}: ours {rate:,.0f}/s, pystache {base_rate:,.0f}/s ({rate / base_rate:.2f}x), same text: {same}")
    handlebars = Template(HANDLEBARS_ONLY, "B")
    rate = _rate(lambda: handlebars.render(context))
    context_rate = _rate(lambda: str(build_context(event, "hook")))
    results["handlebars each/if/with"] = {"ours_per_s": round(rate), "output": handlebars.render(context)}
    results["building the variables (per event, for reference)"] = {"per_s": round(context_rate)}
    print(f"handlebars each/if/with: {rate:,.0f}/s; building the variables: {context_rate:,.0f}/s")
    print(f"saved {save('templates', {'results': results})}")
    return results
