"""What anyone on the path can read of a client Initial: QUIC Initial keys derive from the Destination
Connection ID alone (RFC 9001 section 5.2; v2 salt and labels: RFC 9369 section 3.3), so a censor can
remove header protection, decrypt the packet and read the TLS ClientHello it carries. rstscope's edge
does the same, to know what the censor knew.

What leaves these functions: the packet number, the CRYPTO stream fragments (only until they are
reassembled and parsed: callers must drop them after ``parse_client_hello``), whether the client sent a
CONNECTION_CLOSE and its error code (never the reason phrase), and of the ClientHello only the legacy
version, the server name (SNI), the ALPN list, the supported_versions list and whether the QUIC transport
parameters extension is present. No other payload byte is returned. Bad input raises ``QuicDecodeError``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rstscope.decode.quic import (
    QUIC_VERSION_1,
    QUIC_VERSION_2,
    SAMPLE_LEN,
    SAMPLE_OFFSET,
    QuicDecodeError,
    QuicPacketHeader,
    QuicPacketType,
    read_varint,
)

# RFC 9001 5.2 and RFC 9369 3.3.1: initial_salt; RFC 9369 3.3.2: the v2 HKDF labels.
INITIAL_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
INITIAL_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
CLIENT_IN = b"client in"
# version -> (initial salt, key label, iv label, hp label)
INITIAL_PARAMS: dict[int, tuple[bytes, bytes, bytes, bytes]] = {
    QUIC_VERSION_1: (INITIAL_SALT_V1, b"quic key", b"quic iv", b"quic hp"),
    QUIC_VERSION_2: (INITIAL_SALT_V2, b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
}
AEAD_KEY_LEN = 16  # AEAD_AES_128_GCM (RFC 9001 5.3)
AEAD_IV_LEN = 12
AEAD_TAG_LEN = 16
HASH_LEN = 32  # SHA-256

# Frames allowed in Initial packets (RFC 9000 section 12.4, table 3), types of section 19.
PADDING = 0x00
PING = 0x01
ACK = 0x02
ACK_ECN = 0x03
CRYPTO = 0x06
CONNECTION_CLOSE = 0x1C  # transport error
CONNECTION_CLOSE_APP = 0x1D  # application error (not allowed in Initial; read all the same)
MAX_STREAM_OFFSET = (1 << 62) - 1  # RFC 9000 19.6

# TLS (RFC 8446 4, RFC 6066 3, RFC 7301 3.1, RFC 9001 8.2)
HANDSHAKE_CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_QUIC_TRANSPORT_PARAMETERS = 0x39
SNI_HOST_NAME = 0
CRYPTO_BOUND = 64 * 1024  # the CryptoReassembler's default bound on held bytes


class InitialKeys(NamedTuple):
    """The client's Initial packet protection keys (RFC 9001 5.1)."""

    version: int
    key: bytes  # AEAD key
    iv: bytes  # AEAD IV
    hp: bytes  # header protection key


class CryptoFragment(NamedTuple):
    offset: int
    data: bytes


class ConnectionClose(NamedTuple):
    error_code: int
    frame_type: int | None  # the frame that triggered a transport close (0x1c); None for 0x1d
    application: bool  # 0x1d: an application error code
    reason_len: int  # the reason phrase's length (the phrase itself is never kept)


class InitialPayload(NamedTuple):
    packet_number: int
    crypto: tuple[CryptoFragment, ...]
    connection_close: ConnectionClose | None
    ack: bool  # an ACK frame was present
    ping: bool
    padding: int  # PADDING bytes


