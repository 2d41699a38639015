"""mesh.embedded.free_port: ports for servers started next, outside the kernel's ephemeral range
(where an outgoing connection could take one before its server binds it) and never handed out
twice by one process (a stack picks all its ports before anything binds)."""

import socket

from mesh import embedded


def test_ports_are_below_the_ephemeral_range_unique_and_bindable():
    low = embedded._ephemeral_low()
    ports = [embedded.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < low for p in ports), (low, min(ports), max(ports))
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_twin_is_free_too_and_stays_below_the_range():
    low = embedded._ephemeral_low()
    port = embedded.free_port(twin_offset=2000)
    assert port + 2000 < low
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", port))
        b.bind(("127.0.0.1", port + 2000))
    # neither is handed out again, as a port or as a twin
    later = {embedded.free_port() for _ in range(200)}
    assert port not in later and port + 2000 not in later


def test_a_port_in_use_is_skipped(monkeypatch):
    busy, spare = embedded.free_port(), embedded.free_port()
    embedded._GIVEN.difference_update({busy, spare})  # as if another process had picked them
    with socket.socket() as held:
        held.bind(("127.0.0.1", busy))
        held.listen()
        draws = iter([busy, spare])
        monkeypatch.setattr(embedded.random, "randint", lambda lo, hi: next(draws))
        assert embedded.free_port() == spare
