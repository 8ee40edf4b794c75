"""QUIC header decoding and client Initial decryption (rstscope.decode.quic, rstscope.decode.quic_initial).

Vectors: RFC 9001 appendix A (QUIC v1) and RFC 9369 appendix A (QUIC v2), the client Initial with DCID
0x8394c8f03e515708, as vendored by aioquic's tests/test_crypto_v1.py and test_crypto_v2.py. Round trips:
client Initials and whole handshakes made by aioquic (an independent implementation), in memory.
Robustness: every truncation of a real Initial, near misses built by sealing our own payloads, and a
seeded mutation run in which nothing but QuicDecodeError may escape.
"""

from __future__ import annotations

import datetime
import random
import ssl
import time

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rstscope.decode.quic import (
    QUIC_VERSION_1,
    QUIC_VERSION_2,
    QuicDecodeError,
    QuicPacketHeader,
    QuicPacketType,
    parse_datagram,
)
from rstscope.decode.quic_initial import (
    ClientHello,
    CryptoReassembler,
    InitialKeys,
    decode_packet_number,
    decrypt_initial,
    hkdf_expand_label,
    hkdf_extract,
    initial_keys,
    parse_client_hello,
)

RFC_DCID = bytes.fromhex("8394c8f03e515708")
# RFC 9001 A.2 / RFC 9369 A.2: the unprotected CRYPTO frame (type 06, offset 0, length 0x0f1) and
# the ClientHello it carries; the packet is padded with 917 bytes of PADDING.
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
RFC_CLIENT_HELLO = RFC_CRYPTO_FRAME[4:]
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)
RFC_VECTORS = {QUIC_VERSION_1: RFC9001_CLIENT_INITIAL, QUIC_VERSION_2: RFC9369_CLIENT_INITIAL}
# RFC 9001 A.1 and RFC 9369 A.1: the client Initial key, iv, hp
RFC_KEYS = {
    QUIC_VERSION_1: ("1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
                     "9f50449e04a0e810283a1e9933adedd2"),
    QUIC_VERSION_2: ("8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
                     "45b95e15235d6f45a6b19cbcb0294ba9"),
}
SERVER_ADDR = ("192.0.2.1", 443)
CLIENT_ADDR = ("198.51.100.7", 51000)


# --- helpers -------------------------------------------------------------------------------------


def varint(v: int) -> bytes:
    for n, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * n - 2):
            return (v | prefix << (8 * n - 8)).to_bytes(n, "big")
    raise ValueError(v)


def seal_initial(plain: bytes, dcid: bytes = RFC_DCID, version: int = QUIC_VERSION_1, pn: int = 0,
                 scid: bytes = b"", token: bytes = b"", reserved: int = 0) -> bytes:
    """A protected client Initial carrying ``plain`` (RFC 9001 5.3, 5.4): the inverse of decrypt_initial,
    to build near misses a real client would not send. The packet number is encoded on 4 bytes."""
    keys = initial_keys(dcid, version)
    type_bits = 0 if version == QUIC_VERSION_1 else 1
    first = 0xC0 | type_bits << 4 | reserved << 2 | 0x03
    head = bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid
    head += varint(len(token)) + token + varint(4 + len(plain) + 16)
    pn_bytes = pn.to_bytes(4, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, plain, head + pn_bytes)
    sample = sealed[:16]
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    head = bytes((head[0] ^ (mask[0] & 0x0F),)) + head[1:]
    return head + bytes(a ^ b for a, b in zip(pn_bytes, mask[1:5], strict=True)) + sealed


def initials(datagram: bytes, keys: InitialKeys | None = None) -> list[tuple[QuicPacketHeader, object]]:
    out: list[tuple[QuicPacketHeader, object]] = []
    for h in parse_datagram(datagram):
        if h.packet_type is QuicPacketType.INITIAL:
            assert h.version is not None
            out.append((h, decrypt_initial(datagram, h, keys or initial_keys(h.dcid, h.version))))
    return out