class ClientHello(NamedTuple):
    legacy_version: int
    server_name: str | None  # the host_name of the server_name extension (ASCII, RFC 6066)
    alpn: tuple[str, ...]  # ALPN protocol names (bytes that are not ASCII are shown as \\xNN)
    supported_versions: tuple[int, ...]
    quic_transport_parameters: bool  # extension 0x39 present


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract with SHA-256 (RFC 5869 2.2)."""
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with SHA-256 (RFC 8446 7.1): info is HkdfLabel {length, "tls13 " + label, context}."""
    full = b"tls13 " + label
    info = struct.pack(">HB", length, len(full)) + full + bytes((len(context),)) + context
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = hmac.new(secret, block + info + bytes((i,)), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def initial_keys(dcid: bytes, version: int) -> InitialKeys:
    """The client Initial keys for a connection whose client chose ``dcid`` (RFC 9001 5.2)."""
    params = INITIAL_PARAMS.get(version)
    if params is None:
        raise QuicDecodeError("unsupported_version", f"{version:#010x}")
    salt, key_label, iv_label, hp_label = params
    secret = hkdf_expand_label(hkdf_extract(salt, dcid), CLIENT_IN, b"", HASH_LEN)
    return InitialKeys(version, hkdf_expand_label(secret, key_label, b"", AEAD_KEY_LEN),
                       hkdf_expand_label(secret, iv_label, b"", AEAD_IV_LEN),
                       hkdf_expand_label(secret, hp_label, b"", AEAD_KEY_LEN))


def decode_packet_number(truncated: int, pn_nbits: int, largest_pn: int) -> int:
    """RFC 9000 appendix A.3."""
    expected = largest_pn + 1
    win = 1 << pn_nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def _header_mask(hp: bytes, sample: bytes) -> bytes:
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    return enc.update(sample) + enc.finalize()


def decrypt_initial(datagram: bytes, header: QuicPacketHeader, keys: InitialKeys,
                    largest_pn: int = -1) -> InitialPayload:
    """Remove header protection (RFC 9001 5.4), decrypt (5.3) and read the frames of one Initial packet.

    ``header`` comes from ``parse_datagram(datagram)``. ``keys`` are those of the connection's first
    client Initial (``initial_keys(its DCID, version)``): later client Initials keep them even when their
    DCID has changed to the server's choice; only a Retry changes them, to the keys of the DCID of the
    client's first Initial after it (RFC 9001 5.2). ``largest_pn`` is the largest packet number seen
    so far in the client's Initial space (-1: none), for packet number recovery (RFC 9000 A.3).
    """
    if header.packet_type is not QuicPacketType.INITIAL or header.pn_offset is None:
        raise QuicDecodeError("not_initial")
    if header.version != keys.version:
        raise QuicDecodeError("version_mismatch")
    start, pn_off, end = header.offset, header.pn_offset, header.offset + header.size
    if end > len(datagram) or pn_off + SAMPLE_OFFSET + SAMPLE_LEN > end:
        raise QuicDecodeError("packet_too_short")
    mask = _header_mask(keys.hp, datagram[pn_off + SAMPLE_OFFSET:pn_off + SAMPLE_OFFSET + SAMPLE_LEN])
    first = datagram[start] ^ (mask[0] & 0x0F)  # long header: the low 4 bits are protected
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(datagram[pn_off:pn_off + pn_len], mask[1:1 + pn_len], strict=True))
    truncated = int.from_bytes(pn_bytes, "big")
    pn = decode_packet_number(truncated, pn_len * 8, largest_pn)
    aad = bytes((first,)) + datagram[start + 1:pn_off] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(AEAD_IV_LEN, "big")
    try:
        plain = AESGCM(keys.key).decrypt(nonce, datagram[pn_off + pn_len:end], aad)
    except InvalidTag:
        raise QuicDecodeError("decryption_failed") from None
    if first & 0x0C:  # RFC 9000 17.2: reserved bits must be 0 once protection is removed
        raise QuicDecodeError("reserved_bits_set")
    return _initial_frames(pn, plain)


