"""TCP tuning of the milter socket (mailwarden.sockopt)."""

import socket

import Milter

from mailwarden import sockopt
from mailwarden.milter import MailwardenMilter


def test_nodelay_set_on_listener_and_inherited_by_accepted_sockets():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    idle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)     # not listening: untouched
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sockopt.nodelay_on_listeners() >= 1
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert idle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        with socket.create_connection(listener.getsockname(), timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listener.close()
        idle.close()


def test_tcp_socket_keeps_the_data_step_and_nothing_else_changes():
    class Probe(MailwardenMilter):
        pass
    # no SETSYMLIST offered: the macro lists need a context (tests/milter)
    offered = Milter.CURR_ACTS & ~Milter.SETSYMLIST, 0x1fffff, 0, 0

    def negotiated(cls):
        opts = list(offered)
        assert cls(engine=None).negotiate(opts) == Milter.CONTINUE
        return opts[1]
    unix = negotiated(Probe)
    assert unix & Milter.P_NR_HDR                     # UNIX socket: headers need no reply
    assert unix & Milter.P_NODATA                     # and the DATA step is skipped
    sockopt.tune_for_tcp("unix:/run/x.sock", Probe)
    assert not Probe.tcp_protocol
    sockopt.tune_for_tcp("inet:127.0.0.1:0", Probe)   # no listener of that port: only a warning
    assert Probe.tcp_protocol
    tcp = negotiated(Probe)
    # Postfix sends the DATA macros even for a skipped step: over TCP the
    # step stays, with a reply, so that they never travel alone
    assert tcp & (Milter.P_NODATA | Milter.P_NR_DATA) == 0
    # headers still go without a reply and end of headers is skipped:
    # Postfix sends them in one write with the body, which gets one
    assert tcp & Milter.P_NR_HDR and tcp & Milter.P_NOEOH and unix & Milter.P_NOEOH
    # nothing else changes
    assert (unix & ~sockopt.TCP_CLEARED_BITS) == (tcp & ~sockopt.TCP_CLEARED_BITS)
    assert not MailwardenMilter.tcp_protocol


def test_data_step_over_tcp_continues():
    # libmilter calls the data callback once the step is negotiated
    assert MailwardenMilter(engine=None).data() == Milter.CONTINUE
