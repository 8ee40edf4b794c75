"""One client QUIC packet as the attempt table sees it: header fields, plus three facts learned by
decrypting a client Initial. Never payload bytes: a datagram's bytes are read once, by the reader
(``quic.reader``, at the edge), and dropped; these records are what leaves the edge
(docs/wire-formats.md). Connection IDs leave only as a length, and an opening packet's DCID as a tag
(``dcid_tag``): the attempt table needs the original DCID's identity, never its bytes."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from rstscope.decode.quic import QuicPacketType
from rstscope.packet import pack_key

Key = tuple[bytes, int, bytes, int]  # client ip, client port, server ip, server port

INITIAL = QuicPacketType.INITIAL.value
ZERO_RTT = QuicPacketType.ZERO_RTT.value
HANDSHAKE = QuicPacketType.HANDSHAKE.value
ONE_RTT = QuicPacketType.ONE_RTT.value
UNKNOWN = "unknown"  # a long header of a version rstscope cannot read (its type bits mean nothing to us)

# How a client Initial was decrypted (``QuicPacketRecord.decrypted``).
NOT_DECRYPTED = ""
BY_ATTEMPT = "attempt"  # with the keys of the tuple's attempt (its first Initial's DCID; RFC 9001 5.2)
BY_OWN_DCID = "own"  # only with keys derived from its own DCID: a new attempt's first Initial


class QuicPacketRecord(NamedTuple):
    """One QUIC packet of a client-to-server UDP datagram. Packets of one datagram share ``ts``."""

    ts: float
    ip_version: int
    src: bytes  # client
    dst: bytes  # server
    sport: int
    dport: int
    ptype: str  # initial | zero_rtt | handshake | retry | version_negotiation | one_rtt | unknown
    version: int | None  # None for a short header
    dcid: bytes  # an opening packet's (``opens``) DCID tag (``dcid_tag``, 8 bytes); b"" on other packets
    size: int  # bytes of the packet (an unknown version's: to the end of the datagram)
    ttl: int
    ipid: int | None
    token: bool = False  # an Initial with a non-empty Token: the client's Initial after a Retry (header)
    # what the table learns from decrypting a client Initial
    decrypted: str = NOT_DECRYPTED  # "", "attempt" or "own"
    hello: bool = False  # a CRYPTO frame at offset 0: a ClientHello starts in it
    close: bool = False  # a CONNECTION_CLOSE frame
    dcid_len: int = 0  # the length of its Destination Connection ID (0..20)

    @property
    def key(self) -> Key:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def packed_key(self) -> bytes:
        return pack_key(self.src, self.sport, self.dst, self.dport)


def opens(rec: QuicPacketRecord) -> bool:
    """Can this packet open an attempt? An Initial whose own DCID's keys decrypt it and that starts a
    ClientHello, or a long header of an unknown version (it cannot be read; a client's first packet to
    a server in any version is its Initial, and it is what makes the server send Version Negotiation)."""
    return (rec.ptype == INITIAL and rec.decrypted == BY_OWN_DCID and rec.hello) or rec.ptype == UNKNOWN


DCID_TAG_LEN = 8
_DCID_KEY = b"rstscope-odcid-v1"


def dcid_tag(dcid: bytes) -> bytes:
    """What leaves the edge of an opening packet's DCID: 8 bytes of a keyed BLAKE2b. The worker needs
    only the attempt's identity (its record id); the DCID is the key material of its Initials and a
    linkable flow label, so it stays at the edge. A pseudonym, not a secret: anyone holding the DCID
    (an on-path observer) can compute the same tag, nobody can get the DCID back from it."""
    return hashlib.blake2b(dcid, digest_size=DCID_TAG_LEN, key=_DCID_KEY).digest()


MAX_ALPN = 32  # ALPN protocols a record carries: the first ones the ClientHello offers (a worker refuses more)


class Hello(NamedTuple):
    """What an attempt's ClientHello said, once per attempt: SNI after the SNI policy, ALPN."""

    sni: str | None
    alpn: tuple[str, ...]


class QuicDatagram(NamedTuple):
    """One client datagram as it leaves the edge: its packets' records (one timestamp) and, on the
    datagram that completed its attempt's ClientHello, the hello."""

    recs: tuple[QuicPacketRecord, ...]
    hello: Hello | None = None
