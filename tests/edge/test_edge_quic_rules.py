"""The kernel sampling rules for UDP (QUIC): the same two rules as TCP's, for the QUIC ports, with a copy
size that holds a whole client Initial (the edge decrypts it); apply/remove stay idempotent and exact."""

from __future__ import annotations

import pytest

from rstscope.edge import rules
from tests.edge.test_edge_units import FakeIptables


def test_iptables_udp_rules() -> None:
    spec = rules.RuleSpec(0.0001, 5, 7, (443,), udp_ports=(443, 8443))
    r = rules.iptables_rules(spec)
    assert len(r) == 4 and r[:2] == rules.iptables_rules(rules.RuleSpec(0.0001, 5, 7, (443,)))
    assert " ".join(r[2]) == ("-p udp -m multiport --dports 443,8443 -m conntrack --ctstate NEW -m statistic "
                              "--mode random --probability 0.0001 -m connlabel --label 7 --set")
    assert " ".join(r[3]) == ("-p udp -m multiport --dports 443,8443 -m conntrack --ctdir ORIGINAL -m connlabel "
                              "--label 7 -m connbytes ! --connbytes 11 --connbytes-dir original --connbytes-mode "
                              "packets -j NFLOG --nflog-group 5 --nflog-prefix rstscope --nflog-size 1500")
    assert rules.iptables_text(spec, ("iptables",)).endswith(
        "iptables -t mangle -A PREROUTING -p tcp -j RSTSCOPE-5\n"
        "iptables -t mangle -A PREROUTING -p udp -j RSTSCOPE-5\n")


def test_nft_udp_rules() -> None:
    text = rules.nft_script(rules.RuleSpec(0.0001, 5, 7, udp_ports=(443,), prefix="e1"))
    assert "meta l4proto udp udp dport { 443 } ct state new numgen random mod 1000000 < 100 ct label set 7\n" in text
    assert ("meta l4proto udp udp dport { 443 } ct direction original ct label 7 ct original packets < 11 "
            'log prefix "e1" group 5 snaplen 1500\n') in text
    assert "udp" not in rules.nft_script(rules.RuleSpec(0.0001, 5))


@pytest.mark.parametrize("kw", [{"udp_ports": (0,)}, {"udp_snaplen": 1000}, {"udp_ports": tuple(range(1, 17))}])
def test_udp_rulespec_rejects(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        rules.RuleSpec(0.5, 1, **kw)  # type: ignore[arg-type]


def test_apply_and_remove_with_udp() -> None:
    spec = rules.RuleSpec(0.5, 3, udp_ports=(443,))
    ipt = FakeIptables()
    ipt.chains["PREROUTING"].append(["-p", "udp", "-j", "OTHER"])
    rules.apply_iptables(spec, ("iptables",), ipt)
    rules.apply_iptables(spec, ("iptables",), ipt)
    assert ipt.chains["PREROUTING"] == [["-p", "udp", "-j", "OTHER"], ["-p", "tcp", "-j", "RSTSCOPE-3"],
                                        ["-p", "udp", "-j", "RSTSCOPE-3"]]
    assert ipt.chains["RSTSCOPE-3"] == rules.iptables_rules(spec)
    # removing with a TCP-only spec still takes out the UDP jump: remove is exact whatever was applied
    assert rules.remove_iptables(rules.RuleSpec(0.5, 3), ("iptables",), ipt) == 1
    assert ipt.chains == {"PREROUTING": [["-p", "udp", "-j", "OTHER"]]}


def test_rules_cli_samples_udp_443_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert rules.main(["--nflog-group", "2", "--family", "4"]) == 0
    out = capsys.readouterr().out
    assert "-p udp -m multiport --dports 443 " in out and "--nflog-size 1500" in out
    assert rules.main(["--nflog-group", "2", "--family", "4", "--no-quic"]) == 0
    assert "udp" not in capsys.readouterr().out
    assert rules.main(["--nflog-group", "2", "--nft", "--quic-port", "443,4433"]) == 0
    assert "udp dport { 443, 4433 }" in capsys.readouterr().out
