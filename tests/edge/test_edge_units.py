"""Unit tests of the edge: rule text (iptables, nft), apply/remove command sequences, module checks,
privacy transforms, the bounded queue, metrics, and the producer loop over a real capture file."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rstscope.codecs.packet import Watermark, decode_message, partition_of
from rstscope.config import WindowParams
from rstscope.decode import decode_frame
from rstscope.direction import Direction
from rstscope.edge import rules
from rstscope.edge.metrics import EdgeCollector
from rstscope.edge.privacy import KeyedHash, Truncate, parse
from rstscope.edge.producer import Batches, Edge, EdgeStats
from rstscope.edge.queue import BoundedSender
from rstscope.edge.sources import PcapFiles
from rstscope.sampling import Gate, Sampler

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# -- rules --------------------------------------------------------------------------------------------


def test_iptables_text_is_the_spec_rules() -> None:
    spec = rules.RuleSpec(0.0001, 5, 7, (443,))
    assert rules.iptables_text(spec, ("iptables",)) == (
        "iptables -t mangle -N RSTSCOPE-5\n"
        "iptables -t mangle -A RSTSCOPE-5 -p tcp -m multiport --dports 443 --syn -m conntrack --ctstate NEW "
        "-m statistic --mode random --probability 0.0001 -m connlabel --label 7 --set\n"
        "iptables -t mangle -A RSTSCOPE-5 -p tcp -m multiport --dports 443 -m conntrack --ctdir ORIGINAL "
        "-m connlabel --label 7 -m connbytes ! --connbytes 11 --connbytes-dir original --connbytes-mode packets "
        "-j NFLOG --nflog-group 5 --nflog-prefix rstscope --nflog-size 128\n"
        "iptables -t mangle -A PREROUTING -p tcp -j RSTSCOPE-5\n")


def test_iptables_probability_one_has_no_statistic_match() -> None:
    r1, r2 = rules.iptables_rules(rules.RuleSpec(1.0, 1))
    assert "statistic" not in r1 and "multiport" not in r1 + r2
    assert r2[r2.index("--connbytes") + 1] == "11"


def test_nft_script() -> None:
    text = rules.nft_script(rules.RuleSpec(0.0001, 5, 7, (80, 443), prefix="edge1"))
    assert text.startswith("table inet rstscope_5\ndelete table inet rstscope_5\ntable inet rstscope_5 {")
    assert ("meta l4proto tcp tcp dport { 80, 443 } tcp flags & (fin | syn | rst | ack) == syn ct state new "
            "numgen random mod 1000000 < 100 ct label set 7\n") in text
    assert ("meta l4proto tcp tcp dport { 80, 443 } ct direction original ct label 7 ct original packets < 11 "
            'log prefix "edge1" group 5 snaplen 128\n') in text
    assert "numgen" not in rules.nft_script(rules.RuleSpec(1.0, 5))
    # a tiny probability never rounds to "never"
    assert "< 1 ct label" in rules.nft_script(rules.RuleSpec(1e-9, 5))


@pytest.mark.parametrize("kw", [{"probability": 0.0}, {"probability": 1.5}, {"group": 70000}, {"label": 128},
                                {"ports": (0,)}, {"prefix": "bad prefix"}])
def test_rulespec_rejects(kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"probability": 0.5, "group": 1, **kw}
    with pytest.raises(ValueError):
        rules.RuleSpec(**args)


class FakeIptables:
    """Records commands; models one chain and PREROUTING jumps well enough for -N/-F/-A/-C/-D/-X/-L."""

    def __init__(self) -> None:
        self.cmds: list[list[str]] = []
        self.chains: dict[str, list[list[str]]] = {"PREROUTING": []}

    def __call__(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        self.cmds.append(cmd)
        op, chain, rest = cmd[4], cmd[5] if len(cmd) > 5 else "", cmd[6:]
        rc, err = 0, ""
        if op == "-N":
            if chain in self.chains:
                rc, err = 1, "iptables: Chain already exists."
            else:
                self.chains[chain] = []
        elif op == "-F":
            self.chains[chain] = []
        elif op == "-A":
            self.chains[chain].append(rest)
        elif op == "-C":
            rc = 0 if rest in self.chains[chain] else 1
        elif op == "-D":
            self.chains[chain].remove(rest)
        elif op == "-X":
            del self.chains[chain]
        elif op == "-L":
            rc = 0 if chain in self.chains else 1
        return subprocess.CompletedProcess(cmd, rc, "", err)


def test_apply_is_idempotent_and_remove_is_exact() -> None:
    spec = rules.RuleSpec(0.5, 3)
    ipt = FakeIptables()
    ipt.chains["PREROUTING"].append(["-p", "udp", "-j", "OTHER"])  # somebody else's rule
    rules.apply_iptables(spec, ("iptables",), ipt)
    rules.apply_iptables(spec, ("iptables",), ipt)
    assert ipt.chains["PREROUTING"] == [["-p", "udp", "-j", "OTHER"], ["-p", "tcp", "-j", "RSTSCOPE-3"]]
    assert ipt.chains["RSTSCOPE-3"] == rules.iptables_rules(spec)
    assert rules.remove_iptables(spec, ("iptables",), ipt) == 1
    assert ipt.chains == {"PREROUTING": [["-p", "udp", "-j", "OTHER"]]}
    assert rules.remove_iptables(spec, ("iptables",), ipt) == 0


def test_apply_failure_names_the_module() -> None:
    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        if "connlabel" in cmd:
            return subprocess.CompletedProcess(cmd, 2, "", "iptables v1.8.9: Couldn't load match `connlabel'")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    with pytest.raises(rules.RulesError, match="xt_connlabel"):
        rules.apply_iptables(rules.RuleSpec(0.5, 3), ("iptables",), run)
    assert "xt_connbytes" in rules.explain("Extension connbytes revision 0 not supported, missing kernel module?")


def test_missing_modules(tmp_path: Path) -> None:
    (tmp_path / "modules").write_text("nf_conntrack 1 0 - Live 0x0\nxt_statistic 1 0 - Live 0x0\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "modules.builtin").write_text("kernel/net/netfilter/xt_connbytes.ko\n")
    missing = rules.missing_modules(["nf_conntrack", "xt_statistic", "xt_connbytes", "rstscope_no_such_mod"],
                                    tmp_path / "modules", lib)
    assert missing == ["rstscope_no_such_mod"]
    assert rules.missing_modules(["x"], tmp_path / "absent") == []  # no module support: the tool decides


def test_rules_cli_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert rules.main(["--nflog-group", "2", "--family", "4", "--server-port", "443,80"]) == 0
    assert "--dports 443,80" in capsys.readouterr().out
    assert rules.main(["--nflog-group", "2", "--nft"]) == 0
    assert "log prefix" in capsys.readouterr().out
    assert rules.main(["--nflog-group", "2", "--probability", "2"]) == 2


# -- privacy ------------------------------------------------------------------------------------------


def test_truncate() -> None:
    t = Truncate(24, 48)
    assert t(ipaddress.ip_address("203.0.113.77").packed) == ipaddress.ip_address("203.0.113.0").packed
    assert t(ipaddress.ip_address("2001:db8:1:2:3::9").packed) == ipaddress.ip_address("2001:db8:1::").packed
    assert Truncate(0, 0)(b"\xff" * 4) == bytes(4)
    assert Truncate(32, 128)(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"


def test_keyed_hash() -> None:
    h, h2 = KeyedHash(b"k" * 32), KeyedHash(b"j" * 32)
    a4, b4 = ipaddress.ip_address("198.51.100.1").packed, ipaddress.ip_address("198.51.100.2").packed
    out = h(a4)
    assert len(out) == 4 and out == h(a4) and out != h(b4) and out != h2(a4)
    assert ipaddress.ip_address(out) in ipaddress.ip_network("240.0.0.0/4")
    a6 = ipaddress.ip_address("2001:db8::1").packed
    assert ipaddress.ip_address(h(a6)) in ipaddress.ip_network("fd00::/8") and len(h(a6)) == 16
    with pytest.raises(ValueError):
        KeyedHash(b"short")


def test_parse_privacy(tmp_path: Path) -> None:
    assert isinstance(parse("truncate:16,32"), Truncate)
    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123\n")
    assert isinstance(parse(f"hash:{key}"), KeyedHash)
    for bad in ("truncate:x", "hash:", f"hash:{tmp_path / 'none'}", "rot13", "truncate:33,48"):
        with pytest.raises(ValueError):
            parse(bad)


# -- bounded queue ------------------------------------------------------------------------------------


class FakeProducer:
    """A bounded queue that only drains when told to (a stalled broker) or on poll."""

    def __init__(self, cap: int, drain_on_poll: int = 0) -> None:
        self.cap, self.drain_on_poll = cap, drain_on_poll
        self.queue: list[tuple[str, bytes, bytes | None, dict[str, Any]]] = []
        self.delivered: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **kw: Any) -> None:
        if len(self.queue) >= self.cap:
            raise BufferError("Local: Queue full")
        self.queue.append((topic, value, key, kw))

    def poll(self, timeout: float = 0) -> int:
        n = min(self.drain_on_poll, len(self.queue))
        for topic, value, key, kw in self.queue[:n]:
            self.delivered.append(value)
            cb = kw.get("on_delivery")
            if cb:
                cb(None, (topic, key))
        del self.queue[:n]
        return n

    def flush(self, timeout: float = 0) -> int:
        self.drain_on_poll = 1 << 30
        self.poll()
        return 0

    def __len__(self) -> int:
        return len(self.queue)


def test_bounded_sender_drops_after_max_wait() -> None:
    p = FakeProducer(cap=3)
    s = BoundedSender(p, "t", max_wait_s=0.02, poll_s=0.001)
    results = [s.send(b"%d" % i, None, {}) for i in range(5)]
    assert results == [True, True, True, False, False] and s.dropped == 2 and s.depth() == 3


def test_bounded_sender_blocks_when_told() -> None:
    p = FakeProducer(cap=2, drain_on_poll=1)
    s = BoundedSender(p, "t", max_wait_s=0.0, poll_s=0.001)
    assert all(s.send(b"x", None, {}, block=True) for _ in range(10))
    assert s.dropped == 0 and len(p.delivered) + len(p) == 10
    forever = BoundedSender(p, "t", max_wait_s=None, poll_s=0.001)  # file replay: never drops
    assert all(forever.send(b"y", None, {}) for _ in range(10)) and forever.dropped == 0


def _gate(ports: list[int]) -> Gate:
    return Gate(Direction([], ports), Sampler(1.0), WindowParams())


def test_edge_counts_queue_full_drops() -> None:
    p = FakeProducer(cap=4)  # the broker never answers: the queue stays full (4 messages)
    edge = Edge(p, "t", 2, _gate([80]), "src", max_wait_s=0.0, batches=Batches(2, max_records=3))
    edge.sender.poll_s = 0.0005
    edge.watermark = lambda eof: edge.flush()  # type: ignore[method-assign]  # the eof watermark waits by design
    stats = edge.run([FIXTURES / "http_ok.pcap"])
    assert stats.dropped["queue_full"] > 0 and stats.sent == 4 * 3  # a dropped batch counts its records
    assert stats.sent + stats.dropped["queue_full"] == stats.sampled
    assert stats.lost() == stats.dropped["queue_full"]


def test_a_live_edge_skips_periodic_watermarks_when_the_queue_is_full() -> None:
    """Waiting for room would stop a live reader (the kernel drops unseen): the periodic watermark gives
    up and is counted; a later one supersedes it. A file replay's watermarks always wait."""
    p = FakeProducer(cap=2)  # the broker never answers
    edge = Edge(p, "t", 4, _gate([80]), "src", max_wait_s=0.0)
    edge.sender.poll_s = 0.0005
    edge.end_ts = 1_700_000_000.0
    edge.watermark(eof=False)
    assert (edge.stats.watermarks, edge.stats.watermarks_skipped) == (2, 2) and len(p) == 2
    assert "(2 skipped)" in edge.stats.line(1.0) and edge.stats.to_dict()["watermarks_skipped"] == 2
    replay = Edge(FakeProducer(cap=2, drain_on_poll=1), "t", 4, _gate([80]), "src", max_wait_s=None)
    replay.sender.poll_s = 0.0005
    replay.end_ts = 1_700_000_000.0
    replay.watermark(eof=False)
    assert (replay.stats.watermarks, replay.stats.watermarks_skipped) == (4, 0)