def _initial_frames(pn: int, plain: bytes) -> InitialPayload:
    n = len(plain)
    if n == 0:
        raise QuicDecodeError("no_frames")  # RFC 9000 12.4
    crypto: list[CryptoFragment] = []
    close: ConnectionClose | None = None
    ack = ping = False
    padding = 0
    p = 0
    while p < n:
        ftype, p = read_varint(plain, p, n)
        if ftype == PADDING:
            q = p
            while q < n and plain[q] == 0:
                q += 1
            padding += 1 + q - p
            p = q
        elif ftype == PING:
            ping = True
        elif ftype in (ACK, ACK_ECN):
            ack = True
            _largest, p = read_varint(plain, p, n)
            _delay, p = read_varint(plain, p, n)
            count, p = read_varint(plain, p, n)
            _first_range, p = read_varint(plain, p, n)
            for _ in range(count):  # each range is at least 2 bytes: bounded by the payload
                _gap, p = read_varint(plain, p, n)
                _len, p = read_varint(plain, p, n)
            if ftype == ACK_ECN:
                for _ in range(3):
                    _count, p = read_varint(plain, p, n)
        elif ftype == CRYPTO:
            off, p = read_varint(plain, p, n)
            length, p = read_varint(plain, p, n)
            if n - p < length:
                raise QuicDecodeError("truncated_frame")
            if off + length > MAX_STREAM_OFFSET:
                raise QuicDecodeError("crypto_offset_too_large")
            crypto.append(CryptoFragment(off, plain[p:p + length]))
            p += length
        elif ftype in (CONNECTION_CLOSE, CONNECTION_CLOSE_APP):
            code, p = read_varint(plain, p, n)
            trigger: int | None = None
            if ftype == CONNECTION_CLOSE:
                trigger, p = read_varint(plain, p, n)
            reason_len, p = read_varint(plain, p, n)
            if n - p < reason_len:
                raise QuicDecodeError("truncated_frame")
            p += reason_len
            close = ConnectionClose(code, trigger, ftype == CONNECTION_CLOSE_APP, reason_len)
        else:
            raise QuicDecodeError("frame_not_allowed_in_initial", f"{ftype:#x}")
    return InitialPayload(pn, tuple(crypto), close, ack, ping, padding)


class CryptoReassembler:
    """The client's Initial CRYPTO stream, from fragments in any order (duplicates allowed), up to
    ``max_bytes``; overlapping fragments must carry the same bytes."""

    def __init__(self, max_bytes: int = CRYPTO_BOUND) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._ranges: list[tuple[int, int]] = []  # sorted, disjoint, not adjacent: [start, end)

    @property
    def contiguous(self) -> int:
        """Bytes held contiguously from offset 0."""
        return self._ranges[0][1] if self._ranges and self._ranges[0][0] == 0 else 0

    def add(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset < 0 or end > self.max_bytes:
            raise QuicDecodeError("crypto_beyond_bound")
        if not data:
            return
        if len(self._buf) < end:
            self._buf.extend(bytes(end - len(self._buf)))
        merged_start, merged_end = offset, end
        keep: list[tuple[int, int]] = []
        for s, e in self._ranges:
            if e < offset or s > end:
                keep.append((s, e))
                continue
            lo, hi = max(s, offset), min(e, end)
            if lo < hi and self._buf[lo:hi] != data[lo - offset:hi - offset]:
                raise QuicDecodeError("crypto_overlap_mismatch")
            merged_start, merged_end = min(merged_start, s), max(merged_end, e)
        self._buf[offset:end] = data
        keep.append((merged_start, merged_end))
        keep.sort()
        self._ranges = keep

    def add_payload(self, payload: InitialPayload) -> None:
        for frag in payload.crypto:
            self.add(frag.offset, frag.data)

    def client_hello(self) -> bytes | None:
        """The whole first handshake message (type, 24-bit length, body) once it is contiguous from
        offset 0, else None; ``QuicDecodeError`` if it is not a ClientHello or cannot fit the bound."""
        have = self.contiguous
        if have < 4:
            return None
        if self._buf[0] != HANDSHAKE_CLIENT_HELLO:
            raise QuicDecodeError("not_client_hello")
        total = 4 + int.from_bytes(self._buf[1:4], "big")
        if total > self.max_bytes:
            raise QuicDecodeError("client_hello_beyond_bound")
        return bytes(self._buf[:total]) if have >= total else None


class _Reader:
    """Bounded reads over a TLS structure; running past its end is a ``QuicDecodeError``."""

    __slots__ = ("data", "end", "p")

    def __init__(self, data: bytes, p: int, end: int) -> None:
        self.data, self.p, self.end = data, p, end

    def take(self, n: int) -> bytes:
        if self.end - self.p < n:
            raise QuicDecodeError("truncated_client_hello")
        out = self.data[self.p:self.p + n]
        self.p += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int, lo: int = 0) -> _Reader:
        n = self.uint(len_bytes)
        if n < lo:
            raise QuicDecodeError("bad_client_hello_vector")
        start = self.p
        self.take(n)
        return _Reader(self.data, start, start + n)

    def done(self) -> bool:
        return self.p >= self.end