def client_hello_of(datagrams: list[bytes]) -> ClientHello:
    """What a censor does: keys from the first Initial's DCID, every Initial decrypted, CRYPTO reassembled."""
    first = parse_datagram(datagrams[0])[0]
    assert first.version is not None
    keys = initial_keys(first.dcid, first.version)
    r = CryptoReassembler()
    for d in datagrams:
        for h in parse_datagram(d):
            if h.packet_type is QuicPacketType.INITIAL:
                r.add_payload(decrypt_initial(d, h, keys))
    hello = r.client_hello()
    assert hello is not None
    return parse_client_hello(hello)


# --- RFC vectors ---------------------------------------------------------------------------------


def test_hkdf_matches_rfc9001_a1():
    initial_secret = hkdf_extract(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), RFC_DCID)
    assert initial_secret.hex() == "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"
    client_secret = hkdf_expand_label(initial_secret, b"client in", b"", 32)
    assert client_secret.hex() == "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"


@pytest.mark.parametrize("version", [QUIC_VERSION_1, QUIC_VERSION_2])
def test_initial_keys_match_rfc(version):
    keys = initial_keys(RFC_DCID, version)
    assert (keys.key.hex(), keys.iv.hex(), keys.hp.hex()) == RFC_KEYS[version]


@pytest.mark.parametrize("version", [QUIC_VERSION_1, QUIC_VERSION_2])
def test_rfc_client_initial(version):
    datagram = RFC_VECTORS[version]
    [h] = parse_datagram(datagram)
    assert h == QuicPacketHeader(offset=0, long_header=True, version=version, packet_type=QuicPacketType.INITIAL,
                                 fixed_bit=True, dcid=RFC_DCID, scid=b"", token_len=0, length=0x49E, size=1200,
                                 pn_offset=18)
    p = decrypt_initial(datagram, h, initial_keys(h.dcid, version))
    assert p.packet_number == 2
    assert [(f.offset, f.data) for f in p.crypto] == [(0, RFC_CLIENT_HELLO)]
    assert p.padding == 917 and p.connection_close is None and not p.ack and not p.ping
    assert parse_client_hello(p.crypto[0].data) == ClientHello(
        legacy_version=0x0303, server_name="example.com", alpn=("alpn",), supported_versions=(0x0304,),
        quic_transport_parameters=True)


def test_seal_helper_reproduces_the_rfc_packet():
    # the helper used for near misses below is the exact inverse: it rebuilds RFC 9001 A.2 bit for bit
    # (the RFC's packet number is 2 on 4 bytes, as seal_initial encodes it)
    plain = RFC_CRYPTO_FRAME + bytes(917)
    assert seal_initial(plain, pn=2) == RFC9001_CLIENT_INITIAL
    assert seal_initial(plain, pn=2, version=QUIC_VERSION_2) == RFC9369_CLIENT_INITIAL


def test_wrong_keys_and_tampering_fail_as_decode_errors():
    [h] = parse_datagram(RFC9001_CLIENT_INITIAL)
    with pytest.raises(QuicDecodeError) as e:
        decrypt_initial(RFC9001_CLIENT_INITIAL, h, initial_keys(b"\x00" * 8, QUIC_VERSION_1))
    assert e.value.reason == "decryption_failed"
    with pytest.raises(QuicDecodeError) as e:
        decrypt_initial(RFC9001_CLIENT_INITIAL, h, initial_keys(RFC_DCID, QUIC_VERSION_2))
    assert e.value.reason == "version_mismatch"
    bad = bytearray(RFC9001_CLIENT_INITIAL)
    bad[600] ^= 1
    with pytest.raises(QuicDecodeError) as e:
        decrypt_initial(bytes(bad), h, initial_keys(RFC_DCID, QUIC_VERSION_1))
    assert e.value.reason == "decryption_failed"
    with pytest.raises(QuicDecodeError) as e:
        initial_keys(RFC_DCID, 0xFF00001D)
    assert e.value.reason == "unsupported_version"


# --- headers: invariants, coalescing, near misses ------------------------------------------------


def long_header(first: int, version: int, dcid: bytes, scid: bytes, rest: bytes) -> bytes:
    return bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(scid),)) + scid + rest