def test_batches_are_bounded_by_records_and_bytes_and_keep_partitions() -> None:
    """Every message holds one partition's records (their tuples map there), at most max_records of them
    and about max_bytes; watermarks follow the batches they promise about."""
    p = FakeProducer(cap=1 << 20)
    edge = Edge(p, "t", 4, _gate([80]), "edge-a", batches=Batches(4, max_records=5, max_bytes=200))
    stats = edge.run([FIXTURES / "http_ok.pcap"])
    seen = 0
    done_at: dict[int, int] = {}  # partition -> index of its eof watermark
    for i, (_t, value, key, kw) in enumerate(p.queue):
        m = decode_message(value)
        part = kw["partition"]
        if isinstance(m, Watermark):
            if m.eof:
                done_at[part] = i
            continue
        assert key is None and m.edge == "edge-a" and not m.errors and part not in done_at
        assert 1 <= len(m.packets) <= 5 and len(value) <= 200 + 80
        assert all(partition_of(pkt.packed_key, 4) == part for pkt, _g in m.packets)
        seen += len(m.packets)
    assert seen == stats.sent == stats.sampled > 5 and sorted(done_at) == [0, 1, 2, 3]


def test_edge_client_ip_never_raw() -> None:
    pcap = FIXTURES / "http_ok.pcap"
    clients = set()
    for batch in PcapFiles([pcap]).batches():
        for ts, lt, data in batch:
            rec = decode_frame(ts, lt, data)
            if not isinstance(rec, str) and rec.dport == 80:
                clients.add(rec.src)
    assert clients
    for transform in (Truncate(24, 48), KeyedHash(b"s" * 32)):
        p = FakeProducer(cap=1 << 20)
        edge = Edge(p, "t", 2, _gate([80]), "src", client_ip=transform)
        edge.run([pcap])
        assert edge.stats.sent > 0
        messages = [(decode_message(value), value) for _t, value, _key, _kw in p.queue]
        packets = [(pkt, v) for m, v in messages if not isinstance(m, Watermark) for pkt, _g in m.packets]
        assert len(packets) == edge.stats.sent
        expected_src = {transform(c) for c in clients}
        for rec, value in packets:
            assert rec.src in expected_src
            assert not any(c in value for c in clients)


