"""Every stage, tag, sub-tag and signature of SPEC section 5, from hand-built packet sets."""

from __future__ import annotations

import pytest
from builders import ISN, SISN, T0, ack, fin, pkt, psh, rst, rstack, syn

from rstscope.core.classify import SIGNATURES, TAGS, classify
from rstscope.packet import TH_ACK, TH_PSH, PacketRecord

D1 = ISN + 1
D2 = ISN + 101


def c(*packets):
    return classify(list(packets))


# -- stages of reset connections (the progress of the non-RST packets) ------------------------------

@pytest.mark.parametrize(
    ("packets", "stage", "sig"),
    [
        ((syn(), rst()), "post_syn", "SYN→RST"),
        ((syn(), rstack()), "post_syn", "SYN→RST+ACK"),
        ((syn(), rst(), rstack()), "post_syn", "SYN→RST;RST+ACK"),
        ((syn(), ack(), rst(SISN + 1)), "post_ack", "SYN;ACK→RST"),
        ((syn(), ack(), rst(SISN + 1), rst(SISN + 1)), "post_ack", "SYN;ACK→RST;RST"),
        ((syn(), ack(), rstack()), "post_ack", "SYN;ACK→RST+ACK"),
        ((syn(), ack(), rstack(), rstack()), "post_ack", "SYN;ACK→RST+ACK;RST+ACK"),
        ((syn(), ack(), rst(1), rstack()), "post_ack", None),  # no such signature in the paper
        ((syn(), ack(), psh(), rst(7)), "post_psh", "PSH+ACK→RST"),
        ((syn(), ack(), psh(), rstack()), "post_psh", "PSH+ACK→RST+ACK"),
        ((syn(), ack(), psh(), rst(7), rstack()), "post_psh", "PSH+ACK→RST;RST+ACK"),
        ((syn(), ack(), psh(), rstack(), rstack()), "post_psh", "PSH+ACK→RST+ACK;RST+ACK"),
        ((syn(), ack(), psh(), rst(7), rst(7)), "post_psh", "PSH+ACK→RST=RST"),
        ((syn(), ack(), psh(), rst(7), rst(9)), "post_psh", "PSH+ACK→RST≠RST"),
        ((syn(), ack(), psh(), rst(7), rst(0)), "post_psh", "PSH+ACK→RST;RST0"),
        ((syn(), ack(), psh(), psh(seq=D2), rst(7)), "later_in_flow", "PSH+ACK;Data→RST"),
        ((syn(), ack(), psh(), psh(seq=D2), rstack()), "later_in_flow", "PSH+ACK;Data→RST+ACK"),
    ],
)
def test_reset_stage_and_signature(packets, stage, sig):
    v = classify(list(packets))
    assert v.stage == stage
    assert v.signature == sig
    assert "reset" in v.tags and "timeout" not in v.tags


def test_all_nineteen_signatures_are_named():
    assert len(SIGNATURES) == 19
    assert len(set(SIGNATURES)) == 19


def test_data_without_psh_counts_by_payload():
    # A data packet is PSH or payload > 0: a bare ACK with payload is data.
    v = c(syn(), ack(), pkt(TH_ACK, seq=D1, payload=50), rst(3))
    assert v.stage == "post_psh"


def test_psh_without_payload_counts_as_data():
    v = c(syn(), ack(), pkt(TH_PSH | TH_ACK, seq=D1, payload=0), rst(3))
    assert v.stage == "post_psh"


def test_retransmitted_data_counts_once():
    # The client retransmits its ClientHello (same seq): still one data segment -> Post-PSH.
    v = c(syn(), ack(), psh(), psh(), psh(), rst(9))
    assert v.stage == "post_psh"
    assert v.signature == "PSH+ACK→RST"


# -- reset sub-tags ---------------------------------------------------------------------------------

def test_single_rst():
    assert c(syn(), rst()).tags == ("reset", "single_rst")