def test_version_negotiation_and_unknown_versions_stop_at_the_invariants():
    versions = (1).to_bytes(4, "big") + QUIC_VERSION_2.to_bytes(4, "big")
    vn = long_header(0x80 | 0x2A, 0, b"\x01\x02", b"\x03" * 8, versions)
    [h] = parse_datagram(vn)
    assert (h.packet_type, h.version, h.dcid, h.scid, h.size, h.pn_offset) == (
        QuicPacketType.VERSION_NEGOTIATION, 0, b"\x01\x02", b"\x03" * 8, len(vn), None)
    with pytest.raises(QuicDecodeError, match="bad_version_negotiation"):
        parse_datagram(vn[:-1])
    # an unknown version may use connection IDs up to 255 bytes (RFC 8999 5.1); nothing after them is read
    unknown = long_header(0xC0, 0x1A2A3A4A, b"\xaa" * 40, b"", b"\xff" * 30)
    [h] = parse_datagram(unknown)
    assert (h.packet_type, h.version, len(h.dcid), h.length, h.size) == (None, 0x1A2A3A4A, 40, None, len(unknown))
    # v1 limits them to 20
    with pytest.raises(QuicDecodeError) as e:
        parse_datagram(long_header(0xC0, 1, b"\xaa" * 21, b"", bytes(40)))
    assert e.value.reason == "cid_too_long"


def test_retry_and_packet_types_per_version():
    retry = long_header(0xF0, QUIC_VERSION_1, b"\x01" * 8, b"\x02" * 8, b"token" + bytes(16))
    [h] = parse_datagram(retry)
    assert h.packet_type is QuicPacketType.RETRY and h.size == len(retry) and h.length is None
    with pytest.raises(QuicDecodeError, match="truncated_retry"):
        parse_datagram(retry[:-len("token") - 1])
    body = varint(24) + bytes(24)
    # the same type bits mean different packet types in v1 and v2 (RFC 9369 3.2)
    for bits, v1, v2 in ((0, "initial", "retry"), (1, "zero_rtt", "initial"), (2, "handshake", "zero_rtt"),
                         (3, "retry", "handshake")):
        for version, want in ((QUIC_VERSION_1, v1), (QUIC_VERSION_2, v2)):
            rest = (varint(0) + body) if want == "initial" else body if want != "retry" else bytes(16)
            [h] = parse_datagram(long_header(0xC0 | bits << 4, version, b"\x01", b"", rest))
            assert h.packet_type == want


def test_coalesced_long_packets_then_a_short_one():
    dcid = b"\x11" * 5
    initial = long_header(0xC0, 1, dcid, b"\x22", varint(3) + b"tok" + varint(30) + bytes(30))
    handshake = long_header(0xE0, 1, dcid, b"\x22", varint(20) + bytes(20))
    short = bytes((0x41,)) + dcid + b"\x99" * 25
    got = parse_datagram(initial + handshake + short)
    assert [h.packet_type for h in got] == ["initial", "handshake", "one_rtt"]
    assert got[0].token_len == 3 and got[0].length == 30 and got[0].size == len(initial)
    assert got[1].offset == len(initial) and got[1].pn_offset == got[1].offset + len(handshake) - 20
    # the short header takes the DCID length of the packet before it
    assert got[2].dcid == dcid and got[2].scid is None and got[2].version is None
    assert got[2].pn_offset == len(initial) + len(handshake) + 1 + 5 and got[2].size == len(short)
    # alone, the short header's DCID length is what the caller knows
    [s] = parse_datagram(short, short_dcid_len=5)
    assert s.dcid == dcid and s.pn_offset == 6
    [s0] = parse_datagram(short)
    assert s0.dcid == b"" and s0.pn_offset == 1
    # zeros after the last long-header packet are datagram padding (aioquic pads this way)
    assert len(parse_datagram(initial + bytes(500))) == 1
    with pytest.raises(QuicDecodeError, match="packet_too_short"):
        parse_datagram(short[:20], short_dcid_len=5)


