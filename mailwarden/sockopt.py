"""No delayed-ACK stalls when the MTA talks to us over TCP.

Two writes in a row by one side, with no answer between them, meet
Nagle's algorithm on the writer and delayed ACK on the reader: the second
write waits until the first is acknowledged, which the reader does only
after its delayed-ACK timer (about 40 ms on Linux).  Over TCP that happens
twice per message unless both writers are kept from it:

* the MTA writes back to back whatever we negotiated "no reply" for (each
  header, end of headers, ...): captured on loopback, Postfix sent the
  first header, then held the rest for 42 ms until our delayed ACK.  On a
  TCP socket we therefore ask for a reply to every step (:func:`tune_for_tcp`),
  so the MTA always waits for us and our reply carries the ACK.  That
  includes DATA, which the milter has no use for: Postfix sends the DATA
  step's macros (``milter_data_macros``, ``i`` by default) even when the
  step itself is negotiated away, and that lone packet, never answered,
  held the first header for 41 ms (captured, one session).  With the step
  on, the macros go out with the DATA command and our reply acknowledges
  both;
* libmilter answers end of message with several small writes (each header
  change, then the verdict).  libmilter creates the listening socket in
  ``opensocket()`` and never sets TCP_NODELAY; on Linux an accepted socket
  inherits the option from its listener, so setting it once on the
  listener (found among this process's descriptors) covers every
  connection.

A UNIX socket has neither algorithm: there "no reply" steps stay, and save
a round trip each.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

import Milter

log = logging.getLogger("mailwarden")


def _listening_tcp(sock: socket.socket) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))


def nodelay_on_listeners(fd_dir: str = "/proc/self/fd") -> int:
    """Set TCP_NODELAY on every listening TCP socket of this process; how many."""
    try:
        names = os.listdir(fd_dir)
    except OSError as exc:          # no /proc: Nagle stays on, mail still flows
        log.warning("cannot list open sockets (%s): TCP_NODELAY not set", exc)
        return 0
    done = 0
    for name in names:
        try:
            fd = int(name)
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            # a duplicate: closing it leaves libmilter's descriptor open
            sock = socket.socket(fileno=os.dup(fd))
        except (ValueError, OSError):
            continue                # the listing's own descriptor, already closed
        try:
            if _listening_tcp(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                done += 1
        except OSError as exc:
            log.warning("TCP_NODELAY on descriptor %d: %s", fd, exc)
        finally:
            sock.close()
    return done



# every step of the milter protocol (version 6) that can go without a reply
NO_REPLY_BITS = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_RCPT
                 | Milter.P_NR_DATA | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY
                 | Milter.P_NR_HDR)
# what a TCP socket clears from the negotiated protocol: no step without a
# reply, and no DATA step skipped (its macros would come alone, see above)
TCP_CLEARED_BITS = NO_REPLY_BITS | Milter.P_NODATA


def tune_for_tcp(socket_spec: str, milter_class) -> None:
    """Called once libmilter has opened ``socket_spec``: on TCP, Nagle off on
    the listener and replies to every step negotiated by ``milter_class``
    (its ``reply_always``, read in its ``negotiate``)."""
    if not socket_spec.startswith("inet"):
        return
    milter_class.reply_always = True
    if not nodelay_on_listeners():
        log.warning("no listening TCP socket found for %s: TCP_NODELAY not set", socket_spec)
