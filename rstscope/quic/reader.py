"""Client datagram bytes -> QUIC header records: the one place a QUIC payload is read (at the edge).

Decrypting a client Initial needs per-tuple state: the keys of the tuple's attempt (from its first
Initial's DCID, RFC 9001 5.2: later Initials carry the server's connection ID but keep those keys), the
largest packet number (packet number recovery), the DCID length of its 1-RTT packets (short headers
do not say it) and the ClientHello's reassembly. The reader keeps exactly that, and follows the
attempts with the table's own rule (``table.step``) so that it knows which attempt's keys apply.
What it returns is bytes-free (``QuicDatagram``: header records, the decryption facts, and once per
attempt the ClientHello's SNI after the SNI policy and ALPN); the payload and the CRYPTO bytes are
dropped before ``read`` returns. Datagrams the rule would not let into an attempt are returned as
the counter name the table would use (``no_initial``, ``after_close``, ``beyond_max_packets``,
``late``) or ``quic_<decode reason>``: they do not leave the edge.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rstscope.config import WindowParams
from rstscope.core.table import window_of
from rstscope.decode.quic import SUPPORTED_VERSIONS, QuicDecodeError, QuicPacketHeader, QuicPacketType, parse_datagram
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
    MAX_ALPN,
    UNKNOWN,
    Hello,
    QuicDatagram,
    QuicPacketRecord,
    dcid_tag,
    opens,
)
from rstscope.quic.record import sni_value
from rstscope.quic.table import END_CAP, END_CLOSE, LATE, Step, step
from rstscope.quic.udp import UdpDatagram

_Decrypted = tuple[InitialKeys, InitialPayload]


@dataclass(slots=True)
class KeyState:
    """A tuple's current attempt as the reader needs it (what ``step`` reads, and the key material)."""

    window_start: int
    version: int
    keys: InitialKeys | None  # None: a version rstscope cannot decrypt
    sealed: str = ""
    datagrams: int = 0
    largest_pn: int = -1
    short_dcid_len: int = 0  # the DCID length of its Handshake packets: its 1-RTT packets' too
    reasm: CryptoReassembler | None = None  # dropped as soon as the ClientHello is parsed


class QuicReader:
    """Datagrams of client-to-server UDP -> ``QuicDatagram`` or the name of why it is dropped.

    Counters (notes, not drops): ``initial_undecryptable``, ``client_hello_error``. State lives per
    tuple until the window of its attempt closes (event time: the latest datagram read)."""

    def __init__(self, params: WindowParams | None = None, sni_policy: str = "hash") -> None:
        self.params = params or WindowParams()
        self.size = self.params.size_s
        sni_value(None, sni_policy)  # raises ValueError for an unknown policy
        self.sni_policy = sni_policy
        self.states: dict[bytes, KeyState] = {}
        self.counters: Counter[str] = Counter()
        self.watermark = float("-inf")
        self.current_window = -1

    def read(self, dg: UdpDatagram) -> QuicDatagram | str:
        ts = dg.ts
        if ts > self.watermark:
            self.watermark = ts
            current = int(window_of(ts, self.size))
            if current > self.current_window:
                self.current_window = current
                self.states = {k: s for k, s in self.states.items() if s.window_start >= current}
        window = int(window_of(ts, self.size))
        if window < self.current_window:
            return LATE
        pkey = pack_key(dg.src, dg.sport, dg.dst, dg.dport)
        st = self.states.get(pkey)
        try:
            headers = parse_datagram(dg.payload, st.short_dcid_len if st is not None else 0)
        except QuicDecodeError as e:
            return "quic_" + e.reason
        recs: list[QuicPacketRecord] = []
        decs: list[_Decrypted | None] = []
        for h in headers:
            rec, dec = self._record(dg, h, st)
            recs.append(rec)
            decs.append(dec)
        o = step(st, recs, window)
        if o.step is Step.DROP:
            return o.counter
        if o.step is not Step.JOIN:  # it opens the tuple's next attempt (the table ends the old one)
            i = next(i for i, r in enumerate(recs) if opens(r))
            keys = decs[i][0] if decs[i] is not None else None  # type: ignore[index]
            st = self.states[pkey] = KeyState(window, recs[i].version or 0, keys,
                                              reasm=CryptoReassembler() if keys is not None else None)
        assert st is not None
        st.datagrams += 1
        hello = None
        for h, dec in zip(headers, decs, strict=True):
            if h.packet_type is QuicPacketType.HANDSHAKE:
                st.short_dcid_len = len(h.dcid)
            if dec is not None and dec[0] is st.keys:
                hello = self._crypto(st, dec[1]) or hello
        if any(r.close for r in recs):
            st.sealed = END_CLOSE
        elif st.datagrams >= self.params.max_packets:
            st.sealed = END_CAP
        return QuicDatagram(tuple(recs), hello)

    def _record(self, dg: UdpDatagram, h: QuicPacketHeader, st: KeyState | None
                ) -> tuple[QuicPacketRecord, _Decrypted | None]:
        """The packet's header record; for a client Initial, decrypted with the attempt's keys first,
        then with its own DCID's (the facts: how, hello, close). Only an opening packet's DCID tag."""
        ptype = h.packet_type.value if h.packet_type is not None else UNKNOWN
        rec = QuicPacketRecord(dg.ts, dg.ip_version, dg.src, dg.dst, dg.sport, dg.dport, ptype, h.version,
                               b"", h.size, dg.ttl, dg.ipid, bool(h.token_len), dcid_len=len(h.dcid))
        dec: _Decrypted | None = None
        if h.packet_type is QuicPacketType.INITIAL and h.version in SUPPORTED_VERSIONS:
            dec = self._decrypt(dg, h, st)
            if dec is not None:
                how = BY_ATTEMPT if st is not None and dec[0] is st.keys else BY_OWN_DCID
                rec = rec._replace(decrypted=how, hello=any(f.offset == 0 for f in dec[1].crypto),
                                   close=dec[1].connection_close is not None)
        if opens(rec):
            rec = rec._replace(dcid=dcid_tag(h.dcid))
        return rec, dec

    def _decrypt(self, dg: UdpDatagram, h: QuicPacketHeader, st: KeyState | None) -> _Decrypted | None:
        assert h.version is not None
        if st is not None and st.keys is not None and st.keys.version == h.version:
            try:
                return st.keys, decrypt_initial(dg.payload, h, st.keys, st.largest_pn)
            except QuicDecodeError:
                pass
        try:
            own = initial_keys(h.dcid, h.version)
            return own, decrypt_initial(dg.payload, h, own)
        except QuicDecodeError:
            self.counters["initial_undecryptable"] += 1
            return None

    def _crypto(self, st: KeyState, payload: InitialPayload) -> Hello | None:
        """Reassemble the attempt's ClientHello; once parsed return SNI (after the policy) and ALPN
        and drop the bytes."""
        st.largest_pn = max(st.largest_pn, payload.packet_number)
        if st.reasm is None or not payload.crypto:
            return None
        try:
            st.reasm.add_payload(payload)
            raw = st.reasm.client_hello()
            if raw is None:
                return None
            ch = parse_client_hello(raw)
            hello: Hello | None = Hello(sni_value(ch.server_name, self.sni_policy), tuple(ch.alpn[:MAX_ALPN]))
        except QuicDecodeError:
            self.counters["client_hello_error"] += 1
            hello = None
        st.reasm = None
        return hello

