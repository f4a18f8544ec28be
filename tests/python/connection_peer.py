"""CPython's side of the connection interop tests.

    connection_peer.py client ADDRESS N [--modern]   echo N messages through a server
    connection_peer.py server ADDRESS [--modern]     serve one client, echoing every message

The authkey is the UTF-8 of MP_AUTHKEY (unset: none). ADDRESS is a unix path or host:port.
Messages cycle through 0, 1, 2, 4, ... 4 MiB bytes, as examples/echo_client.rs sends them.
Exit status 3 means authentication failed. With --modern the handshake is the CPython 3.12+
form ({sha256} challenge and answer), done by hand over an unauthenticated connection, since
the python3 here may be older; without it, the installed multiprocessing does its own.
"""

import hmac
import os
import sys
from multiprocessing.connection import AuthenticationError, Client, Listener

CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"


def parse(address):
    host, sep, port = address.rpartition(":")
    if sep and "/" not in address and port.isdigit():
        return (host, int(port))
    return address


def show(address):
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else address


def size(i):
    k = i % 24
    return 0 if k == 0 else 1 << (k - 1)


def pattern(i):
    return bytes((i * 31 + j * 7) & 0xFF for j in range(size(i)))


def modern_deliver(conn, key):
    message = b"{sha256}" + os.urandom(40)
    conn.send_bytes(CHALLENGE + message)
    answer = conn.recv_bytes(256)
    expected = b"{sha256}" + hmac.new(key, message, "sha256").digest()
    if not hmac.compare_digest(answer, expected):
        conn.send_bytes(FAILURE)
        raise AuthenticationError("digest received was wrong")
    conn.send_bytes(WELCOME)


def modern_answer(conn, key):
    message = conn.recv_bytes(256)
    if not message.startswith(CHALLENGE + b"{sha256}"):
        raise AuthenticationError(f"expected a modern challenge, got {message[:24]!r}")
    message = message[len(CHALLENGE):]
    conn.send_bytes(b"{sha256}" + hmac.new(key, message, "sha256").digest())
    if conn.recv_bytes(256) != WELCOME:
        raise AuthenticationError("digest sent was rejected")


def client(address, n, key, modern):
    if modern:
        conn = Client(address)
        modern_answer(conn, key)
        modern_deliver(conn, key)
    else:
        conn = Client(address, authkey=key)
    for i in range(n):
        message = pattern(i)
        conn.send_bytes(message)
        echo = conn.recv_bytes()
        if echo != message:
            sys.exit(f"echo {i} differs: sent {len(message)} bytes, got {len(echo)}")
    conn.close()
    print(f"ok {n}")


def server(address, key, modern):
    listener = Listener(address, authkey=None if modern else key)
    print(f"listening on {show(listener.address)}", flush=True)
    conn = listener.accept()
    if modern:
        modern_deliver(conn, key)
        modern_answer(conn, key)
    count = 0
    while True:
        try:
            message = conn.recv_bytes()
        except EOFError:
            break
        conn.send_bytes(message)
        count += 1
    print(f"served {count}", flush=True)
    listener.close()


def main():
    args = [a for a in sys.argv[1:] if a != "--modern"]
    modern = "--modern" in sys.argv
    key = os.environ.get("MP_AUTHKEY")
    key = key.encode() if key is not None else None
    if modern and key is None:
        sys.exit("--modern needs MP_AUTHKEY")
    try:
        if args[0] == "client":
            client(parse(args[1]), int(args[2]), key, modern)
        elif args[0] == "server":
            server(parse(args[1]), key, modern)
        else:
            sys.exit(__doc__)
    except AuthenticationError as err:
        print(f"authentication failed: {err}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
