"""Edge protection by client address (issue 12; `[limits]` and listener `allow`/`deny` of
docs/configuration.md, and their refusals): against real Dovecot, 127.0.0.2 plays the legitimate client and 127.0.0.3 the
hostile one, with `exempt = []` so loopback addresses are limited like any other.

Each refusal is checked as the client sees it (STARTTLS listeners: the protocol's refusal, then
the close; implicit TLS: a close before any byte, no handshake spent), counted by reason in
`postern_connections_rejected_total`, and the legitimate client keeps logging in throughout.
"""

from __future__ import annotations

import time

from harness import LineClient, wait_for
from harness.edge import BAD, GOOD, REFUSAL, held_imaps, imaps_login, refused_without_handshake, rejected, starttls_refusal
from harness.edge import edge_gateway as gateway
from harness.sockets import connect


def test_per_ip_connections_caps_one_address_across_listeners(postern_factory, dovecot, client_ctx):
    gw = gateway(postern_factory, dovecot, per_ip_connections=3)
    user, password = dovecot.new_user()
    hs_failures = gw.metrics().value("postern_tls_handshake_failures_total")
    # three sessions from the hostile address, on two listeners: the cap is per address,
    # process-wide, not per listener
    held = [held_imaps(gw, client_ctx, user, password, BAD) for _ in range(2)]
    st = LineClient.connect(gw.addr("imap-st"), source=BAD)
    held.append(st)
    assert st.line().startswith(b"* OK")
    try:
        assert refused_without_handshake(gw.addr("imaps"), BAD)
        for listener in ("imap-st", "pop3-st", "smtp-st"):
            assert starttls_refusal(gw, listener, BAD) == [REFUSAL[listener]], listener
        wait_for(lambda: rejected(gw, "per_ip") == 4, 5, "four per_ip refusals")
        assert rejected(gw, "per_ip", "imaps") == 1 and rejected(gw, "per_ip", "pop3-st") == 1
        assert gw.metrics().value("postern_tls_handshake_failures_total") == hs_failures, "no handshake spent"
        # the legitimate address is not affected, even with several sessions at once
        more = [held_imaps(gw, client_ctx, user, password, GOOD) for _ in range(2)]
        imaps_login(gw, client_ctx, user, password)
        for c in more:
            c.close()
    finally:
        held.pop().close()
    # a closed session frees its place at once
    wait_for(lambda: gw.metrics().value("postern_connections_active", listener="imap-st") == 0, 5, "imap-st closed")
    c = held_imaps(gw, client_ctx, user, password, BAD)
    c.close()
    for c in held:
        c.close()


def test_per_ip_rate_is_a_bucket_with_twice_the_rate_as_burst(postern_factory, dovecot, client_ctx):
    rate = 3
    gw = gateway(postern_factory, dovecot, per_ip_rate=rate)
    user, password = dovecot.new_user()
    started = time.monotonic()
    served = refused = 0
    # connect-and-close as fast as possible: the burst (2 x rate) passes, then about `rate`/s
    for _ in range(20):
        with LineClient.connect(gw.addr("imap-st"), source=BAD, timeout=5) as c:
            first = c.line()
            if first.startswith(b"* OK"):
                served += 1
                c.cmd(b"z LOGOUT")
                c.tagged(b"z")
            else:
                assert first == REFUSAL["imap-st"], first
                assert c.lines_to_eof() == []
                refused += 1
    elapsed = time.monotonic() - started
    assert served >= 2 * rate, f"the burst of {2 * rate} passes: {served} served"
    assert served <= 2 * rate + rate * elapsed + 1, f"{served} served in {elapsed:.2f}s at {rate}/s"
    assert refused >= 20 - (2 * rate + rate * elapsed + 1)
    wait_for(lambda: rejected(gw, "rate") == refused, 5, f"{refused} rate refusals")
    # other protocols get their own refusal, the rate is per address across listeners
    assert starttls_refusal(gw, "smtp-st", BAD) == [REFUSAL["smtp-st"]]
    assert starttls_refusal(gw, "pop3-st", BAD) == [REFUSAL["pop3-st"]]
    # the legitimate client logs in meanwhile, its bucket untouched
    for _ in range(2 * rate):
        imaps_login(gw, client_ctx, user, password)


def test_allow_and_deny_per_listener_deny_wins(postern_factory, dovecot, client_ctx):
    keys = {
        # allow loopback, but deny the hostile address: deny wins
        "imaps": {"allow": ["127.0.0.0/8"], "deny": [f"{BAD}/32"]},
        "imap-st": {"allow": ["127.0.0.0/8"], "deny": [BAD]},
        # only the legitimate address
        "pop3-st": {"allow": [GOOD]},
        "smtp-st": {"deny": ["127.0.0.0/24"]},
    }
    gw = gateway(postern_factory, dovecot, listener_keys=keys)
    user, password = dovecot.new_user()
    assert refused_without_handshake(gw.addr("imaps"), BAD)
    assert starttls_refusal(gw, "imap-st", BAD) == [REFUSAL["imap-st"]]
    assert starttls_refusal(gw, "pop3-st", BAD) == [REFUSAL["pop3-st"]]
    assert starttls_refusal(gw, "pop3-st", "127.0.0.4") == [REFUSAL["pop3-st"]], "not in allow"
    assert starttls_refusal(gw, "smtp-st", GOOD) == [REFUSAL["smtp-st"]]
    wait_for(lambda: rejected(gw, "denied") == 5, 5, "five denied")
    imaps_login(gw, client_ctx, user, password)
    with LineClient.connect(gw.addr("pop3-st"), source=GOOD) as c:
        assert c.line().startswith(b"+OK")
    assert rejected(gw, "denied") == 5


def test_a_flood_of_refusals_is_counted_but_logged_at_a_bounded_rate(postern_factory, dovecot):
    gw = gateway(postern_factory, dovecot, listener_keys={"imaps": {"deny": [BAD]}})
    mark = gw.log_mark()
    n = 300
    for _ in range(n):
        s = connect(gw.addr("imaps"), timeout=5, source=BAD)
        s.close()
    wait_for(lambda: rejected(gw, "denied", "imaps") == n, 10, f"{n} denied")
    lines = gw.find_records(lambda r: r.get("message") == "connection refused", mark)
    assert 1 <= len(lines) <= 20, f"{len(lines)} log lines for {n} refusals"


def test_exempt_networks_skip_the_per_address_limits(postern_factory, dovecot, client_ctx):
    gw = gateway(postern_factory, dovecot, per_ip_connections=1, per_ip_rate=1, exempt=[f"{GOOD}/32"])
    user, password = dovecot.new_user()
    held = [held_imaps(gw, client_ctx, user, password, GOOD) for _ in range(4)]
    for c in held:
        c.close()
    first = held_imaps(gw, client_ctx, user, password, BAD)
    try:
        assert refused_without_handshake(gw.addr("imaps"), BAD)
    finally:
        first.close()
    assert gw.metrics().value("postern_connections_rejected_total") == 1
