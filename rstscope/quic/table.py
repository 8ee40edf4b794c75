"""QUIC connection attempts per 4-tuple, over event time (docs/quic.md). Bytes-free: it reads the
header records the reader (``quic.reader``, at the edge) made, never a datagram's payload.

An attempt is opened by a client Initial that starts a new ClientHello and lives in the 15-minute
window of that Initial (``rstscope.core.table.window_of``). It ends at once by a client
CONNECTION_CLOSE seen in an Initial (``close``), by its ``max_packets``-th client datagram (``cap``) or by a
restart (a new opening Initial on the tuple: ``restart``); otherwise it is judged at the cutoff by the
core's rule (``rstscope.core.table.exclusion``): a timeout, or ``incomplete``.

``step`` is the rule for one datagram (a list of QuicPacketRecords with one timestamp) on one tuple; the
reader runs it too (to know which attempt's keys decrypt the next Initial), so the edge and the table
never disagree. ``QuicTable`` keeps the attempts with the three hooks of nfstream's plugins
(``on_init``, ``on_update``, ``on_expire``).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from rstscope.config import WindowParams
from rstscope.core.table import exclusion, window_of
from rstscope.packet import pack_key
from rstscope.quic.packet import INITIAL, NOT_DECRYPTED, UNKNOWN, Hello, Key, QuicPacketRecord, opens

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
    odcid: bytes  # the tag of the DCID of its first Initial (``packet.dcid_tag``)
    version: int  # the QUIC version of its first Initial
    first_ts: float
    last_ts: float
    odcid_len: int = 0
    packets: list[QuicPacketRecord] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)  # its datagrams' messages (a worker acks them when it ends)
    datagrams: int = 0
    hellos: int = 0  # Initials of it that carry a ClientHello's start (CRYPTO at offset 0)
    close: bool = False
    sealed: str = ""  # "" while it takes datagrams; else why it ended
    tag: str = ""  # the restart's kind, when it ended by a restart
    sni: str | None = None  # after the SNI policy (the reader applied it)
    alpn: tuple[str, ...] = ()
    meta: Any = None  # what a worker attaches (the edge's geolocation of the client)


class AttemptState(Protocol):
    """What ``step`` reads of a tuple's attempt (the table's Attempt, the reader's key state)."""

    @property
    def window_start(self) -> int: ...
    @property
    def version(self) -> int: ...
    @property
    def sealed(self) -> str: ...


def step(st: AttemptState | None, recs: Sequence[QuicPacketRecord], window: int) -> Outcome:
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
    after_close, beyond_max_packets, late; attempts incomplete.
    """

    def __init__(self, params: WindowParams, auto_advance: bool = True) -> None:
        self.params = params
        # True: event time is the latest datagram's (one input); False: the caller moves it (a worker)
        self.auto_advance = auto_advance
        self.size = params.size_s
        self.open: dict[bytes, Attempt] = {}
        self.sealed: dict[bytes, Attempt] = {}
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")
        self.current_window = -1
        self.last: Attempt | None = None  # the attempt the last datagram joined or opened
        self.fresh = False  # ... and its tuple had no attempt (open or sealed) in its window before it

    # -- the three hooks -------------------------------------------------------------------------

    def on_init(self, pkey: bytes, recs: Sequence[QuicPacketRecord], window: int) -> Attempt:
        """A new attempt from its opening datagram."""
        o = next(r for r in recs if opens(r))
        att = Attempt(o.key, window, o.dcid, o.version or 0, recs[0].ts, recs[0].ts, o.dcid_len)
        self.open[pkey] = att
        self.sealed.pop(pkey, None)
        return att

    def on_update(self, att: Attempt, recs: Sequence[QuicPacketRecord], hello: Hello | None, ref: int) -> None:
        """Take one datagram's packets: header records only; a close ends the attempt at once."""
        att.packets.extend(recs)
        att.refs.append(ref)
        if hello is not None:
            att.sni, att.alpn = hello.sni, hello.alpn
        att.datagrams += 1
        ts = recs[0].ts
        att.last_ts = max(att.last_ts, ts)
        att.first_ts = min(att.first_ts, ts)
        for r in recs:
            if r.ptype == INITIAL and r.decrypted != NOT_DECRYPTED and r.hello:
                att.hellos += 1
            if r.close:
                att.close = True

    def on_expire(self, att: Attempt, end: str, cutoff: float = float("inf")) -> QuicFinished:
        """Finish an attempt: ended ones are always classified, the others judged at ``cutoff``."""
        pkey = pack_key(*att.key)
        if self.open.get(pkey) is att:
            del self.open[pkey]
        att.sealed = end
        decided = end != END_CUTOFF
        excluded = exclusion(1, decided, att.last_ts, cutoff, self.params)
        if excluded:
            self.counters[excluded] += 1
        if end in (END_CLOSE, END_CAP):
            self.sealed[pkey] = att
        return QuicFinished(att, end, cutoff, excluded)

    # -- input -----------------------------------------------------------------------------------

    def add(self, recs: Sequence[QuicPacketRecord], hello: Hello | None = None, ref: int = 0) -> list[QuicFinished]:
        """One client datagram's packet records (as the reader made them) and its ClientHello's facts,
        if it completed one. Returns what it finished; ``last`` is the attempt that took it (None: it
        was counted). ``ref`` is kept with the attempt (``Attempt.refs``)."""
        out = self.advance(recs[0].ts) if self.auto_advance else []
        self.last = None
        ts = recs[0].ts
        window = int(window_of(ts, self.size))
        if window < self.current_window:
            self.counters[LATE] += 1
            return out
        pkey = recs[0].packed_key
        att = self.open.get(pkey)
        st = att if att is not None else self.sealed.get(pkey)
        self.fresh = st is None or st.window_start != window
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
            att = self.on_init(pkey, recs, window)
        assert att is not None
        self.on_update(att, recs, hello, ref)
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
        if self.current_window >= 0 and watermark < self.current_window + self.size:
            return []  # the same window (a worker advances per packet: the common case)
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