def test_header_near_misses():
    ok = long_header(0xC0, 1, b"\x01" * 8, b"", varint(0) + varint(20) + bytes(20))
    assert parse_datagram(ok)[0].size == len(ok)
    cases = {
        "empty_datagram": b"",
        "truncated_long_header": ok[:5],
        "truncated_cid": ok[:8],
        "truncated_varint": long_header(0xC0, 1, b"\x01", b"", b"\x40"),
        "truncated_token": long_header(0xC0, 1, b"\x01", b"", varint(100) + bytes(50)),
        "length_exceeds_datagram": ok[:-1],
        "packet_too_short": long_header(0xC0, 1, b"\x01", b"", varint(0) + varint(19) + bytes(19)),
    }
    for reason, data in cases.items():
        with pytest.raises(QuicDecodeError) as e:
            parse_datagram(data)
        assert e.value.reason == reason, (reason, data.hex())
    # a greased QUIC Bit (RFC 9287) is legal and reported
    assert parse_datagram(bytes((ok[0] & ~0x40,)) + ok[1:])[0].fixed_bit is False


def test_every_truncation_of_a_real_initial_is_a_decode_error():
    for cut in range(1200):
        with pytest.raises(QuicDecodeError):
            parse_datagram(RFC9001_CLIENT_INITIAL[:cut])
    [h] = parse_datagram(RFC9001_CLIENT_INITIAL)
    keys = initial_keys(RFC_DCID, QUIC_VERSION_1)
    for cut in range(0, 1200, 7):
        with pytest.raises(QuicDecodeError):
            decrypt_initial(RFC9001_CLIENT_INITIAL[:cut], h, keys)
    for cut in range(len(RFC_CLIENT_HELLO)):
        with pytest.raises(QuicDecodeError):
            parse_client_hello(RFC_CLIENT_HELLO[:cut])


# --- frames and ClientHello near misses ----------------------------------------------------------


def test_frames_allowed_in_initial():
    ack_ecn = bytes((0x03,)) + varint(5) + varint(0) + varint(1) + varint(2) + varint(0) + varint(1) + varint(7) * 3
    close = bytes((0x1C,)) + varint(0x0A) + varint(0x06) + varint(6) + b"secret"
    app_close = bytes((0x1D,)) + varint(0x100) + varint(0)
    plain = bytes((0x01,)) + ack_ecn + close + app_close + bytes(30)
    [(h, p)] = initials(seal_initial(plain, pn=7, token=b"t" * 9, scid=b"\x05" * 4))
    assert h.token_len == 9 and h.scid == b"\x05" * 4
    assert p.packet_number == 7 and p.ping and p.ack and p.padding == 30
    assert p.connection_close == (0x100, None, True, 0)  # the last CONNECTION_CLOSE wins
    [(_, p)] = initials(seal_initial(close + bytes(20)))
    assert p.connection_close == (0x0A, 0x06, False, 6)
    assert b"secret" not in repr(p).encode()


@pytest.mark.parametrize(("plain", "reason"), [
    (b"", "no_frames"),
    (bytes((0x08,)) + varint(0) + b"data" + bytes(20), "frame_not_allowed_in_initial"),  # STREAM
    (bytes((0x06,)) + varint(0) + varint(100) + b"short", "truncated_frame"),
    (bytes((0x06,)) + varint((1 << 62) - 2) + varint(5) + bytes(5), "crypto_offset_too_large"),
    (bytes((0x1C,)) + varint(1) + varint(0) + varint(50) + b"x", "truncated_frame"),
    (bytes((0x02,)) + varint(1) + varint(0) + varint(1 << 40), "truncated_varint"),
])
def test_frame_near_misses(plain, reason):
    datagram = seal_initial(plain)
    [h] = parse_datagram(datagram)
    with pytest.raises(QuicDecodeError) as e:
        decrypt_initial(datagram, h, initial_keys(h.dcid, QUIC_VERSION_1))
    assert e.value.reason == reason


def test_reserved_bits_are_checked_after_decryption():
    datagram = seal_initial(bytes(30), reserved=1)
    [h] = parse_datagram(datagram)
    with pytest.raises(QuicDecodeError, match="reserved_bits_set"):
        decrypt_initial(datagram, h, initial_keys(h.dcid, QUIC_VERSION_1))


