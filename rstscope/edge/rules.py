"""`rstscope edge rules`: the two kernel rules of SPEC section 3, printed, installed or removed.

Rule 1 labels a random share of new connections at their SYN (conntrack label), rule 2 sends the first
10 client-to-server packets of labelled connections to an NFLOG group. The kernel does the sampling,
so the logger only ever sees sampled packets: at 1/10,000 it reads almost nothing.

Differences from the text of SPEC section 3, each on purpose:
- the rules live in a chain (iptables) or table (nft) of their own, so ``--apply`` is idempotent and
  ``--remove`` takes out exactly what ``--apply`` put in, never a neighbour's rule;
- rule 2 also requires ``--ctdir ORIGINAL``: on a router the server's replies pass PREROUTING too,
  and the spec wants client packets only;
- ``--nflog-size 128`` (nft: ``snaplen 128``): headers only, payload bytes never leave the kernel
  (IPv6 + TCP with options is at most 40 + 60 bytes).

UDP (QUIC, ``--quic-port``, default 443; docs/edge.md): the same two rules for ``-p udp``. Rule 1 labels a
new UDP flow (conntrack's NEW: its first client datagram) with the same probability, rule 2 logs the first
10 client datagrams of a labelled flow, with ``--quic-size`` bytes (1500): the edge must decrypt the
client Initial (RFC 9001 5.2), whose AEAD tag covers the whole packet, so the whole datagram is needed.
Those payload bytes reach the edge process and go no further (it sends header records only).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rstscope.options import port_list

DEFAULT_LABEL = 42
DEFAULT_PREFIX = "rstscope"
DEFAULT_SNAPLEN = 128
DEFAULT_UDP_SNAPLEN = 1500  # a whole client Initial datagram (>= 1200 bytes, RFC 9000 14.1), to decrypt it
NUMGEN_MOD = 1_000_000  # nft's random draw: probability resolution 1e-6

IPTABLES_MODULES = ("nf_conntrack", "xt_conntrack", "xt_statistic", "xt_connlabel", "xt_connbytes",
                    "xt_multiport", "xt_NFLOG", "nfnetlink_log")
NFT_MODULES = ("nf_conntrack", "nf_tables", "nft_ct", "nft_numgen", "nft_log", "nfnetlink_log")

# what an iptables/nft error says -> the kernel module that is missing
_ERROR_HINTS = (
    (re.compile(r"connlabel|ct label|labels", re.I), "xt_connlabel (needs nf_conntrack with labels)"),
    (re.compile(r"connbytes|ct original packets", re.I), "xt_connbytes"),
    (re.compile(r"statistic|numgen", re.I), "xt_statistic (nft: nft_numgen)"),
    (re.compile(r"NFLOG|log group|nfnetlink", re.I), "xt_NFLOG + nfnetlink_log (nft: nft_log)"),
    (re.compile(r"conntrack|ctstate|ct state|ctdir", re.I), "nf_conntrack + xt_conntrack (nft: nft_ct)"),
    (re.compile(r"multiport", re.I), "xt_multiport"),
    (re.compile(r"table .*mangle|Table does not exist", re.I), "iptable_mangle / nf_tables"),
)


class RulesError(Exception):
    """A rule could not be installed or removed; the message names the tool's error and likely module."""


@dataclass(frozen=True)
class RuleSpec:
    """What the two rules select: probability, NFLOG group, conntrack label, optional server ports."""

    probability: float
    group: int
    label: int = DEFAULT_LABEL
    ports: tuple[int, ...] = ()
    prefix: str = DEFAULT_PREFIX
    snaplen: int = DEFAULT_SNAPLEN
    max_packets: int = 10
    udp_ports: tuple[int, ...] = ()  # QUIC server ports (UDP): empty, no UDP rules
    udp_snaplen: int = DEFAULT_UDP_SNAPLEN

    def __post_init__(self) -> None:
        if not 0.0 < self.probability <= 1.0:
            raise ValueError("probability must be in (0, 1]")
        if not 0 <= self.group <= 65535:
            raise ValueError("NFLOG group must be in 0..65535")
        if not 0 <= self.label <= 127:
            raise ValueError("conntrack label must be in 0..127")
        if any(not 0 < p < 65536 for p in self.ports) or len(self.ports) > 15:
            raise ValueError("server ports must be 1..65535, at most 15 (multiport)")
        if any(not 0 < p < 65536 for p in self.udp_ports) or len(self.udp_ports) > 15:
            raise ValueError("QUIC ports must be 1..65535, at most 15 (multiport)")
        if not 1200 <= self.udp_snaplen <= 65535:
            raise ValueError("the QUIC copy size must be 1200..65535 (a client Initial is >= 1200 bytes)")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,63}", self.prefix):
            raise ValueError("NFLOG prefix: 1..63 characters of [A-Za-z0-9_.:-]")

    @property
    def chain(self) -> str:
        """One chain per NFLOG group: two loggers on one host do not touch each other's rules."""
        return f"RSTSCOPE-{self.group}"

    @property
    def nft_table(self) -> str:
        return f"rstscope_{self.group}"


