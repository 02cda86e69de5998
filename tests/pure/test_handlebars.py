"""The webhook's templates: Handlebars conditionals and loops render as Handlebars renders them, Mustache
templates keep working, and whatever the subset does not have is refused when the template is compiled."""

from __future__ import annotations

import pytest

from webhook_worker.render import Template, TemplateError, html_template, url_template

READING = {
    "device_id": "photon-1",
    "ok": True,
    "nothing": None,
    "zero": 0,
    "empty": [],
    "readings": [21.5, 22.0, 23.25],
    "sensors": {"t": 21.5, "h": 40},
    "place": {"room": "lab", "floor": 2},
    "rows": [{"name": "a", "v": 1}, {"name": "b", "v": 2}],
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{#if ok}}yes{{else}}no{{/if}}", "yes"),
        ("{{#if nothing}}yes{{else}}no{{/if}}", "no"),
        ("{{#if zero}}yes{{else}}no{{/if}}", "no"),  # Handlebars: 0 and [] are false for #if
        ("{{#if empty}}yes{{else}}no{{/if}}", "no"),
        ("{{#if missing}}yes{{else if ok}}other{{else}}no{{/if}}", "other"),
        ("{{#unless ok}}off{{else}}on{{/unless}}", "on"),
        ("{{#unless nothing}}absent{{/unless}}", "absent"),
        ("{{#each readings}}{{@index}}={{this}}{{#unless @last}},{{/unless}}{{/each}}", "0=21.5,1=22,2=23.25"),
        ("{{#each sensors}}{{@key}}:{{this}};{{/each}}", "t:21.5;h:40;"),
        ("{{#each rows}}{{#if @first}}[{{/if}}{{name}}{{v}}{{#if @last}}]{{/if}}{{/each}}", "[a1b2]"),
        ("{{#each empty}}x{{else}}none{{/each}}", "none"),
        ("{{#each rows}}{{../device_id}}/{{name}} {{/each}}", "photon-1/a photon-1/b "),
        ("{{#each rows}}{{device_id}}{{/each}}", "photon-1photon-1"),  # outer names, as Mustache finds them
        ("{{#with place}}{{room}}@{{floor}}{{/with}}", "lab@2"),
        ("{{#with nothing}}x{{else}}no place{{/with}}", "no place"),
        ("{{#rows}}{{name}}{{/rows}}", "ab"),  # a Mustache section
        ("{{^empty}}no readings{{/empty}}", "no readings"),
        ("{{readings.1}} {{rows.0.name}} {{rows.[1].name}} {{readings.length}}", "22 a b 3"),
        ("{{lookup sensors 'h'}} {{@root.device_id}}", "40 photon-1"),
        ("{{readings}}|{{ok}}|{{nothing}}|{{place}}", '21.5,22,23.25|true||{"room":"lab","floor":2}'),
        ("{{! a comment }}{{!-- with }} inside --}}done", "done"),
        ("a  {{~ device_id ~}}  b", "aphoton-1b"),
    ],
)
def test_handlebars_renders_conditionals_loops_and_paths(source: str, expected: str) -> None:
    assert Template(source, "T").render(READING) == expected


def test_block_lines_leave_no_blank_lines() -> None:
    """A line holding only a block tag disappears, as in Handlebars and Mustache: line protocols stay intact."""
    source = "{{#each rows}}\nm,d={{../device_id}} v={{v}}\n{{/each}}\n"
    assert Template(source, "T").render(READING) == "m,d=photon-1 v=1\nm,d=photon-1 v=2\n"


def test_each_context_escapes_for_its_place() -> None:
    data = {"names": ["a b", "c&d"], "note": "<b>"}
    assert url_template("http://x/?n={{#each names}}{{this}};{{/each}}", "U").render(data) == (
        "http://x/?n=a%20b;c%26d;"
    )
    assert html_template("{{note}} {{{note}}} {{&note}}", "B").render(data) == "&lt;b&gt; <b> <b>"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("{{#if ok}}never closed", "never closed"),
        ("{{#if ok}}x{{/each}}", "closes {{#if}}"),
        ("{{/if}}", "never opened"),
        ("{{#each rows as |row|}}{{/each}}", "block parameters"),
        ("{{> partial}}", "partials"),
        ("{{#repeat 3}}x{{/repeat}}", "unknown block helper 'repeat'"),
        ("{{uppercase device_id}}", "unknown helper 'uppercase'"),
        ("{{=<% %>=}}", "delimiters"),
        ("{{device_id", "not closed"),
        ("{{else}}", "outside any block"),
        ("{{#if a b}}x{{/if}}", "takes one argument"),
    ],
)
def test_what_the_subset_lacks_is_refused_by_name(source: str, named: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Template(source, "WEBHOOK_BODY")
    assert str(caught.value).startswith("WEBHOOK_BODY: invalid Mustache/Handlebars template")
    assert named in str(caught.value)


def test_whatever_compiles_renders_with_any_data() -> None:
    """Data of every shape (missing, wrong type, deep) renders: no template error at send time."""
    source = (
        "{{#each place}}{{this.x.y}}{{/each}}{{#with readings}}{{room}}{{/with}}{{rows.9.name}}"
        "{{#each ok}}x{{/each}}{{lookup nothing 'a'}}{{../../up}}{{#if rows.0}}{{name}}{{/if}}"
    )
    template = Template(source, "T")
    for data in (READING, {}, {"place": 3, "rows": "text", "readings": {"room": [1]}}):
        assert isinstance(template.render(data), str)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # Block lines next to each other, and comment lines, all vanish (as in the Mustache spec).
        ("{{#ok}}\n{{#place}}\nx{{room}}\n{{/place}}\n{{/ok}}\n", "xlab\n"),
        ("{{#each readings}}\n  {{#if this}}\n  v={{this}}\n  {{/if}}\n{{/each}}\n", "  v=21.5\n  v=22\n  v=23.25\n"),
        ("{{#if ok}}\n  {{! why }}\n  x\n{{/if}}\n", "  x\n"),
        # Mustache sections: 0 is false (mustache.js, pystache), an empty object true (JavaScript).
        ("{{#zero}}Z{{/zero}}{{^zero}}not zero{{/zero}}", "not zero"),
        ("{{#place}}P{{/place}}{{#with zero}}{{this}}{{else}}none{{/with}}", "P0"),  # Handlebars: with 0 is 0
        ("{{^ok}}off{{else}}on{{/ok}}", "on"),
        ("{{./device_id}} {{this.device_id}} {{device_id.length}}", "photon-1 photon-1 8"),
        ("{{! {a} braces }}ok", "ok"),
    ],
)
def test_what_handlebars_and_mustache_agree_on(source: str, expected: str) -> None:
    assert Template(source, "T").render(READING) == expected


def test_limits_hold_at_compile_time() -> None:
    """Deep nesting and unclosed comments are refused quickly, before anything renders."""
    with pytest.raises(TemplateError, match="nest deeper"):
        Template("{{#if a}}" * 600 + "{{/if}}" * 600, "T")
    with pytest.raises(TemplateError, match="not closed"):
        Template("{{!--" * 20_000, "T")
    with pytest.raises(TemplateError, match="outer loop"):
        Template("{{#each rows}}{{@../index}}{{/each}}", "T")
