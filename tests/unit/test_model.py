"""The message model: a body spooled to a file past a threshold, and the
message bytes."""

import pytest


def test_a_spooled_body_is_read_by_several_threads_at_once_without_mixing():
    import threading
    from mailwarden.model import Body
    body = Body(spool_threshold=1000)
    data = b"".join(b"line %06d of the body\r\n" % i for i in range(20000))
    for start in range(0, len(data), 4096):
        body.write(data[start:start + 4096])
    assert body.spooled
    seen: list = []

    def reader(kind):
        got = body.read() if kind == "read" else b"".join(body.chunks(777))
        seen.append(got == data)
    threads = [threading.Thread(target=reader, args=(k,)) for k in ("read", "chunks") * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [True] * 8
    body.close()


@pytest.mark.parametrize("size", [0, 5000, 300_000])
def test_the_message_buffer_is_the_message_bytes(size):
    from mailwarden.model import Body, Message
    msg = Message(body=Body(spool_threshold=100_000))
    msg.add_header("From", b" <a@example.org>")
    msg.add_header("X-Folded", b" one\n\ttwo")
    payload = bytes(range(256)) * (size // 256) + b"end\r\n"
    for start in range(0, len(payload), 65000):
        msg.body.write(payload[start:start + 65000])
    assert bytes(msg.as_buffer()) == msg.as_bytes()
    msg.close()