def test_decrypt_refuses_other_packet_types():
    hs = long_header(0xE0, 1, b"\x01", b"", varint(20) + bytes(20))
    [h] = parse_datagram(hs)
    with pytest.raises(QuicDecodeError, match="not_initial"):
        decrypt_initial(hs, h, initial_keys(b"\x01", QUIC_VERSION_1))


def test_packet_number_recovery_rfc9000_a3():
    assert decode_packet_number(0x9B32, 16, 0xA82F30EA) == 0xA82F9B32  # the RFC's example
    assert decode_packet_number(2, 32, -1) == 2
    assert decode_packet_number(0x01, 8, 0xFF) == 0x101


def ch_with_extensions(exts: bytes) -> bytes:
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + len(exts).to_bytes(2, "big") + exts
    return b"\x01" + len(body).to_bytes(3, "big") + body


def ext(etype: int, data: bytes) -> bytes:
    return etype.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def test_client_hello_near_misses():
    sni = ext(0, (len(b"a.example") + 3).to_bytes(2, "big") + b"\x00" + len(b"a.example").to_bytes(2, "big")
              + b"a.example")
    ok = ch_with_extensions(sni + ext(0x39, b""))
    assert parse_client_hello(ok) == ClientHello(0x0303, "a.example", (), (), True)
    # no server_name extension (a client connecting to an IP address): None, not an error
    assert parse_client_hello(ch_with_extensions(ext(0x39, b"") + ext(13, b"\x00\x02\x04\x03"))).server_name is None
    bad = {
        "duplicate_extension": ch_with_extensions(sni + sni),
        "trailing_bytes": ok + b"\x00",
        "not_client_hello": b"\x02" + ok[1:],
        "bad_server_name": ch_with_extensions(ext(0, b"\x00\x05\x00\x00\x02\xff\xfe")),
        "bad_alpn": ch_with_extensions(ext(16, b"\x00\x03\x02h3\x00")),
        "bad_client_hello_vector": ch_with_extensions(ext(16, b"\x00\x01\x00")),
        "bad_supported_versions": ch_with_extensions(ext(43, b"\x03\x03\x04\x03")),
        "truncated_client_hello": ch_with_extensions(b"\x00\x00\x00\x10" + bytes(4)),
    }
    for reason, data in bad.items():
        with pytest.raises(QuicDecodeError) as e:
            parse_client_hello(data)
        assert e.value.reason == reason, reason


def test_crypto_reassembler():
    hello = RFC_CLIENT_HELLO
    r = CryptoReassembler()
    pieces = [(o, hello[o:o + 50]) for o in range(0, len(hello), 50)]
    random.Random(3).shuffle(pieces)
    for i, (o, d) in enumerate(pieces):
        assert r.client_hello() is None or i == 0
        r.add(o, d)
        r.add(o, d[:10])  # duplicates and overlaps are fine
    assert r.client_hello() == hello and r.contiguous == len(hello)
    with pytest.raises(QuicDecodeError, match="crypto_overlap_mismatch"):
        r.add(10, b"\x00" * 5)  # the same offsets with other bytes: an evasion attempt, or corruption
    small = CryptoReassembler(max_bytes=100)
    with pytest.raises(QuicDecodeError, match="crypto_beyond_bound"):
        small.add(90, bytes(11))
    with pytest.raises(QuicDecodeError, match="crypto_beyond_bound"):
        small.add((1 << 62) - 1, b"x")
    small.add(0, hello[:4])  # announces 241 bytes: more than the bound
    with pytest.raises(QuicDecodeError, match="client_hello_beyond_bound"):
        small.client_hello()
    other = CryptoReassembler()
    other.add(0, b"\x02\x00\x00\x01\x00")
    with pytest.raises(QuicDecodeError, match="not_client_hello"):
        other.client_hello()


# --- round trips against aioquic ------------------------------------------------------------------


@pytest.fixture(scope="module")
def aioquic():
    return pytest.importorskip("aioquic.quic.connection")