@pytest.mark.parametrize(
    ("acks", "tag"),
    [((7, 7), "acknumsame"), ((0, 0), "acknumsame0"), ((7, 9), "acknumdiff"), ((7, 0), "acknumdiff0"),
     ((7, 9, 0), "acknumdiff0"), ((5, 5, 5), "acknumsame")],
)
def test_multiple_rsts_ack_number_subtags(acks, tag):
    v = c(syn(), ack(), *(rst(a) for a in acks))
    assert v.tags == ("reset", "multiple_rsts", tag)


def test_rstack_tags():
    assert c(syn(), rstack()).tags == ("reset", "single_rstack")
    assert c(syn(), rstack(), rstack()).tags == ("reset", "multiple_rstacks")


def test_rst_and_rstack_together_is_one_composition():
    """SPEC 5: a reset is exactly one composition; RSTs with RST+ACKs is rst_and_rstacks alone (the
    blog's "terminated with a combination"), no single_/multiple_/acknum tags beside it."""
    v = c(syn(), ack(), psh(), rst(5), rstack())
    assert v.tags == ("reset", "rst_and_rstacks")
    assert v.signature == "PSH+ACK→RST;RST+ACK"
    v = c(syn(), ack(), psh(), rst(5), rst(6), rstack(), rstack())
    assert v.tags == ("reset", "rst_and_rstacks")
    assert c(syn(), rst(), rstack()).signature == "SYN→RST;RST+ACK"
    assert c(syn(), ack(), rst(), rstack()).signature is None  # no Post-ACK signature mixes both


@pytest.mark.parametrize("packets", [
    (syn(), rst()), (syn(), rst(1), rst(2)), (syn(), rstack()), (syn(), rstack(), rstack()),
    (syn(), rst(), rstack()), (syn(), ack(), psh(), rst(5), rst(5), rstack()), (syn(), ack(), fin(), rst()),
])
def test_exactly_one_composition_per_reset(packets):
    from rstscope.core.classify import RST_COMPOSITIONS

    v = c(*packets)
    assert len(set(v.tags) & set(RST_COMPOSITIONS)) == 1


def test_rst_with_fin():
    v = c(syn(), ack(), psh(), fin(seq=D2), rstack(seq=D2 + 1))
    assert v.tags == ("reset", "fin", "single_rstack")
    assert v.stage == "post_psh"
    assert v.signature is None  # the client closed first: not a tampering sequence


def test_nested_tags_only_under_their_parent():
    for v in (c(syn()), c(syn(), ack(), psh(), fin(seq=D2))):
        assert not set(v.tags) & {"fin", "single_rst", "multiple_rsts", "single_rstack", "acknumsame"}


# -- timeouts: the last packet decides --------------------------------------------------------------

def test_timeout_post_syn_with_retransmits():
    v = c(syn(), syn(ts=1.0 + syn().ts))
    assert (v.stage, v.tags, v.signature) == ("post_syn", ("timeout",), "SYN→∅")


def test_timeout_post_ack():
    v = c(syn(), ack())
    assert (v.stage, v.tags, v.signature) == ("post_ack", ("timeout",), "SYN;ACK→∅")


def test_timeout_post_psh_with_retransmissions():
    v = c(syn(), ack(), psh(), psh())
    assert (v.stage, v.tags, v.signature) == ("post_psh", ("timeout",), "PSH+ACK→∅")


def test_keepalive_idle_after_response_is_none_but_timeout():
    # The client sent a request, acknowledged the response (seq after the data), then went quiet.
    v = c(syn(), ack(), psh(), ack(seq=D2, ack=SISN + 900))
    assert (v.stage, v.tags, v.signature) == ("no_match", ("timeout",), None)


def test_idle_after_acking_server_data_without_sending_any_is_none():
    # Server-speaks-first protocol: the client ACKed the banner and went quiet.
    v = c(syn(), ack(), ack(ack=SISN + 60))
    assert (v.stage, v.tags) == ("no_match", ("timeout",))


def test_idle_after_multiple_data_is_none():
    v = c(syn(), ack(), psh(), psh(seq=D2))
    assert (v.stage, v.tags) == ("no_match", ("timeout",))


