"""QUIC connection attempts per 4-tuple, over event time (docs/quic.md).

An attempt is opened by a client Initial that starts a new ClientHello and lives in the 15-minute
window of that Initial (``rstscope.core.table.window_of``). It ends at once by a client
CONNECTION_CLOSE seen in an Initial (``close``), by its ``max_packets``-th client datagram (``cap``) or by a
restart (a new opening Initial on the tuple: ``restart``); otherwise it is judged at the cutoff by the
core's rule (``rstscope.core.table.exclusion``): a timeout, or ``incomplete``.

``step`` is the rule for one datagram (a list of QuicPacketRecords with one timestamp) on one tuple;
``QuicTable`` keeps the attempts with the three hooks of nfstream's plugins (``on_init``, ``on_update``,
``on_expire``) and does the one thing that needs bytes: decrypting client Initials (``add_datagram``).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from rstscope.config import WindowParams
from rstscope.core.table import exclusion, window_of
from rstscope.decode.quic import (
    SUPPORTED_VERSIONS,
    QuicDecodeError,
    QuicPacketHeader,
    QuicPacketType,
    parse_datagram,
)
from rstscope.decode.quic_initial import (
    CryptoReassembler,
    InitialKeys,
    InitialPayload,
    decrypt_initial,
    initial_keys,
    parse_client_hello,
)
from rstscope.packet import pack_key
from rstscope.quic.packet import (
    BY_ATTEMPT,
    BY_OWN_DCID,
    INITIAL,
    NOT_DECRYPTED,
    UNKNOWN,
    Key,
    QuicPacketRecord,
    opens,
)
from rstscope.quic.udp import UdpDatagram

# Why an attempt ended (the record's ``end``).
END_CLOSE = "close"  # a client CONNECTION_CLOSE in a decrypted Initial
END_CAP = "cap"  # its max_packets-th client datagram
END_RESTART = "restart"  # a new opening Initial on its tuple
END_CUTOFF = "cutoff"  # not ended: judged at its window's end or the end of the input

# Restart tags: what the new opening Initial says about why the client started again.
TAG_VN_RESTART = "vn_restart"  # another QUIC version: after a Version Negotiation
TAG_RETRY_RESTART = "retry_restart"  # a Token: after a Retry
TAG_RESTART = "restart"  # a new ClientHello otherwise

# Datagram counters (a client datagram that no attempt took).
NO_INITIAL = "no_initial"  # no attempt of its tuple in its window, and it opens none
AFTER_CLOSE = "after_close"  # its attempt was closed by the client already
BEYOND_MAX = "beyond_max_packets"  # its attempt had its max_packets already
LATE = "late"  # its window was closed already
_SEALED_COUNTER = {END_CLOSE: AFTER_CLOSE, END_CAP: BEYOND_MAX}


class Step(enum.IntEnum):
    OPEN = 0  # it opens an attempt (nothing open on the tuple in its window)
    JOIN = 1  # it joins the tuple's attempt
    FINISH_OPEN = 2  # the open attempt ends (a restart, ``tag``), the datagram opens the next
    DROP = 3  # it changes nothing (``counter``)


class Outcome(NamedTuple):
    step: Step
    tag: str = ""  # FINISH_OPEN: the restart's kind
    counter: str = ""  # DROP: what the datagram is counted as


@dataclass(slots=True)
class Attempt:
    """One QUIC connection attempt: its client packets' header records and what its ClientHello said."""

    key: Key
    window_start: int
    odcid: bytes  # the DCID of its first Initial (its Initial keys derive from it)
    version: int  # the QUIC version of its first Initial
    first_ts: float
    last_ts: float
    keys: InitialKeys | None = None  # None: a version rstscope cannot decrypt
    packets: list[QuicPacketRecord] = field(default_factory=list)
    datagrams: int = 0
    hellos: int = 0  # Initials of it that carry a ClientHello's start (CRYPTO at offset 0)
    close: bool = False
    sealed: str = ""  # "" while it takes datagrams; else why it ended
    tag: str = ""  # the restart's kind, when it ended by a restart
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    largest_pn: int = -1  # the client's Initial packet numbers, for packet number recovery
    short_dcid_len: int = 0  # the DCID length of its Handshake packets: its 1-RTT packets' too
    reasm: CryptoReassembler | None = None  # dropped as soon as the ClientHello is parsed


