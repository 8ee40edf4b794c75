"""Every stage, tag, sub-tag and signature of SPEC section 5, from hand-built packet sets."""

from __future__ import annotations

import pytest
from builders import ISN, SISN, ack, fin, pkt, psh, rst, rstack, syn

from rstscope.core.classify import SIGNATURES, TAGS, classify
from rstscope.packet import TH_ACK, TH_PSH

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


def test_rst_and_rstack_together_each_tag_on_its_own():
    v = c(syn(), ack(), psh(), rst(5), rstack())
    assert v.tags == ("reset", "single_rst", "single_rstack", "rst_and_rstacks")
    v = c(syn(), ack(), psh(), rst(5), rst(6), rstack(), rstack())
    assert v.tags == ("reset", "multiple_rsts", "acknumdiff", "multiple_rstacks", "rst_and_rstacks")


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
    assert (v.ttl_delta, v.ipid_delta, v.injected) == (None, None, False)


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
        (syn(), ack(), fin(), rst()), (syn(),), (syn(ipid=54321, window=65535), rst()),
    ]
    for packets in cases:
        seen.update(c(*packets).tags)
    assert seen == set(TAGS)