def test_graceful_fin_is_none_without_tags():
    v = c(syn(), ack(), psh(), ack(seq=D2, ack=SISN + 900), fin(seq=D2, ack=SISN + 900))
    assert (v.stage, v.tags, v.signature) == ("no_match", (), None)


def test_ten_packets_without_rst_is_none():
    packets = [syn(), ack()] + [psh(seq=D1 + 100 * i) for i in range(8)]
    v = classify(packets, max_packets=10)
    assert (v.stage, v.tags) == ("no_match", ())


# -- evidence and scanners --------------------------------------------------------------------------

def test_injected_rst_far_in_ttl_and_ipid():
    v = c(syn(ttl=52, ipid=100), ack(ttl=52, ipid=101), psh(ttl=52, ipid=102), rst(0, ttl=120, ipid=9999))
    assert v.ttl_delta == 68
    assert v.ipid_delta == 9999 - 102
    assert v.injected


def test_client_rst_close_to_its_packets():
    v = c(syn(ttl=52, ipid=100), ack(ttl=52, ipid=101), rstack(ttl=52, ipid=102))
    assert (v.ttl_delta, v.ipid_delta, v.injected) == (0, 1, False)


def test_ipid_delta_wraps_around():
    v = c(syn(ipid=65535), rst(ipid=0))
    assert v.ipid_delta == 1


def test_no_evidence_without_rst():
    v = c(syn(), ack())
    assert (v.ttl_delta, v.ipid_delta, v.injected, v.evidence) == (None, None, False, None)


def test_evidence_says_what_it_rests_on():
    assert c(syn(), ack(), rst()).evidence == "packets"
    # only the SYN to compare with: a different stack explains a difference as well as an injector
    v = c(syn(ttl=52, ipid=100), rst(ttl=120, ipid=9000))
    assert v.evidence == "syn_only" and v.injected


@pytest.mark.parametrize("mark, syn_kw", [
    ("zmap", {"ipid": 54321, "window": 65535, "opt_len": 0, "ttl": 255}),
    ("nmap", {"window": 1024, "opt_len": 4, "ttl": 45, "ipid": 4242}),
    ("generic", {"opt_len": 0, "ttl": 250, "ipid": 7}),
])
def test_a_scanners_syn_answered_by_the_client_kernel_is_never_injected(mark, syn_kw):
    """A raw-socket SYN (TTL 255, fixed IP ID) and the client kernel's RST differ by construction."""
    v = c(syn(**syn_kw), rst(ttl=64, ipid=31337))
    assert v.scanner == mark
    assert v.ttl_delta is not None and (v.ttl_delta >= 2 or (v.ipid_delta or 0) >= 2)
    assert (v.injected, v.evidence) == (False, "scanner")


@pytest.mark.parametrize("window", [1024, 2048, 3072, 4096])
def test_nmap_syn_window_and_only_an_mss_option(window):
    assert c(syn(window=window, opt_len=4, ttl=50, ipid=999)).scanner == "nmap"
    assert c(syn(window=window, opt_len=20, ttl=50, ipid=999)).scanner is None  # a kernel SYN has more options
    assert c(syn(window=5840, opt_len=4, ttl=50, ipid=999)).scanner is None


def test_a_bare_fin_shows_no_progress_past_the_syn():
    """SPEC 5: a packet without the ACK flag (a bare FIN) shows no progress: the reset is Post-SYN."""
    from builders import pkt

    from rstscope.packet import TH_FIN

    v = c(syn(), pkt(TH_FIN), rst())
    assert (v.stage, v.tags) == ("post_syn", ("reset", "fin", "single_rst"))


def test_zmap_before_4_1():
    v = c(syn(ipid=54321, window=65535, opt_len=0, ttl=250), rst())
    assert "zmap" in v.tags and v.scanner == "zmap"


def test_zmap_4_1_random_ipid_mss_only():
    v = c(syn(ipid=1234, window=65535, opt_len=4, ttl=60), rst())
    assert v.scanner == "zmap" and "zmap" in v.tags