def step(st: Attempt | None, recs: Sequence[QuicPacketRecord], window: int) -> Outcome:
    """The rule for one client datagram (its packets ``recs``) on a tuple whose attempt is ``st``.

    - No attempt in its window: a datagram with an opening Initial opens one, others are ``no_initial``.
    - An attempt that ended (close or cap): an opening Initial opens the next; others are counted.
    - An open attempt: an opening Initial ends it (a restart: ``vn_restart`` for another version,
      ``retry_restart`` for an Initial with a Token, else ``restart``) and opens the next; others join.

    An Initial that the attempt's own keys decrypt is never an opening one (``packet.opens``): it is the
    same ClientHello again, or a later Initial of the attempt under the server's connection ID.
    """
    o = next((r for r in recs if opens(r)), None)
    if st is None or st.window_start != window:
        return Outcome(Step.OPEN) if o is not None else Outcome(Step.DROP, counter=NO_INITIAL)
    if o is not None and o.ptype == UNKNOWN and o.version == st.version:
        o = None  # the same undecryptable version again: a repeat of the attempt's first Initial
    if st.sealed:
        return Outcome(Step.OPEN) if o is not None else Outcome(Step.DROP, counter=_SEALED_COUNTER[st.sealed])
    if o is None:
        return Outcome(Step.JOIN)
    tag = TAG_VN_RESTART if o.version != st.version else TAG_RETRY_RESTART if o.token else TAG_RESTART
    return Outcome(Step.FINISH_OPEN, tag=tag)


@dataclass(frozen=True, slots=True)
class QuicFinished:
    """A finished attempt, with why it ended, its cutoff (END_CUTOFF) and its exclusion, if any."""

    attempt: Attempt
    end: str
    cutoff: float
    excluded: str | None


