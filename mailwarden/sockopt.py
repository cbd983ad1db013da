"""No delayed-ACK stalls when the MTA talks to us over TCP.

Two writes in a row by one side, with no answer between them, meet
Nagle's algorithm on the writer and delayed ACK on the reader: the second
write waits until the first is acknowledged, which the reader does only
after its delayed-ACK timer (about 40 ms on Linux).  Over TCP that happens
twice per message unless both writers are kept from it:

* the MTA: Postfix writes each milter command into a buffer and sends it
  when it next waits for a reply (milter8.c), so the steps negotiated "no
  reply" (every header, end of headers) travel with the next step that has
  one (the body), in one write.  What does travel alone is the macro
  packet of the DATA step once the step itself is negotiated away: Postfix
  sends a step's macros (``milter_data_macros``, ``i`` by default) even
  for a skipped step, smtpd flushes them when it hands the milter
  connection to cleanup for the content, and that lone packet, never
  answered, held the first header for 41 ms (captured, one session).  So
  on a TCP socket the DATA step stays on (:func:`tune_for_tcp`): its macros
  go out with the DATA command, and our reply acknowledges both.  Asking
  for a reply to every header as well was tried: no stall either, but a
  round trip per header (one session, 60 headers of 130 bytes: 42 msg/s
  against 85 without, UNIX 86);
* libmilter answers end of message with several small writes (each header
  change, then the verdict).  libmilter creates the listening socket in
  ``opensocket()`` and never sets TCP_NODELAY; on Linux an accepted socket
  inherits the option from its listener, so setting it once on the
  listener (found among this process's descriptors) covers every
  connection.

A UNIX socket has neither algorithm: there the DATA step is skipped.
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


# what a TCP socket clears from the negotiated protocol: the DATA step is
# not skipped (its macros would come alone) and gets a reply (see above)
TCP_CLEARED_BITS = Milter.P_NODATA | Milter.P_NR_DATA


def tune_for_tcp(socket_spec: str, milter_class) -> None:
    """Called once libmilter has opened ``socket_spec``: on TCP, Nagle off on
    the listener and the DATA step kept in what ``milter_class`` negotiates
    (its ``tcp_protocol``, read in its ``negotiate``)."""
    if not socket_spec.startswith("inet"):
        return
    milter_class.tcp_protocol = True
    if not nodelay_on_listeners():
        log.warning("no listening TCP socket found for %s: TCP_NODELAY not set", socket_spec)