def test_macos_like_syn_is_not_zmap():
    v = c(syn(ipid=1234, window=65535, opt_len=24, ttl=60), rst())
    assert v.scanner is None and "zmap" not in v.tags


def test_masscan():
    dst = int.from_bytes(bytes([10, 0, 0, 2]), "big")
    seq = 0x12345678
    ipid = (dst ^ 443 ^ seq) & 0xFFFF
    v = c(syn(seq=seq, ipid=ipid, window=1024, opt_len=0, ttl=250))
    assert v.scanner == "masscan"


def test_mirai():
    dst = int.from_bytes(bytes([10, 0, 0, 2]), "big")
    v = c(syn(seq=dst, ipid=7, opt_len=0, ttl=60))
    assert v.scanner == "mirai"


def test_generic_scanner():
    v = c(syn(opt_len=0, ttl=240, ipid=7))
    assert v.scanner == "generic"


def test_every_tag_is_reachable():
    seen: set[str] = set()
    cases = [
        (syn(), rst(), rstack()), (syn(), ack(), rst(1), rst(1)), (syn(), ack(), rst(0), rst(0)),
        (syn(), ack(), rst(1), rst(2)), (syn(), ack(), rst(1), rst(0)), (syn(), rstack(), rstack()),
        (syn(), ack(), fin(), rst()), (syn(),), (syn(ipid=54321, window=65535), rst()), (syn(), rstack()),
        (syn(), ack(), psh(), gfw1()), (syn(), ack(), psh(), *gfw2()),
    ]
    for packets in cases:
        seen.update(c(*packets).tags)
    assert seen == set(TAGS)


# -- named middleboxes (issue 16; docs/signatures.md) ----------------------------------------------

X = ISN + 101  # the trigger segment's first sequence number (Clayton et al. 2006: "the start of the GET")


def gfw2(base: int = X, offsets: tuple[int, ...] = (0, 1460, 4380), **kw: object) -> list:
    """The GFW's type-2 resets toward the server: RST+ACKs at base + offsets, TTL and window cycling."""
    kw.setdefault("ttl", 40)
    return [rstack(seq=(base + d) % (1 << 32), window=3293 + i, **kw)  # type: ignore[arg-type]
            for i, d in enumerate(offsets)]


def gfw1(**kw: object) -> PacketRecord:
    """The GFW's type-1 reset: RST without ACK, a random (non-zero) window and a foreign TTL."""
    kw.setdefault("ttl", 40)
    kw.setdefault("window", 4321)
    return rst(seq=X, **kw)  # type: ignore[arg-type]


def test_gfw_type2_is_the_rstack_triplet_at_x_x1460_x4380():
    v = c(syn(), ack(), psh(), *gfw2())
    assert v.tags == ("reset", "multiple_rstacks", "gfw_type2")
    assert v.signature == "PSH+ACK→RST+ACK;RST+ACK"
    assert c(*reversed([syn(), ack(), psh(), *gfw2()])).tags == v.tags  # packets are a set


def test_gfw_type2_offsets_wrap_around_the_sequence_space():
    assert "gfw_type2" in c(syn(), ack(), psh(), *gfw2(base=(1 << 32) - 1000)).tags


def test_gfw_type2_with_a_type1_reset_is_a_combination_tagged_both():
    v = c(syn(), ack(), psh(), gfw1(), *gfw2())
    assert v.tags == ("reset", "rst_and_rstacks", "gfw_type1", "gfw_type2")
    assert v.signature == "PSH+ACK→RST;RST+ACK"


def test_gfw_type2_seen_at_post_syn_and_beside_other_resets():
    assert "gfw_type2" in c(syn(), *gfw2(base=ISN + 1)).tags
    assert "gfw_type2" in c(syn(), ack(), psh(), rstack(seq=X + 71), *gfw2()).tags  # a fourth RST+ACK


