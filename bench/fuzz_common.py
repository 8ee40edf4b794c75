"""Shared driver of the bench/fuzz_*.py targets.

A target is ``target(data: bytes) -> str``: it returns the outcome it counted (a record decoded, or the
reason the input was refused) and raises only on a bug. Engines:

- ``atheris`` (coverage-guided libFuzzer, if ``pip install atheris`` works for this Python): every
  argument libFuzzer knows is passed through, e.g. ``-runs=1000000``, ``-max_len=4096``;
- ``mutate`` (no dependency): a deterministic mutator over the seed corpus (bit flips, byte sets,
  inserts, deletes, duplications, splices, interesting integers), ``--runs N --seed S``.

At the end one JSON line goes to stdout: target, engine, inputs, seconds, inputs_per_s, outcomes.
"""

from __future__ import annotations

import argparse
import atexit
import json
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
FIXTURES = REPO / "tests" / "fixtures"

Target = Callable[[bytes], str]
_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(rng: random.Random, seeds: list[bytes], data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(1 + min(int(rng.expovariate(0.7)), 32)):  # bounded: a Random subclass may return inf
        op = rng.randrange(8)
        n = len(b)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # set a byte
            b[rng.randrange(n)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2:  # insert random bytes
            i = rng.randrange(n + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del b[i:i + rng.randrange(1, 32)]
        elif op == 4 and n:  # duplicate a range
            i = rng.randrange(n)
            b[i:i] = b[i:i + rng.randrange(1, 64)]
        elif op == 5 and n >= 4:  # an interesting 16/32-bit integer, either endianness
            fmt = rng.choice(("<H", ">H", "<I", ">I"))
            size = struct.calcsize(fmt)
            i = rng.randrange(max(1, n - size + 1))
            v = rng.choice(_INTERESTING) & (0xFFFF if size == 2 else 0xFFFFFFFF)
            b[i:i + size] = struct.pack(fmt, v)
        elif op == 6 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            i, j = rng.randrange(n + 1), rng.randrange(len(other) + 1)
            b = b[:i] + bytearray(other[j:])
        elif op == 7 and n:  # truncate
            del b[rng.randrange(n):]
    return bytes(b)


def mutations(seeds: list[bytes], runs: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    pool = list(seeds) or [b""]
    for i in range(runs):
        if i < len(seeds):
            yield seeds[i]
            continue
        if rng.random() < 0.02:
            yield rng.randbytes(rng.randrange(64))
            continue
        out = mutate(rng, pool, rng.choice(pool))
        if len(pool) < 512 and rng.random() < 0.01:
            pool.append(out)  # keep a few mutants as new parents
        yield out


def run_mutate(target: Target, seeds: list[bytes], runs: int, seed: int = 1) -> dict[str, object]:
    outcomes: Counter[str] = Counter()
    t0 = time.perf_counter()
    n = 0
    for data in mutations(seeds, runs, seed):
        outcomes[target(data)] += 1
        n += 1
    dt = time.perf_counter() - t0
    return {"engine": "mutate", "inputs": n, "seconds": round(dt, 2), "inputs_per_s": round(n / max(dt, 1e-9)),
            "outcomes": dict(outcomes.most_common())}


def main(name: str, make_target: Callable[[], Target], seeds: Callable[[], list[bytes]]) -> int:
    ap = argparse.ArgumentParser(prog=f"fuzz_{name}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("atheris", "mutate", "auto"), default="auto")
    ap.add_argument("--runs", type=int, default=1_000_000, help="inputs (mutate engine; atheris: -runs=N)")
    ap.add_argument("--seed", type=int, default=1)
    args, rest = ap.parse_known_args()
    engine = args.engine
    if engine == "auto":
        try:
            import atheris
            engine = "atheris"
        except ImportError:
            engine = "mutate"
    if engine == "mutate":
        result = run_mutate(make_target(), seeds(), args.runs, args.seed)
        print(json.dumps({"target": name, **result}), flush=True)
        return 0

    import atheris

    with atheris.instrument_imports():
        target = make_target()
    outcomes: Counter[str] = Counter()
    t0 = time.perf_counter()
    runs = next((int(a.split("=", 1)[1]) for a in rest if a.startswith("-runs=")), args.runs)
    done = [False]

    def one(data: bytes) -> None:
        outcomes[target(data)] += 1
        if not done[0] and outcomes.total() >= runs:  # libFuzzer exits from C: atexit may not run
            report()

    def report() -> None:
        if done[0]:
            return
        done[0] = True
        n = sum(outcomes.values())
        dt = time.perf_counter() - t0
        print(json.dumps({"target": name, "engine": "atheris", "inputs": n, "seconds": round(dt, 2),
                          "inputs_per_s": round(n / max(dt, 1e-9)), "outcomes": dict(outcomes.most_common())}),
              flush=True)

    atexit.register(report)
    corpus = Path(f"/tmp/rstscope-fuzz-corpus-{name}")
    corpus.mkdir(exist_ok=True)
    for i, s in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(s)
    argv = [sys.argv[0], *rest]
    if not any(a.startswith("-runs=") for a in rest):
        argv.append(f"-runs={runs}")
    if not any(a.startswith("-seed=") for a in rest):
        argv.append(f"-seed={args.seed}")
    argv += ["-max_len=8192", "-rss_limit_mb=2048", str(corpus)] if not any(
        a.startswith("-max_len=") for a in rest) else [str(corpus)]
    atheris.Setup(argv, one)
    atheris.Fuzz()
    return 0


def fixture_frames(names: list[str] | None = None, linktype: int | None = None) -> list[bytes]:
    """Frames of the fixture captures (optionally only those of one link type)."""
    from rstscope.capture.files import read_frames

    out = []
    for p in sorted(FIXTURES.glob("*.pcap*")):
        if names and p.name not in names:
            continue
        for f in read_frames(p):
            if linktype is None or f[1] == linktype:
                out.append(f[2])
    return out
