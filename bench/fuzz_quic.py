"""Fuzz the QUIC header parser, the client Initial decryption and frame parser, the CRYPTO reassembler and
the ClientHello parser (rstscope.decode.quic, rstscope.decode.quic_initial).

The first input byte picks what the rest is: 0, a UDP payload (``parse_datagram``, then every Initial
decrypted with the keys of its DCID); 1 and 2, the plaintext of a client Initial (v1, v2), sealed here
with the keys of a fixed DCID so that the fuzzer reaches the frame and ClientHello parsers through the
AEAD; 3, a ClientHello handshake message. Only ``QuicDecodeError`` may escape the decoders; the outcome
is its reason. Seeds: the RFC 9001 / RFC 9369 client Initials and their plaintext, and, when aioquic is
installed, the first flights of real aioquic clients.
``python bench/fuzz_quic.py [--engine atheris|mutate] [--runs N]`` (see fuzz_common.py).
"""

from __future__ import annotations

from fuzz_common import REPO, Target, main

MODE_DATAGRAM, MODE_PLAIN_V1, MODE_PLAIN_V2, MODE_CLIENT_HELLO = range(4)


def make_target() -> Target:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from rstscope.decode.quic import QUIC_VERSION_1, QUIC_VERSION_2, QuicDecodeError, QuicPacketType, parse_datagram
    from rstscope.decode.quic_initial import CryptoReassembler, decrypt_initial, initial_keys, parse_client_hello

    dcid = bytes.fromhex("8394c8f03e515708")
    sealing = {v: initial_keys(dcid, v) for v in (QUIC_VERSION_1, QUIC_VERSION_2)}

    def seal(plain: bytes, version: int) -> bytes:
        """A protected Initial around ``plain`` (packet number 0 on 4 bytes); see RFC 9001 5.3, 5.4."""
        k = sealing[version]
        length = 4 + len(plain) + 16
        first = 0xC3 | (0 if version == QUIC_VERSION_1 else 0x10)
        head = (bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + b"\x00\x00"
                + (0x8000_0000 | length).to_bytes(4, "big"))
        sealed = AESGCM(k.key).encrypt(k.iv, plain, head + bytes(4))
        enc = Cipher(algorithms.AES(k.hp), modes.ECB()).encryptor()
        mask = enc.update(sealed[:16]) + enc.finalize()
        return bytes((head[0] ^ (mask[0] & 0x0F),)) + head[1:] + mask[1:5] + sealed

    def walk(datagram: bytes) -> str:
        headers = parse_datagram(datagram, short_dcid_len=8)
        end = 0
        for h in headers:  # the layout is consistent: in order, inside the datagram
            assert h.offset == end and h.size > 0 and h.offset + h.size <= len(datagram), h
            assert h.pn_offset is None or h.offset < h.pn_offset < h.offset + h.size, h
            end = h.offset + h.size
        r = CryptoReassembler()
        for h in headers:
            if h.packet_type is QuicPacketType.INITIAL and h.version is not None:
                p = decrypt_initial(datagram, h, initial_keys(h.dcid, h.version))
                r.add_payload(p)
        hello = r.client_hello()
        if hello is None:
            return "headers:" + "+".join(str(h.packet_type) for h in headers)
        ch = parse_client_hello(hello)
        return "client_hello" + ("_sni" if ch.server_name else "")

    def target(data: bytes) -> str:
        if not data:
            return "empty"
        mode, rest = data[0] % 4, data[1:]
        try:
            if mode == MODE_DATAGRAM:
                return walk(rest)
            if mode in (MODE_PLAIN_V1, MODE_PLAIN_V2):
                return walk(seal(rest, QUIC_VERSION_1 if mode == MODE_PLAIN_V1 else QUIC_VERSION_2))
            parse_client_hello(rest)
            return "client_hello"
        except QuicDecodeError as e:
            return e.reason

    return target


def seeds() -> list[bytes]:
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from test_quic_decode import RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL, RFC_CLIENT_HELLO, RFC_CRYPTO_FRAME

    out = [bytes((MODE_DATAGRAM,)) + RFC9001_CLIENT_INITIAL, bytes((MODE_DATAGRAM,)) + RFC9369_CLIENT_INITIAL,
           bytes((MODE_PLAIN_V1,)) + RFC_CRYPTO_FRAME + bytes(64),
           bytes((MODE_PLAIN_V2,)) + b"\x01\x02\x05\x00\x01\x00" + RFC_CRYPTO_FRAME + b"\x1c\x0a\x06\x02ab",
           bytes((MODE_CLIENT_HELLO,)) + RFC_CLIENT_HELLO]
    try:
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
    except ImportError:
        return out
    for kw in ({}, {"quantum_readiness_test": True}, {"original_version": 0x6B3343CF, "token": b"t" * 20}):
        conn = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                                              server_name="blocked.example", **kw))
        conn.connect(("192.0.2.1", 443), now=0.0)
        out += [bytes((MODE_DATAGRAM,)) + d for d, _ in conn.datagrams_to_send(now=0.0)]
    return out


if __name__ == "__main__":
    raise SystemExit(main("quic", make_target, seeds))
