"""The lexer: positions, quoting, comments, continuation, macros (docs/configuration.md)."""

from __future__ import annotations

from postillion.config.lexer import Kind, Lexer
from postillion.config.model import Position


def lex(text: str, macros: dict[str, str] | None = None, fixed: frozenset[str] = frozenset()):
    errors: list[tuple[Position, str]] = []
    tokens = list(Lexer(text, "f", macros if macros is not None else {}, errors, fixed))
    return tokens, errors


def simple(text: str, macros: dict[str, str] | None = None):
    tokens, errors = lex(text, macros)
    assert errors == []
    return [(t.kind.name, t.text, t.pos.line, t.pos.column) for t in tokens]


def test_words_punctuation_and_positions():
    assert simple("table t { a => b, c = d }\n") == [
        ("WORD", "table", 1, 1), ("WORD", "t", 1, 7), ("PUNCT", "{", 1, 9),
        ("WORD", "a", 1, 11), ("PUNCT", "=>", 1, 13), ("WORD", "b", 1, 16),
        ("PUNCT", ",", 1, 17), ("WORD", "c", 1, 19), ("PUNCT", "=", 1, 21),
        ("WORD", "d", 1, 23), ("PUNCT", "}", 1, 25), ("NEWLINE", "\n", 1, 26),
        ("EOF", "", 2, 1),
    ]


def test_table_reference_and_negation():
    assert [t[:2] for t in simple("!from src <nets>")] == [
        ("PUNCT", "!"), ("WORD", "from"), ("WORD", "src"), ("PUNCT", "<"),
        ("WORD", "nets"), ("PUNCT", ">"), ("EOF", ""),
    ]


def test_comment_outside_quotes_only():
    assert [t[:2] for t in simple('a "b # c" # d \\\ne')] == [
        ("WORD", "a"), ("STRING", "b # c"), ("NEWLINE", "\n"), ("WORD", "e"), ("EOF", ""),
    ]


def test_quotes_and_escapes():
    toks = simple("'it\\'s' \"a\\ b\" \"re\\d+\" \"x\\\ny\"")
    assert [t[:2] for t in toks[:-1]] == [
        ("STRING", "it's"), ("STRING", "a b"), ("STRING", "re\\d+"), ("STRING", "xy"),
    ]


def test_backslash_newline_joins_lines():
    toks = simple("listen \\\n  on lo\\\ncal\n")
    assert [t[:2] for t in toks] == [
        ("WORD", "listen"), ("WORD", "on"), ("WORD", "local"), ("NEWLINE", "\n"), ("EOF", ""),
    ]
    assert toks[1][2:] == (2, 3)


def test_crlf_is_a_newline():
    assert [t[0] for t in simple("a\r\nb")] == ["WORD", "NEWLINE", "WORD", "EOF"]


def test_macro_definition_and_expansion():
    macros: dict[str, str] = {}
    toks = simple('ifs = "{ lo0, em0 }"\nt $ifs x$y\n', macros)
    assert macros == {"ifs": "{ lo0, em0 }"}
    assert [(k, txt, c) for k, txt, _, c in toks] == [
        ("WORD", "t", 1), ("PUNCT", "{", 3), ("WORD", "lo0", 3), ("PUNCT", ",", 3),
        ("WORD", "em0", 3), ("PUNCT", "}", 3), ("WORD", "x$y", 8), ("NEWLINE", "\n", 11),
        ("EOF", "", 1),
    ]


def test_no_expansion_in_quotes_and_pairs_inside_braces_are_not_macros():
    macros: dict[str, str] = {}
    toks = simple('t {\n k = v\n}\nm "$k"\n', macros)
    assert macros == {}
    assert ("STRING", "$k", 4, 3) in toks


def test_defines_win_over_file():
    macros = {"port": "2525"}
    tokens, errors = lex('port = 25\nlisten $port\n', macros, frozenset({"port"}))
    assert errors == []
    assert [t.text for t in tokens if t.kind is Kind.WORD] == ["listen", "2525"]


def test_undefined_macro_is_an_error_with_hint():
    tokens, errors = lex("users = x\nuserbase $usres\n")
    assert errors == [(Position("f", 2, 10), "undefined macro: $usres; did you mean $users?")]
    assert Kind.ERROR in [t.kind for t in tokens]


def test_macro_loop_is_bounded():
    _, errors = lex('a = "$a"\nlisten $a\n')
    assert errors == [(Position("f", 2, 8), "macro $a expands too deeply (a loop?)")]


def test_macro_fan_out_is_bounded():
    text = 'a = "x x x x x x x x"\n'
    for prev, name in zip("abcdefg", "bcdefgh"):
        text += f'{name} = "' + " ".join(f"${prev}" for _ in range(8)) + '"\n'
    _, errors = lex(text + "use $h\n")
    assert errors == [(Position("f", 9, 5), "macro $h expands to too many tokens")]


def test_unterminated_quote_and_control_characters():
    tokens, errors = lex('a "bc\nd \x01 e\n')
    assert errors == [
        (Position("f", 1, 3), "unterminated quoted string"),
        (Position("f", 2, 3), "unexpected character U+0001"),
    ]
    assert [t.kind.name for t in tokens] == [
        "WORD", "ERROR", "NEWLINE", "WORD", "ERROR", "WORD", "NEWLINE", "EOF",
    ]


def test_lone_dollar():
    _, errors = lex("a $ b")
    assert errors == [(Position("f", 1, 3), 'expected a macro name after "$"')]