def client_config(**kw):
    from aioquic.quic.configuration import QuicConfiguration

    kw.setdefault("alpn_protocols", ["h3"])
    kw.setdefault("server_name", "blocked.example")
    return QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE, **kw)


def first_flight(aioquic, **kw) -> list[bytes]:
    c = aioquic.QuicConnection(configuration=client_config(**kw))
    c.connect(SERVER_ADDR, now=0.0)
    return [d for d, _ in c.datagrams_to_send(now=0.0)]


@pytest.mark.parametrize("version", [QUIC_VERSION_1, QUIC_VERSION_2])
def test_aioquic_client_initial(aioquic, version):
    flight = first_flight(aioquic, original_version=version, token=b"\x07" * 17)
    assert len(flight) == 1 and len(flight[0]) >= 1200
    [h] = parse_datagram(flight[0])
    assert h.packet_type is QuicPacketType.INITIAL and h.version == version and len(h.dcid) == 8
    assert h.token_len == 17 and len(h.scid or b"") == 8
    assert client_hello_of(flight) == ClientHello(0x0303, "blocked.example", ("h3",), (0x0304,), True)


@pytest.mark.parametrize("kw", [
    {"quantum_readiness_test": True},  # a large ClientHello, as Chrome's post-quantum key share makes
    {"alpn_protocols": ["h3", *(f"x-{i:03d}-" + "y" * 60 for i in range(40))]},
])
def test_aioquic_client_hello_across_several_initials(aioquic, kw):
    flight = first_flight(aioquic, **kw)
    packets = [(d, h) for d in flight for h in parse_datagram(d)]
    assert len(packets) >= 2 and all(h.packet_type is QuicPacketType.INITIAL for _, h in packets)
    keys = initial_keys(packets[0][1].dcid, QUIC_VERSION_1)
    payloads = [decrypt_initial(d, h, keys) for d, h in packets]
    assert [p.packet_number for p in payloads] == list(range(len(payloads)))
    r = CryptoReassembler()
    for p in reversed(payloads):  # any order
        assert r.client_hello() is None
        r.add_payload(p)
    hello = r.client_hello()
    assert hello is not None
    ch = parse_client_hello(hello)
    assert ch.server_name == "blocked.example"
    assert ch.alpn == tuple(kw.get("alpn_protocols", ["h3"]))
    # the first Initial alone does not hold the whole ClientHello
    one = CryptoReassembler()
    one.add_payload(payloads[0])
    assert one.client_hello() is None


def test_aioquic_client_close_in_initial(aioquic):
    c = aioquic.QuicConnection(configuration=client_config())
    c.connect(SERVER_ADDR, now=0.0)
    c.datagrams_to_send(now=0.0)
    c.close(error_code=0x10A, reason_phrase="go away")
    closing = [d for d, _ in c.datagrams_to_send(now=0.01)]
    [h] = parse_datagram(closing[0])
    assert h.dcid == c.original_destination_connection_id
    p = decrypt_initial(closing[0], h, initial_keys(h.dcid, QUIC_VERSION_1), largest_pn=0)
    assert p.packet_number == 1 and p.crypto == ()
    # RFC 9000 10.2.3: before the handshake completes, an application close is sent as a transport
    # CONNECTION_CLOSE with APPLICATION_ERROR (0x0c) and no reason phrase
    assert p.connection_close == (0x0C, 0, False, 0)


@pytest.fixture(scope="module")
def server_config():
    pytest.importorskip("aioquic")
    from aioquic.quic.configuration import QuicConfiguration
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "blocked.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("blocked.example")]), critical=False)
            .sign(key, hashes.SHA256()))
    cfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    cfg.certificate = cert
    cfg.private_key = key
    return cfg