class QuicTable:
    """Attempts keyed by 4-tuple, decided by ``step`` and expired as event time advances.

    ``open`` holds attempts that still take datagrams, ``sealed`` the attempts that ended (close, cap)
    until their window closes, so that their later datagrams are counted and their repeated Initials
    (decrypted with their keys) are not taken for new attempts. Counters: datagrams no_initial,
    after_close, beyond_max_packets, late; attempts incomplete; notes initial_undecryptable,
    client_hello_error, quic_<decode reason>.
    """

    def __init__(self, params: WindowParams) -> None:
        self.params = params
        self.size = params.size_s
        self.open: dict[bytes, Attempt] = {}
        self.sealed: dict[bytes, Attempt] = {}
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")
        self.current_window = -1
        self.last: Attempt | None = None  # the attempt the last datagram joined or opened

    # -- the three hooks -------------------------------------------------------------------------

    def on_init(self, pkey: bytes, recs: Sequence[QuicPacketRecord], window: int,
                keys: InitialKeys | None) -> Attempt:
        """A new attempt from its opening datagram (``keys``: those of its opening Initial, if any)."""
        o = next(r for r in recs if opens(r))
        att = Attempt(o.key, window, o.dcid, o.version or 0, recs[0].ts, recs[0].ts, keys,
                      reasm=CryptoReassembler() if keys is not None else None)
        self.open[pkey] = att
        self.sealed.pop(pkey, None)
        return att

    def on_update(self, att: Attempt, recs: Sequence[QuicPacketRecord]) -> None:
        """Take one datagram's packets: header records only; a close ends the attempt at once."""
        att.packets.extend(recs)
        att.datagrams += 1
        ts = recs[0].ts
        att.last_ts = max(att.last_ts, ts)
        att.first_ts = min(att.first_ts, ts)
        for r in recs:
            if r.ptype == INITIAL and r.decrypted != NOT_DECRYPTED and r.hello:
                att.hellos += 1
            if r.close:
                att.close = True
            if r.ptype == QuicPacketType.HANDSHAKE.value:
                att.short_dcid_len = len(r.dcid)

    def on_expire(self, att: Attempt, end: str, cutoff: float = float("inf")) -> QuicFinished:
        """Finish an attempt: ended ones are always classified, the others judged at ``cutoff``."""
        pkey = pack_key(*att.key)
        if self.open.get(pkey) is att:
            del self.open[pkey]
        att.sealed = end
        att.reasm = None
        decided = end != END_CUTOFF
        excluded = exclusion(1, decided, att.last_ts, cutoff, self.params)
        if excluded:
            self.counters[excluded] += 1
        if end in (END_CLOSE, END_CAP):
            self.sealed[pkey] = att
        return QuicFinished(att, end, cutoff, excluded)

    # -- input -----------------------------------------------------------------------------------

    def add(self, recs: Sequence[QuicPacketRecord], keys: InitialKeys | None = None) -> list[QuicFinished]:
        """One client datagram's packet records (already decrypted where possible). Returns what it
        finished; ``last`` is the attempt that took it (None: it was counted)."""
        out = self.advance(recs[0].ts)
        self.last = None
        ts = recs[0].ts
        window = int(window_of(ts, self.size))
        if window < self.current_window:
            self.counters[LATE] += 1
            return out
        pkey = recs[0].packed_key
        att = self.open.get(pkey)
        st = att if att is not None else self.sealed.get(pkey)
        o = step(st, recs, window)
        if o.step is Step.DROP:
            self.counters[o.counter] += 1
            return out
        if o.step is Step.FINISH_OPEN:
            assert att is not None
            att.tag = o.tag
            out.append(self.on_expire(att, END_RESTART))
        elif o.step is Step.OPEN and att is not None:  # an attempt of an older window: its window closed
            out.append(self.on_expire(att, END_CUTOFF, att.window_start + self.size))
        if o.step is not Step.JOIN:
            att = self.on_init(pkey, recs, window, keys)
        assert att is not None
        self.on_update(att, recs)
        self.last = att
        if att.close:
            out.append(self.on_expire(att, END_CLOSE))
        elif att.datagrams >= self.params.max_packets:
            out.append(self.on_expire(att, END_CAP))
        return out

    def advance(self, watermark: float) -> list[QuicFinished]:
        """Move event time forward: decide every open attempt of a window that closed (cutoff: its end)."""
        if watermark <= self.watermark:
            return []
        self.watermark = watermark
        current = int(window_of(watermark, self.size))
        if current <= self.current_window:
            return []
        self.current_window = current
        return self._close_windows(current, float("inf"))

    def _close_windows(self, before: int, end_ts: float) -> list[QuicFinished]:
        out = [self.on_expire(a, END_CUTOFF, min(a.window_start + self.size, end_ts))
               for a in [a for a in self.open.values() if a.window_start < before]]
        for k in [k for k, a in self.sealed.items() if a.window_start < before]:
            del self.sealed[k]
        return out

    def close(self, end_ts: float) -> list[QuicFinished]:
        """End of a finite input whose last frame (of any kind) was at ``end_ts``: decide everything."""
        out = self.advance(end_ts)
        out.extend(self._close_windows(2**62, end_ts))
        self.sealed.clear()
        return out

    # -- bytes: the one place a datagram's payload is read -----------------------------------------

    def add_datagram(self, dg: UdpDatagram) -> list[QuicFinished]:
        """Parse one client datagram, decrypt its Initials (the attempt's keys first, then the packet's
        own DCID's), feed the attempt's ClientHello reassembly, and ``add`` its records. The payload and
        the CRYPTO bytes are dropped before this returns; only SNI and ALPN are kept."""
        self.last = None
        pkey = pack_key(dg.src, dg.sport, dg.dst, dg.dport)
        st = self.open.get(pkey) or self.sealed.get(pkey)
        try:
            headers = parse_datagram(dg.payload, st.short_dcid_len if st is not None else 0)
        except QuicDecodeError as e:
            self.counters["quic_" + e.reason] += 1
            return self.advance(dg.ts)
        recs: list[QuicPacketRecord] = []
        payloads: list[tuple[InitialKeys, InitialPayload] | None] = []
        for h in headers:
            rec, dec = self._record(dg, h, st)
            recs.append(rec)
            payloads.append(dec)
        opener = next((d for r, d in zip(recs, payloads, strict=True) if opens(r)), None)
        keys = opener[0] if opener is not None else None
        out = self.add(recs, keys)
        att = self.last
        if att is not None:
            for dec in payloads:
                if dec is not None and dec[0] is att.keys:
                    self._crypto(att, dec[1])
        return out

    def _record(self, dg: UdpDatagram, h: QuicPacketHeader, st: Attempt | None
                ) -> tuple[QuicPacketRecord, tuple[InitialKeys, InitialPayload] | None]:
        ptype = h.packet_type.value if h.packet_type is not None else UNKNOWN
        rec = QuicPacketRecord(dg.ts, dg.ip_version, dg.src, dg.dst, dg.sport, dg.dport, ptype, h.version,
                               h.dcid, h.size, dg.ttl, dg.ipid, bool(h.token_len))
        if h.packet_type is not QuicPacketType.INITIAL or h.version not in SUPPORTED_VERSIONS:
            return rec, None
        assert h.version is not None
        how, keys, payload = NOT_DECRYPTED, None, None
        if st is not None and st.keys is not None and st.keys.version == h.version:
            try:
                payload = decrypt_initial(dg.payload, h, st.keys, st.largest_pn)
                how, keys = BY_ATTEMPT, st.keys
            except QuicDecodeError:
                pass
        if payload is None:
            try:
                own = initial_keys(h.dcid, h.version)
                payload = decrypt_initial(dg.payload, h, own)
                how, keys = BY_OWN_DCID, own
            except QuicDecodeError:
                self.counters["initial_undecryptable"] += 1
                return rec, None
        assert keys is not None
        rec = rec._replace(decrypted=how, hello=any(f.offset == 0 for f in payload.crypto),
                           close=payload.connection_close is not None)
        return rec, (keys, payload)

    def _crypto(self, att: Attempt, payload: InitialPayload) -> None:
        """Reassemble the attempt's ClientHello; once parsed keep SNI and ALPN and drop the bytes."""
        att.largest_pn = max(att.largest_pn, payload.packet_number)
        if att.reasm is None or not payload.crypto:
            return
        try:
            att.reasm.add_payload(payload)
            hello = att.reasm.client_hello()
            if hello is None:
                return
            ch = parse_client_hello(hello)
            att.sni, att.alpn = ch.server_name, ch.alpn
        except QuicDecodeError:
            self.counters["client_hello_error"] += 1
        att.reasm = None