def _prob_text(p: float) -> str:
    return f"{p:.10f}".rstrip("0").rstrip(".")


def _iptables_pair(spec: RuleSpec, proto: str, ports: list[str], syn: list[str], snaplen: int) -> list[list[str]]:
    """The two rules of one protocol: mark a sampled share of new connections, then log their first
    ``max_packets`` client packets."""
    mark = ["-p", proto, *ports, *syn, "-m", "conntrack", "--ctstate", "NEW"]
    if spec.probability < 1.0:
        mark += ["-m", "statistic", "--mode", "random", "--probability", _prob_text(spec.probability)]
    mark += ["-m", "connlabel", "--label", str(spec.label), "--set"]
    log = ["-p", proto, *ports, "-m", "conntrack", "--ctdir", "ORIGINAL",
           "-m", "connlabel", "--label", str(spec.label),
           "-m", "connbytes", "!", "--connbytes", str(spec.max_packets + 1),
           "--connbytes-dir", "original", "--connbytes-mode", "packets",
           "-j", "NFLOG", "--nflog-group", str(spec.group), "--nflog-prefix", spec.prefix,
           "--nflog-size", str(snaplen)]
    return [mark, log]


def iptables_rules(spec: RuleSpec) -> list[list[str]]:
    """The arguments (after ``iptables -t mangle -A CHAIN``): TCP's two rules, then UDP's (QUIC) two."""
    ports = ["-m", "multiport", "--dports", ",".join(map(str, spec.ports))] if spec.ports else []
    rules = _iptables_pair(spec, "tcp", ports, ["--syn"], spec.snaplen)
    if spec.udp_ports:
        udp = ["-m", "multiport", "--dports", ",".join(map(str, spec.udp_ports))]
        rules += _iptables_pair(spec, "udp", udp, [], spec.udp_snaplen)
    return rules


def jump_rule(spec: RuleSpec) -> list[str]:
    return ["-p", "tcp", "-j", spec.chain]


def jump_rules(spec: RuleSpec) -> list[list[str]]:
    """PREROUTING's jumps to the chain: TCP, and UDP when QUIC ports are sampled."""
    return [jump_rule(spec), *([["-p", "udp", "-j", spec.chain]] if spec.udp_ports else [])]


def iptables_text(spec: RuleSpec, tools: Sequence[str] = ("iptables", "ip6tables")) -> str:
    """The commands ``--apply`` runs, for reading or for a config-management system."""
    lines = []
    for tool in tools:
        lines.append(f"{tool} -t mangle -N {spec.chain}")
        lines += [f"{tool} -t mangle -A {spec.chain} {' '.join(r)}" for r in iptables_rules(spec)]
        lines += [f"{tool} -t mangle -A PREROUTING {' '.join(j)}" for j in jump_rules(spec)]
    return "\n".join(lines) + "\n"


def nft_script(spec: RuleSpec) -> str:
    """One inet table (IPv4 and IPv6); loading it again replaces it atomically."""
    ports = f"tcp dport {{ {', '.join(map(str, spec.ports))} }} " if spec.ports else ""
    cut = round(spec.probability * NUMGEN_MOD)
    draw = "" if spec.probability >= 1.0 else f"numgen random mod {NUMGEN_MOD} < {max(cut, 1)} "
    t = spec.nft_table
    udp = ""
    if spec.udp_ports:
        q = f"udp dport {{ {', '.join(map(str, spec.udp_ports))} }} "
        udp = (f"\t\tmeta l4proto udp {q}ct state new {draw}ct label set {spec.label}\n"
               f"\t\tmeta l4proto udp {q}ct direction original ct label {spec.label} "
               f"ct original packets < {spec.max_packets + 1} "
               f"log prefix \"{spec.prefix}\" group {spec.group} snaplen {spec.udp_snaplen}\n")
    return (
        f"table inet {t}\n"
        f"delete table inet {t}\n"
        f"table inet {t} {{\n"
        f"\tchain prerouting {{\n"
        f"\t\ttype filter hook prerouting priority mangle; policy accept;\n"
        f"\t\tmeta l4proto tcp {ports}tcp flags & (fin | syn | rst | ack) == syn ct state new "
        f"{draw}ct label set {spec.label}\n"
        f"\t\tmeta l4proto tcp {ports}ct direction original ct label {spec.label} "
        f"ct original packets < {spec.max_packets + 1} "
        f"log prefix \"{spec.prefix}\" group {spec.group} snaplen {spec.snaplen}\n"
        f"{udp}"
        f"\t}}\n"
        f"}}\n"
    )