def test_metrics_collector() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    st = EdgeStats(read=10, tcp=9, sampled=5, sent=4)
    st.dropped["queue_full"] = 1
    st.dropped["malformed:bad"] = 1
    reg = CollectorRegistry(auto_describe=False)
    reg.register(EdgeCollector(st, lambda: 7, lambda: 2, "h1"))
    text = generate_latest(reg).decode()
    assert 'rstscope_edge_packets_read_total{source="h1"} 10.0' in text
    assert 'rstscope_edge_dropped_total{reason="queue_full",source="h1"} 1.0' in text
    assert 'rstscope_edge_dropped_total{reason="kernel",source="h1"} 2.0' in text
    assert 'rstscope_edge_queue_depth{source="h1"} 7.0' in text
    assert "malformed:bad" not in text


def test_a_batch_waits_at_most_linger() -> None:
    b = Batches(2, max_records=100, linger_s=0.05)
    assert not b.add(1, [1], 10)
    t = b.since[1]
    assert b.stale(t + 0.04) == [] and b.stale(t + 0.06) == [1] and b.waiting() == [1]
    assert b.take(1) == [[1]] and b.waiting() == [] and b.stale(t + 100) == []
    assert b.add(0, [2], 10) is False and Batches(1, max_bytes=15).add(0, [3], 16) is True
    with pytest.raises(ValueError):
        Batches(1, max_records=0)


def test_label_conflict_reads_both_listings() -> None:
    """Two rule sets with one conntrack label log each other's connections: --apply refuses."""
    from rstscope.edge.rules import RuleSpec, iptables_text, label_conflict, label_users, nft_script

    five = RuleSpec(0.5, 5, 42, (443,))
    kernel = iptables_text(five, ("iptables",)).replace("--label 42", '--label "42"')  # as iptables -S spells it
    assert label_users(kernel) == {5: {42}} and label_users(nft_script(five)) == {5: {42}}
    assert label_conflict(RuleSpec(0.5, 6, 42, (443,)), kernel + nft_script(five)) == [5]
    assert label_conflict(RuleSpec(0.5, 6, 43, (443,)), kernel) == []
    assert label_conflict(RuleSpec(0.1, 5, 42, (80,)), kernel) == []  # the same set again: a refill