def test_aioquic_handshake_client_packets(aioquic, server_config):
    from aioquic.quic.events import HandshakeCompleted

    client = aioquic.QuicConnection(configuration=client_config(connection_id_length=8))
    client.connect(SERVER_ADDR, now=0.0)
    server = aioquic.QuicConnection(configuration=server_config,
                                    original_destination_connection_id=client.original_destination_connection_id)
    sent: list[bytes] = []
    done = False
    now = 0.0
    for _ in range(20):
        now += 0.01
        out = [d for d, _ in client.datagrams_to_send(now=now)]
        sent += out
        for d in out:
            server.receive_datagram(d, CLIENT_ADDR, now=now)
        for d, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(d, SERVER_ADDR, now=now)
        while (ev := client.next_event()) is not None:
            done = done or isinstance(ev, HandshakeCompleted)
        if done and not out:
            break
    assert done
    sid = client.get_next_available_stream_id()
    client.send_stream_data(sid, b"GET /", end_stream=True)
    sent += [d for d, _ in client.datagrams_to_send(now=now + 0.01)]

    first = parse_datagram(sent[0])[0]
    keys = initial_keys(first.dcid, QUIC_VERSION_1)  # all client Initials use the original DCID's keys
    server_cid = b""
    types: list[str] = []
    largest = -1
    for d in sent:
        for h in parse_datagram(d, short_dcid_len=len(server_cid)):
            types.append(h.packet_type)
            if h.packet_type is QuicPacketType.INITIAL:
                p = decrypt_initial(d, h, keys, largest_pn=largest)
                largest = max(largest, p.packet_number)
            elif h.packet_type is QuicPacketType.HANDSHAKE:
                server_cid = h.dcid
            elif h.packet_type is QuicPacketType.ONE_RTT:
                assert h.dcid == server_cid and not h.long_header and h.version is None
    assert server_cid and server_cid != first.dcid
    # what the server receives, in order: Initial(s), then Handshake, then 1-RTT, never backwards
    order = {"initial": 0, "handshake": 1, "one_rtt": 2}
    ranks = [order[t] for t in types]
    assert ranks == sorted(ranks) and set(ranks) == {0, 1, 2}, types
    assert largest >= 1  # the client's second Initial (an ACK of the server's) decrypted with the first keys


# --- deterministic mutation property: only QuicDecodeError escapes --------------------------------


def _walk(datagram: bytes) -> None:
    r = CryptoReassembler()
    for h in parse_datagram(datagram, short_dcid_len=8):
        if h.packet_type is QuicPacketType.INITIAL and h.version is not None:
            r.add_payload(decrypt_initial(datagram, h, initial_keys(h.dcid, h.version)))
    hello = r.client_hello()
    if hello is not None:
        parse_client_hello(hello)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        n = len(b)
        if op == 0 and n:
            b[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1 and n:
            b[rng.randrange(n)] = rng.choice((0, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF, rng.randrange(256)))
        elif op == 2:
            i = rng.randrange(n + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif op == 3 and n:
            i = rng.randrange(n)
            del b[i:i + rng.randrange(1, 16)]
        elif op == 4 and n:
            del b[rng.randrange(n):]
    return bytes(b)


def test_mutated_inputs_raise_only_decode_errors():
    rng = random.Random(20240917)
    datagrams = list(RFC_VECTORS.values())
    plains = [RFC_CRYPTO_FRAME + bytes(40), bytes((0x03,)) + varint(5) + varint(0) + varint(1) + varint(2)
              + varint(0) + varint(1) + varint(7) * 3 + bytes((0x1C,)) + varint(0x0A) + varint(0x06) + varint(1)
              + b"x" + RFC_CRYPTO_FRAME]
    t0 = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    for i in range(2000):
        kind = i % 4
        try:
            if kind == 0:  # protected bytes: mostly header and AEAD failures
                _walk(_mutate(rng, rng.choice(datagrams)))
            elif kind in (1, 2):  # plaintext mutated, then sealed: the frame parser and the ClientHello
                _walk(seal_initial(_mutate(rng, rng.choice(plains)), pn=rng.randrange(4)))
            else:
                parse_client_hello(_mutate(rng, RFC_CLIENT_HELLO))
            outcomes["ok"] += 1
        except QuicDecodeError:
            outcomes["error"] += 1
    assert outcomes["ok"] > 100 and outcomes["error"] > 100, outcomes
    assert time.perf_counter() - t0 < 10
