"""The session's header scan: hops, a blank first line, Date/Message-ID."""

from __future__ import annotations

import pytest

from postillion.smtp.headers import HeaderScan, received_header

HEADER = b"Received: a\r\nreceived: b\r\nDate: x\r\nMessage-Id: <y>\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.mark.parametrize("cut", range(0, len(HEADER) + 1))
def test_scan_any_cut(cut):
    scan = HeaderScan(1 << 20)
    ends = [scan.feed(HEADER[:cut]), scan.feed(HEADER[cut:])]
    assert scan.hops == 2 and scan.has_date and scan.has_message_id and scan.done
    end = HEADER.index(b"\r\n\r\n") + 2   # where the empty line starts
    if cut <= end:
        assert ends == [None, end - cut]
    elif cut == end + 1:
        assert ends == [None, None]  # the empty line's CR|LF split: found, nothing inserted
    else:
        assert ends == [end, None]


def test_scan_first_line_and_limit():
    scan = HeaderScan(1 << 20)
    scan.feed(b" folded\r\nSubject: x\r\n")
    assert scan.bad_first_line and not scan.done
    scan = HeaderScan(10)
    scan.feed(b"X-A: " + b"a" * 20 + b"\r\n")
    assert scan.done and scan.hops == 0
    scan = HeaderScan(1 << 20)
    assert scan.feed(b"\r\nbody\r\n") == 0  # no header at all


def test_received_header_never_injects():
    header = received_header("evil\r\nX-Injected: 1", "192.0.2.1", "mx.test", 0x1234, ["a@b"], True,
                             tls=("TLSv1.3:TLS_AES_256_GCM_SHA384:256", "NO"), user="gil\nles",
                             show_auth=True)
    lines = header.split(b"\r\n")
    assert all(line.startswith((b"Received:", b"\t")) for line in lines[:-1])
    assert b"with ESMTPSA id 00001234" in header
    assert b"(TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)" in header and b"auth=yes user=gil?les" in header
    masked = received_header("h", "2001:db8::1", "mx.test", 1, ["a@b", "c@d"], False, mask_src=True,
                             smtputf8=True)
    assert masked.startswith(b"Received: by mx.test (Postillion) with UTF8SMTP id 00000001;\r\n")


def test_masquerade_from():
    from postillion.smtp.headers import masquerade_from
    head = b"Subject: a\r\nfrom: \"X Y\" <x@y>\r\nTo: z\r\n"
    assert masquerade_from(head, "me@example.org") == b"Subject: a\r\nFrom: \"X Y\" <me@example.org>\r\nTo: z\r\n"
    assert masquerade_from(b"From: x@y\r\n", "me@o") == b"From: me@o\r\n"
    assert masquerade_from(b"From:\r\n\tx@y\r\nA: b\r\n", "me@o") == b"From: me@o\r\nA: b\r\n"


async def test_reverse_dns_names_loopback_and_refuses_odd_names():
    from postillion.smtp.recipients import reverse_dns
    assert await reverse_dns("127.0.0.1", 5) == "localhost"   # /etc/hosts
    assert await reverse_dns("local", 5) == "localhost"
    assert await reverse_dns("not an address", 5) == "<unknown>"


def test_received_header_shows_the_rdns_name():
    header = received_header("helo.example", "192.0.2.7", "mx.example.test", 0x1a2b3c4d,
                             ["a@example.test"], True, rdns="client.example.net")
    assert header.startswith(b"Received: from helo.example (client.example.net [192.0.2.7])\r\n")