# -- kernel modules -----------------------------------------------------------------------------------


def missing_modules(modules: Sequence[str], proc_modules: Path = Path("/proc/modules"),
                    lib_modules: Path | None = None) -> list[str]:
    """Modules neither loaded, built in, nor loadable. Empty when this cannot be known (a kernel
    without module support has no /proc/modules): then the tool's own error is the check."""
    if not proc_modules.exists():
        return []
    loaded = {line.split(" ", 1)[0] for line in proc_modules.read_text().splitlines() if line}
    lib = lib_modules or Path("/lib/modules") / os.uname().release
    builtin_file = lib / "modules.builtin"
    builtin = {Path(x).name.removesuffix(".ko") for x in builtin_file.read_text().split()} \
        if builtin_file.exists() else set()
    out = []
    for m in modules:
        if m in loaded or m in builtin or m.replace("-", "_") in loaded:
            continue
        probe = shutil.which("modprobe")
        if probe and subprocess.run([probe, "-n", "-q", m], capture_output=True).returncode == 0:
            continue
        out.append(m)
    return out


def explain(stderr: str) -> str:
    """The tool's error plus the module it most likely lacks."""
    for pattern, module in _ERROR_HINTS:
        if pattern.search(stderr):
            return f"{stderr.strip()} (kernel module needed: {module}; try `modprobe` it, and load " \
                   f"nf_conntrack before using connlabel in a new network namespace)"
    return stderr.strip()


# -- apply / remove -----------------------------------------------------------------------------------

Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


def _check(cmd: list[str], run: Runner) -> None:
    r = run(cmd)
    if r.returncode != 0:
        raise RulesError(f"{' '.join(cmd)}: {explain(r.stderr or r.stdout)}")


_IPT_LABEL_SET = re.compile(r"-A RSTSCOPE-(\d+) .*--label \"?(\d+)\"? --set")  # iptables -S quotes it
_NFT_LABEL_SET = re.compile(r"table inet rstscope_(\d+) \{.*?ct label set (\d+)", re.S)


def label_users(listing: str) -> dict[int, set[int]]:
    """NFLOG group -> conntrack labels its rstscope rules set, from ``iptables -S`` or ``nft list
    ruleset`` output (both may be given, concatenated)."""
    out: dict[int, set[int]] = {}
    for rx in (_IPT_LABEL_SET, _NFT_LABEL_SET):
        for group, label in rx.findall(listing):
            out.setdefault(int(group), set()).add(int(label))
    return out


def label_conflict(spec: RuleSpec, listing: str) -> list[int]:
    """Other rstscope rule sets (their NFLOG groups) that set this spec's conntrack label: the label is
    per connection, so two sets with one label would log each other's connections."""
    return sorted(g for g, labels in label_users(listing).items() if g != spec.group and spec.label in labels)


def current_listing(nft: bool, tools: Sequence[str], run: Runner = _run) -> str:
    """What the kernel holds now, as text ``label_users`` reads (empty when a tool cannot list)."""
    cmds = [["nft", "list", "ruleset"]] if nft else [[t, "-w", "-t", "mangle", "-S"] for t in tools]
    return "\n".join(r.stdout for r in map(run, cmds) if r.returncode == 0)


def apply_iptables(spec: RuleSpec, tools: Sequence[str], run: Runner = _run) -> None:
    """Create or refill the dedicated chain, then add the jump unless ``-C`` finds it already."""
    for tool in tools:
        t = [tool, "-w", "-t", "mangle"]
        r = run([*t, "-N", spec.chain])
        if r.returncode != 0 and "exists" not in (r.stderr or ""):
            raise RulesError(f"{tool} -N {spec.chain}: {explain(r.stderr)}")
        _check([*t, "-F", spec.chain], run)
        for rule in iptables_rules(spec):
            _check([*t, "-A", spec.chain, *rule], run)
        for j in jump_rules(spec):
            if run([*t, "-C", "PREROUTING", *j]).returncode != 0:
                _check([*t, "-A", "PREROUTING", *j], run)


def remove_iptables(spec: RuleSpec, tools: Sequence[str], run: Runner = _run) -> int:
    """Delete every jump to the chain, then the chain. Returns how many tools had it installed."""
    found = 0
    for tool in tools:
        t = [tool, "-w", "-t", "mangle"]
        for j in [jump_rule(spec), ["-p", "udp", "-j", spec.chain]]:  # both, whatever this spec samples
            while run([*t, "-C", "PREROUTING", *j]).returncode == 0:
                _check([*t, "-D", "PREROUTING", *j], run)
        if run([*t, "-L", spec.chain, "-n"]).returncode == 0:
            found += 1
            _check([*t, "-F", spec.chain], run)
            _check([*t, "-X", spec.chain], run)
    return found


