"""The Python API: ``rstscope.analyze(paths) -> Result``, the same Analyzer as `rstscope analyze`.

Importing ``rstscope`` stays light: the analysis modules (and pandas) are imported when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rstscope.config import Topology
    from rstscope.core.record import ConnectionRecord
    from rstscope.geo import GeoDB


@dataclass
class Result:
    """One run: the summary (what ``--format json`` prints), the records (``--out``) and the rollup rows."""

    summary: dict[str, Any]
    records: list[ConnectionRecord] = field(default_factory=list)
    rollups: list[dict[str, Any]] = field(default_factory=list)

    def to_pandas(self) -> Any:
        """The records as a pandas DataFrame, one column per ConnectionRecord field (pip install 'rstscope[pandas]')."""
        from rstscope.outputs import PANDAS_EXTRA, MissingExtra, record_fields

        try:
            import pandas as pd
        except ImportError:
            raise MissingExtra(f"to_pandas() needs pandas: pip install 'rstscope[{PANDAS_EXTRA}]'") from None
        fields = record_fields()
        df = pd.DataFrame.from_records(self.records, columns=list(fields))
        # Optional integers stay integers (pandas' nullable Int64: None is <NA>, not NaN in a float column).
        nullable_ints = [name for name, tp in fields.items() if tp == (int | None)]
        return df.astype(dict.fromkeys(nullable_ints, "Int64"))


def analyze(paths: str | Path | Iterable[str | Path], *, server_ips: Iterable[str] = (),
            server_ports: Iterable[int] = (), sample: float = 1.0, topology: str | Path | Topology | None = None,
            geo: str | Path | GeoDB | None = None, idle: float | None = None) -> Result:
    """Classify the TCP connections of capture files, as `rstscope analyze` does.

    ``paths``: one file or several; ``server_ips`` / ``server_ports``: as ``--server-ip`` / ``--server-port``;
    ``sample``: the probability of keeping a new connection; ``topology``: a topology.yaml path or a
    Topology (default: the embedded one); ``geo``: a directory of .mmdb files or a GeoDB; ``idle``: idle
    mode with that many seconds (as ``--idle``).
    """
    from rstscope import config
    from rstscope.geo import GeoDB
    from rstscope.offline import Analyzer, Options, with_window

    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file")
    topo = topology if isinstance(topology, config.Topology) else config.load(topology)
    topo = with_window(topo, idle=idle)
    if geo is None:
        db = GeoDB.empty()
    elif isinstance(geo, GeoDB):
        db = geo
    else:
        db = GeoDB.open(Path(geo))
    opts = Options(list(server_ips), [int(p) for p in server_ports], sample, topo.sampling.mode,
                   topo.sampling.hash_key)
    records: list[ConnectionRecord] = []
    analyzer = Analyzer(topo, opts, db, records.append)
    summary = analyzer.run(files).to_dict()
    return Result(summary, records, list(analyzer.rollup.rows()))