def parse_client_hello(data: bytes) -> ClientHello:
    """A TLS 1.3 ClientHello handshake message (RFC 8446 4.1.2), exactly ``data``: header and body."""
    top = _Reader(data, 0, len(data))
    if top.uint(1) != HANDSHAKE_CLIENT_HELLO:
        raise QuicDecodeError("not_client_hello")
    body = top.vector(3)
    if not top.done():
        raise QuicDecodeError("trailing_bytes")
    legacy_version = body.uint(2)
    body.take(32)  # random
    session_id_len = body.uint(1)  # legacy_session_id<0..32>
    if session_id_len > 32:
        raise QuicDecodeError("bad_client_hello_vector")
    body.take(session_id_len)
    suites = body.vector(2, 2)
    if (suites.end - suites.p) % 2:
        raise QuicDecodeError("bad_client_hello_vector")
    body.vector(1, 1)  # legacy_compression_methods
    exts = body.vector(2, 8)  # extensions<8..2^16-1>: TLS 1.3 always has some
    if not body.done():
        raise QuicDecodeError("trailing_bytes")
    seen: set[int] = set()
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    while not exts.done():
        etype = exts.uint(2)
        ext = exts.vector(2)
        if etype in seen:
            raise QuicDecodeError("duplicate_extension")  # RFC 8446 4.2
        seen.add(etype)
        if etype == EXT_SERVER_NAME:
            server_name = _server_name(ext)
        elif etype == EXT_ALPN:
            alpn = _alpn(ext)
        elif etype == EXT_SUPPORTED_VERSIONS:
            lst = ext.vector(1, 2)
            if (lst.end - lst.p) % 2 or not ext.done():
                raise QuicDecodeError("bad_supported_versions")
            versions = tuple(lst.uint(2) for _ in range((lst.end - lst.p) // 2))
    return ClientHello(legacy_version, server_name, alpn, versions, EXT_QUIC_TRANSPORT_PARAMETERS in seen)


def _server_name(ext: _Reader) -> str | None:
    names = ext.vector(2, 1)
    if not ext.done():
        raise QuicDecodeError("bad_server_name")
    host: str | None = None
    while not names.done():
        name_type = names.uint(1)
        name = names.vector(2, 1)
        if name_type == SNI_HOST_NAME:
            if host is not None:
                raise QuicDecodeError("bad_server_name")  # RFC 6066 3: one name per type
            raw = name.take(name.end - name.p)
            try:
                host = raw.decode("ascii")
            except UnicodeDecodeError:
                raise QuicDecodeError("bad_server_name") from None
    return host


def _alpn(ext: _Reader) -> tuple[str, ...]:
    lst = ext.vector(2, 2)
    if not ext.done():
        raise QuicDecodeError("bad_alpn")
    out = []
    while not lst.done():
        proto = lst.vector(1, 1)
        out.append(proto.take(proto.end - proto.p).decode("ascii", "backslashreplace"))
    return tuple(out)


__all__ = [
    "ClientHello",
    "ConnectionClose",
    "CryptoFragment",
    "CryptoReassembler",
    "InitialKeys",
    "InitialPayload",
    "decode_packet_number",
    "decrypt_initial",
    "hkdf_expand_label",
    "hkdf_extract",
    "initial_keys",
    "parse_client_hello",
]
