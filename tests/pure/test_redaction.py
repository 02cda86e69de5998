"""Secrets are masked in every form they may be written in: plain, percent-encoded, JSON-escaped, base64."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

from worker_sdk.redact import MASK, Redactor

PASSWORD = 'pa$$ "word"/+&'
USER = "alice"


def test_each_written_form_of_a_secret_is_masked() -> None:
    redactor = Redactor([PASSWORD])
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    forms = {
        "plain": f"pw={PASSWORD}",
        "percent": f"https://x.test/?pw={quote(PASSWORD, safe='')}",
        "form": f"pw={quote_plus(PASSWORD)}&a=1",
        "json": json.dumps({"echo": PASSWORD}),
        "basic": f"Authorization: Basic {basic}",
        "urlsafe base64 without padding": base64.urlsafe_b64encode(PASSWORD.encode()).decode().rstrip("="),
        "base64 with something around it": base64.b64encode(f"prefix-{PASSWORD}-suffix".encode()).decode(),
    }
    for name, text in forms.items():
        masked = redactor.text(text)
        assert PASSWORD not in masked and MASK in masked, (name, masked)
        assert basic not in masked, name
        for encoded in (quote(PASSWORD, safe=""), quote_plus(PASSWORD), json.dumps(PASSWORD)[1:-1]):
            assert encoded not in masked, (name, masked)


def test_ordinary_text_and_unrelated_base64_stay() -> None:
    redactor = Redactor([PASSWORD])
    other = base64.b64encode(b"alice:another-one").decode()
    text = f"POST https://api.example.test/v1/devices/sensor-12345 -> 201 Created; token {other}"
    assert redactor.text(text) == text
    data = {"headers": {"Authorization": f"Basic {base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}"}}
    assert redactor.data(data) == {"headers": {"Authorization": f"Basic {MASK}"}}


def test_no_secrets_leave_text_untouched() -> None:
    assert Redactor([]).text("abcdefghijklmnop") == "abcdefghijklmnop"
