"""What one parse gathers across a file and its includes: the state every
grammar family (grammar/*.py) reads and writes, and parser.py turns into
a Config.  Apart from parser.py so that the families name it without an
import back up to the parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from postillion.config.model import (ActionDecl, CaDecl, Feature, ListenDecl, MatchDecl,
                                     MetricsDecl, MtaLimit, PkiDecl, Position, TableDecl)


@dataclass
class _State:
    """Everything one parse gathers across a file and its includes."""

    errors: list[tuple[Position, str]] = field(default_factory=list)
    macros: dict[str, str] = field(default_factory=dict)
    fixed_macros: frozenset[str] = frozenset()
    # Reading order of each file: the include positions that lead to it,
    # so errors sort as a reader meets them (an include's errors in place).
    order: dict[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    including: list[tuple[str, str]] = field(default_factory=list)  # (realpath, as written)
    tables: dict[str, TableDecl] = field(default_factory=dict)
    listeners: list[ListenDecl] = field(default_factory=list)
    actions: dict[str, ActionDecl] = field(default_factory=dict)
    matches: list[MatchDecl] = field(default_factory=list)
    pkis: dict[str, PkiDecl] = field(default_factory=dict)
    pki_fields: dict[tuple[str, str], Position] = field(default_factory=dict)
    cas: dict[str, CaDecl] = field(default_factory=dict)
    implied_pkis: dict[str, PkiDecl] = field(default_factory=dict)  # 2012 `certificate N`
    hostname: tuple[str, Position] | None = None
    limits: dict[str, tuple[object, Position]] = field(default_factory=dict)
    # `queue`, `bounce`, `mta`, `mda`, `scheduler`, `processes`: (section, field) -> value
    options: dict[tuple[str, str], tuple[object, Position]] = field(default_factory=dict)
    mta_limits: list[MtaLimit] = field(default_factory=list)
    mta_nameservers: list[tuple[str, int]] = field(default_factory=list)
    mda_wrappers: dict[str, tuple[str, Position]] = field(default_factory=dict)
    features: list[Feature] = field(default_factory=list)
    # The first rule of each grammar: "match" / "2012".
    rule_grammar: dict[str, Position] = field(default_factory=dict)
    # Names whose declaration was attempted but broken: no "no such" noise.
    tried_tables: set[str] = field(default_factory=set)
    tried_actions: set[str] = field(default_factory=set)
    tried_pkis: set[str] = field(default_factory=set)
    table_refs: list[tuple[str, Position, str]] = field(default_factory=list)  # name, at, use
    action_refs: list[tuple[str, Position]] = field(default_factory=list)
    pki_refs: list[tuple[str, Position]] = field(default_factory=list)
    ca_refs: list[tuple[str, Position]] = field(default_factory=list)
    wrapper_refs: list[tuple[str, Position]] = field(default_factory=list)
    metrics: MetricsDecl | None = None      # `metrics listen on`, at most one
