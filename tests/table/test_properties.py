"""For any input: a value or the module's own error, never another exception."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from postillion.table import BackendError, MalformedValue, Service, parse_value
from postillion.table.backend_config import parse_backend_config
from postillion.table.errors import printable
from postillion.table.match import compile_element, domain_match
from postillion.table.textformat import parse_table_text
from postillion.table.values import BadValue

TEXT = st.text(alphabet=st.sampled_from(list("ab:@*.,\\\"# \t\n\r/0123456789[]%'\x00é")), max_size=60)


@given(service=st.sampled_from(list(Service)), key=TEXT, raw=TEXT)
def test_parsers_raise_only_malformed_value(service, key, raw):
    try:
        parse_value(service, key, raw, table="t")
    except MalformedValue as e:
        assert "\n" not in str(e) and "\r" not in str(e)


@given(text=TEXT)
def test_table_text_raises_only_backend_error(text):
    try:
        contents = parse_table_text(text, "f")
    except BackendError:
        return
    assert all(k == k.lower() for k in contents.mapping)


@given(text=TEXT)
def test_backend_config_raises_only_backend_error(text):
    try:
        parse_backend_config(text, "f", {"a", "ab"})
    except BackendError:
        pass


@given(service=st.sampled_from([Service.DOMAIN, Service.NETADDR, Service.MAILADDR,
                                Service.STRING, Service.REGEX]),
       element=TEXT, key=TEXT)
def test_matchers_never_raise(service, element, key):
    try:
        matches = compile_element(service, element)
    except BadValue:
        return
    assert matches(key) in (True, False)


@given(pattern=TEXT, key=TEXT)
def test_domain_match_total(pattern, key):
    assert domain_match(pattern, key) in (True, False)


@given(key=st.text(max_size=200))
def test_printable_is_one_safe_line(key):
    shown = printable(key)
    assert shown.startswith('"') and shown.endswith('"')
    assert all(c.isprintable() for c in shown)
    assert len(shown) < 100 * 12


DOMAINISH = st.text(alphabet=st.sampled_from(list("abAB.*- ")), min_size=1, max_size=8)


@given(service=st.sampled_from([Service.DOMAIN, Service.STRING, Service.SOURCE]),
       elements=st.lists(DOMAINISH, max_size=12), key=DOMAINISH)
def test_compiled_list_finds_what_a_scan_finds(service, elements, key):
    from postillion.table.match import CompiledList
    try:
        compiled = CompiledList(service, elements)
    except BadValue:
        return
    scanned = next((e for e in elements if compile_element(service, e)(key)), None)
    assert compiled.first(key) == scanned


@given(text=TEXT, kind=st.sampled_from(["map", "set", "aliases"]))
def test_makemap_source_raises_only_backend_error(text, kind):
    from postillion.table.dbfile import parse_source
    try:
        entries = parse_source(text, "src", kind)
    except BackendError as e:
        assert str(e).startswith("src:")
        return
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys)) and all(k == k.lower() for k in keys)