@pytest.mark.parametrize("packets", [
    pytest.param(gfw2(offsets=(0, 1460)), id="two_of_three"),
    pytest.param(gfw2(offsets=(0, 1460, 2920)), id="x_x1460_x2920"),
    pytest.param(gfw2(offsets=(0, 0, 0)), id="same_seq_triplet_2023"),
    pytest.param(gfw2(offsets=(0, 1461, 4381)), id="off_by_one"),
    pytest.param([rst(seq=X + d, window=9) for d in (0, 1460, 4380)], id="plain_rsts"),
    pytest.param([rstack(seq=X), rst(seq=X + 1460), rstack(seq=X + 4380)], id="one_is_plain"),
])
def test_gfw_type2_near_misses(packets):
    assert "gfw_type2" not in c(syn(), ack(), psh(), *packets).tags


def test_gfw_type1_is_a_plain_rst_with_a_window_and_a_foreign_ttl():
    v = c(syn(), ack(), psh(), gfw1())
    assert v.tags == ("reset", "single_rst", "gfw_type1")
    assert v.injected and v.signature == "PSH+ACK→RST"
    assert "gfw_type1" in c(syn(), ack(), gfw1(window=1)).tags


@pytest.mark.parametrize(("kw", "why"), [
    ({"window": 0}, "window 0 is what a host's own RST without ACK carries (and the bed's other injectors)"),
    ({"ttl": 64}, "the client's TTL: a host stack with a non-zero RST window, not a foreign injector"),
    ({"ttl": 63}, "TTL 1 away: within a host's own spread"),
])
def test_gfw_type1_near_misses(kw, why):
    assert "gfw_type1" not in c(syn(), ack(), psh(), gfw1(**kw)).tags, why


def test_gfw_type1_needs_the_plain_rst_flag():
    assert "gfw_type1" not in c(syn(), ack(), psh(), rstack(ttl=40, window=4321)).tags


def test_gfw_type1_follows_the_configured_ttl_threshold():
    from rstscope.config import EvidenceParams

    packets = [syn(), ack(), psh(), gfw1(ttl=60)]
    assert "gfw_type1" in classify(packets).tags
    assert "gfw_type1" not in classify(packets, params=EvidenceParams(injected_ttl_delta=5)).tags


def test_gfw_type1_is_never_read_on_a_scanners_syn():
    v = c(syn(ipid=54321, window=65535, ttl=255), rst(ttl=64, window=1024))
    assert v.scanner == "zmap" and "gfw_type1" not in v.tags and not v.injected


def test_named_middlebox_tags_are_never_without_reset():
    for packets in [(syn(window=4321, ttl=40),), (syn(), ack(), psh()), (syn(), ack(), fin())]:
        assert not {"gfw_type1", "gfw_type2"} & set(c(*packets).tags)


def test_both_engines_tag_named_middleboxes_alike(tmp_path):
    """The batch engine classifies reset connections with the core's make_record: same tags."""
    from rstscope.config import Topology
    from rstscope.offline import Options
    from tests.builders import ether, ipv4_tcp, pcap_bytes
    from tests.test_fastpath import _run, compare

    conns = [[syn(), ack(), psh(), gfw1()], [syn(), ack(), psh(), *gfw2()], [syn(), ack(), psh(), gfw1(), *gfw2()],
             [syn(), ack(), psh(), *gfw2(offsets=(0, 1460, 2920))]]
    frames = [(T0 + i + j * 0.001, ether(ipv4_tcp(p._replace(sport=41000 + i))))
              for i, packets in enumerate(conns) for j, p in enumerate(packets)]
    cap = tmp_path / "gfw.pcap"
    cap.write_bytes(pcap_bytes(frames))
    assert compare([cap]) == "batch"
    _, recs = _run([cap], Options(), Topology(), "batch")
    got = {r["client_port"]: [t for t in r["tags"] if t.startswith("gfw")] for r in recs}
    assert got == {41000: ["gfw_type1"], 41001: ["gfw_type2"], 41002: ["gfw_type1", "gfw_type2"], 41003: []}
