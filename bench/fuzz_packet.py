"""Fuzz the packet-message decoder (msgpack, schemas 1 and 2: batches) and the worker's connection stage behind it.

Every input goes to ``ConnectionStage.feed`` exactly as the worker's connection agent gives it a Kafka
message value: a ``CodecError`` is a dead letter (counted by reason), a packet or watermark goes into
the partition's connection table. Nothing may raise. Seeds: real records (packets of every flag mix,
watermarks) and the garbage of the dead-letter test.
``python bench/fuzz_packet.py [--engine atheris|mutate] [--runs N]`` (see fuzz_common.py).
"""

from __future__ import annotations

from fuzz_common import Target, main


def make_target() -> Target:
    from rstscope.config import load
    from rstscope.streams.connection_agent import ConnectionStage

    topo = load(None)
    state = {"stage": ConnectionStage(topo, warmup_s=0), "n": 0}

    def target(data: bytes) -> str:
        state["n"] = n = int(state["n"]) + 1  # type: ignore[call-overload]
        if n % 5000 == 0:  # bound the memory the open connections take
            state["stage"] = ConnectionStage(topo, warmup_s=0)
        stage: ConnectionStage = state["stage"]  # type: ignore[assignment]
        records, errors = stage.feed(0, data, None)
        stage.ackable(0)
        for err in errors:
            # processing_error: the stage caught an exception of the table (no crash loop in the
            # worker, but a bug all the same): a finding for the fuzzer
            assert err.reason != "processing_error", str(err)
        if errors:
            return f"dead:{errors[0].reason}" + ("" if len(errors) == 1 else "+")
        return "records" if records else "accepted"

    return target


def seeds() -> list[bytes]:
    import msgpack

    from rstscope.codecs.packet import (
        Watermark,
        encode_batch,
        encode_packet,
        encode_packet_v1,
        encode_watermark,
        packet_fields,
    )
    from rstscope.packet import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, PacketRecord

    out = []
    c, s = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    t = 1_700_000_100.0
    for i, flags in enumerate((TH_SYN, TH_ACK, TH_PSH | TH_ACK, TH_RST, TH_FIN | TH_ACK, TH_RST | TH_ACK)):
        out.append(encode_packet(PacketRecord(t + i, 4, c, s, 40000, 443, flags, 1000 + i, 5001, 100 + i, 64, 64240,
                                              100 * (flags == TH_PSH | TH_ACK), 20 * (flags == TH_SYN))))
    out.append(encode_packet(PacketRecord(t, 6, bytes(15) + b"\x01", bytes(15) + b"\x02", 1, 2, TH_SYN, 0, 0, None,
                                          64, 1, 0, 0)))
    out.append(encode_batch("edge:1", [packet_fields(PacketRecord(t + i / 10, 4, c, s, 40001 + i % 3, 443, flags, 1000,
                                                                    5001, i, 64, 64240, 0, 0))
                                       for i, flags in enumerate((TH_SYN, TH_ACK, TH_RST) * 3)]))
    out.append(encode_packet_v1(PacketRecord(t, 4, c, s, 40000, 443, TH_SYN, 7, 0, 1, 64, 64240, 0, 20)))
    out += [encode_watermark(Watermark(t + 20, "edge:1", False)), encode_watermark(Watermark(t + 40, "edge:1", True))]
    out += [b"\xc1\xff\x00random", msgpack.packb([2, 0, 1.0]), out[0][:-3]]
    return out


if __name__ == "__main__":
    raise SystemExit(main("packet", make_target, seeds))
