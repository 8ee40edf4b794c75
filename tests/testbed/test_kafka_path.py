"""The tampering bed's capture through the Kafka path: edge -> packets topic -> workers -> rollups and
connection records, equal to `rstscope analyze` on the same capture (SIGCOMM signatures included)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rstscope.codecs.jsonl import loads
from rstscope.core.rollup import row_key_of, row_key_text
from rstscope.offline import Analyzer, Options

_PIPELINE = Path(__file__).resolve().parent.parent / "kafka" / "test_pipeline.py"
_spec = importlib.util.spec_from_file_location("rstscope_pipeline_helpers", _PIPELINE)
assert _spec and _spec.loader
pl: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pl)


@pytest.mark.kafka
@pytest.mark.realnet
def test_bed_capture_through_kafka_equals_offline(bed_report: dict, kafka_bootstrap: str) -> None:
    pcap = Path(bed_report["out"]) / "bed.pcap"
    work = Path(tempfile.mkdtemp(prefix="rstscope-bed-kafka-"))
    tag = f"bed{uuid.uuid4().hex[:8]}"
    topo_path, topo = pl.topology_file(work, tag)
    app_id = f"{tag}-app"
    r = pl.rstscope("topics", "apply", "--bootstrap", kafka_bootstrap, "--topology", str(topo_path),
                    "--app-id", app_id)
    assert r.returncode == 0, r.stderr
    workers = pl.Workers(work, kafka_bootstrap, topo_path, app_id)
    try:
        records: list[dict[str, Any]] = []
        an = Analyzer(topo, Options(), on_record=records.append)
        an.run([pcap])
        expected = {row_key_text(row_key_of(x)): x for x in an.rollup.rows()}
        assert sum(1 for rec in records if rec["signature"]) > 50
        proc, log = workers.start()
        workers.wait_log(log, pl.READY, proc, 90)
        e = pl.rstscope("edge", "--pcap", str(pcap), "--bootstrap", kafka_bootstrap, "--topology",
                        str(topo_path), "--sample", "1", "--json")
        assert e.returncode == 0, e.stderr
        rows = pl.wait_rows(kafka_bootstrap, topo.topics["rollups"].name, expected, workers, timeout=90)
        assert rows == expected, workers.logs()
        streamed = {loads(v)["id"]: loads(v) for _k, v, _p, _o in
                    pl.read_topic(kafka_bootstrap, topo.topics["connections"].name)}
        assert set(streamed) == {rec["id"] for rec in records}
        for rec in records:
            got = streamed[rec["id"]]
            assert (got["stage"], got["tags"], got["signature"], got["injected"]) == \
                (rec["stage"], rec["tags"], rec["signature"], rec["injected"])
        sigs = Counter(rec["signature"] for rec in records if rec["signature"])
        assert len(sigs) == 19, sigs
    finally:
        workers.stop_all()
        shutil.rmtree(work, ignore_errors=True)