def apply_nft(spec: RuleSpec, run_input: Callable[[str], subprocess.CompletedProcess[str]] | None = None) -> None:
    r = (run_input or _nft_input)(nft_script(spec))
    if r.returncode != 0:
        raise RulesError(f"nft -f -: {explain(r.stderr)}")


def remove_nft(spec: RuleSpec, run: Runner = _run) -> int:
    if run(["nft", "list", "table", "inet", spec.nft_table]).returncode != 0:
        return 0
    _check(["nft", "delete", "table", "inet", spec.nft_table], run)
    return 1


def _nft_input(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True)


def installed_iptables(spec: RuleSpec, tools: Sequence[str], run: Runner = _run) -> list[str]:
    """Lines of ``iptables -S`` in the mangle table that mention our chain (for checks and tests)."""
    out = []
    for tool in tools:
        r = run([tool, "-w", "-t", "mangle", "-S"])
        out += [f"{tool}: {line}" for line in r.stdout.splitlines() if spec.chain in line]
    return out


# -- command line -------------------------------------------------------------------------------------


def _port_list(values: list[str] | None, flag: str = "--server-port") -> tuple[int, ...]:
    return tuple(dict.fromkeys(port_list(values, flag)))  # a port once: multiport takes at most 15


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rstscope edge rules", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probability", type=float, default=0.0001, help="share of new connections (default 0.0001)")
    p.add_argument("--nflog-group", type=int, required=True, metavar="N")
    p.add_argument("--label", type=int, default=DEFAULT_LABEL, metavar="L", help="conntrack label bit 0..127")
    p.add_argument("--server-port", action="append", metavar="PORT", help="only these dports (repeatable, a,b)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="NFLOG prefix")
    p.add_argument("--nflog-size", type=int, default=DEFAULT_SNAPLEN, help="bytes of each packet copied (128)")
    p.add_argument("--quic-port", action="append", metavar="PORT",
                   help="UDP ports sampled as QUIC (repeatable, a,b; default 443)")
    p.add_argument("--no-quic", action="store_true", help="TCP only: no UDP rules")
    p.add_argument("--quic-size", type=int, default=DEFAULT_UDP_SNAPLEN,
                   help="bytes of each QUIC datagram copied (1500: the edge decrypts client Initials)")
    p.add_argument("--family", choices=("4", "6", "both"), default="both", help="iptables: IPv4, IPv6 or both")
    p.add_argument("--nft", action="store_true", help="nftables instead of iptables")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--apply", action="store_true", help="install (idempotent)")
    act.add_argument("--remove", action="store_true", help="remove exactly what --apply installs")
    return p


def tools_for(family: str) -> tuple[str, ...]:
    return {"4": ("iptables",), "6": ("ip6tables",), "both": ("iptables", "ip6tables")}[family]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        udp = () if args.no_quic else _port_list(args.quic_port, "--quic-port") or (443,)
        spec = RuleSpec(args.probability, args.nflog_group, args.label, _port_list(args.server_port),
                        args.prefix, args.nflog_size, udp_ports=udp, udp_snaplen=args.quic_size)
    except ValueError as e:
        print(f"rstscope edge rules: {e}", file=sys.stderr)
        return 2
    tools = tools_for(args.family)
    if not (args.apply or args.remove):
        sys.stdout.write(nft_script(spec) if args.nft else iptables_text(spec, tools))
        return 0
    tool = "nft" if args.nft else tools[0]
    if not shutil.which(tool):
        print(f"rstscope edge rules: {tool} is not installed", file=sys.stderr)
        return 2
    try:
        if args.remove:
            n = remove_nft(spec) if args.nft else remove_iptables(spec, tools)
            print(f"rstscope edge rules: removed {'table inet ' + spec.nft_table if args.nft else spec.chain}"
                  f" ({n} found)", file=sys.stderr)
            return 0
        missing = missing_modules(NFT_MODULES if args.nft else IPTABLES_MODULES)
        if missing:
            print(f"rstscope edge rules: kernel modules missing: {', '.join(missing)} "
                  f"(modprobe them; connlabel needs nf_conntrack loaded)", file=sys.stderr)
            return 2
        others = label_conflict(spec, current_listing(args.nft, tools))
        if others:
            raise RulesError(f"conntrack label {spec.label} is set by the rstscope rules of NFLOG group(s) "
                             f"{', '.join(map(str, others))}: two rule sets with one label log each other's "
                             f"connections; pass another --label")
        if args.nft:
            apply_nft(spec)
        else:
            apply_iptables(spec, tools)
    except RulesError as e:
        print(f"rstscope edge rules: {e}", file=sys.stderr)
        return 2
    print(f"rstscope edge rules: installed {'table inet ' + spec.nft_table if args.nft else spec.chain}: "
          f"probability {spec.probability}, NFLOG group {spec.group}, label {spec.label}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
