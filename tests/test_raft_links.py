"""Every Raft link's retransmission backoff is capped (`cellstore.raft.RAFT_RTO_MAX_MS`), on the
sockets pysyncobj connects and on those it accepts: after a partition heals, a link whose
timer had backed off to seconds is heard again within a second. Real sockets on 127.0.0.1;
skipped on a kernel without `TCP_RTO_MAX_MS` (Linux 6.15)."""

from __future__ import annotations

import socket

import pytest
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import TcpConnection

from cellstore.raft import RAFT_RTO_MAX_MS, TCP_RTO_MAX_MS, cap_retransmission_backoff


def _rto_max(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, TCP_RTO_MAX_MS)


def test_connected_and_accepted_raft_sockets_cap_their_backoff() -> None:
    probe = socket.socket()
    supported = cap_retransmission_backoff(probe)
    probe.close()
    if not supported:
        pytest.skip("this kernel has no TCP_RTO_MAX_MS (Linux 6.15 and later)")
    poller = createPoller("auto")
    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        outgoing = TcpConnection(poller, keepalive=(16, 3, 5))
        assert outgoing.connect(host, port)
        accepted, _ = server.accept()
        incoming = TcpConnection(poller, socket=accepted, keepalive=None)
        try:
            assert _rto_max(outgoing._TcpConnection__socket) == RAFT_RTO_MAX_MS
            assert _rto_max(incoming._TcpConnection__socket) == RAFT_RTO_MAX_MS
            # pysyncobj's own options are still set.
            assert outgoing._TcpConnection__socket.getsockopt(
                socket.SOL_SOCKET, socket.SO_KEEPALIVE
            )
        finally:
            outgoing.disconnect()
            incoming.disconnect()
    # A socket nobody capped keeps the kernel's default (120 s).
    plain = socket.socket()
    try:
        assert _rto_max(plain) > RAFT_RTO_MAX_MS
    finally:
        plain.close()
