#!/usr/bin/python3
"""Write the seed corpora of the fuzz targets into tests/fuzz/corpus/.

    tests/fuzz/make-seeds.py

Seeds are small valid inputs, so the fuzzer starts from a complete
handshake and working requests rather than having to discover the magic
numbers.  The output is deterministic; rerunning rewrites the same
files.  Regression inputs (reproducers of fixed bugs) live in the same
directories under names starting with "regress-" and are not touched.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST = 1, 2, 3
OPT_STARTTLS, OPT_INFO, OPT_GO = 5, 6, 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 9, 10
INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 4, 5, 6, 7
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_REQ_ONE, FLAG_FAST_ZERO = (
    1, 2, 4, 8, 16)


def opt(option, data=b""):
    return struct.pack(">QII", IHAVEOPT, option, len(data)) + data


def go_data(name=b"", infos=()):
    return (struct.pack(">I", len(name)) + name
            + struct.pack(">H", len(infos))
            + b"".join(struct.pack(">H", i) for i in infos))


def meta_data(name=b"", queries=(b"base:allocation",)):
    return (struct.pack(">I", len(name)) + name
            + struct.pack(">I", len(queries))
            + b"".join(struct.pack(">I", len(q)) + q for q in queries))


def req(cmd, offset=0, count=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset,
                       count) + payload


def requests(structured):
    out = [
        req(CMD_WRITE, 0, 512, cookie=1, payload=bytes(range(256)) * 2),
        req(CMD_READ, 0, 512, cookie=2),
        req(CMD_WRITE, 4096, 512, FLAG_FUA, cookie=3, payload=b"\xa5" * 512),
        req(CMD_FLUSH, cookie=4),
        req(CMD_TRIM, 0, 4096, cookie=5),
        req(CMD_WRITE_ZEROES, 8192, 8192, cookie=6),
        req(CMD_WRITE_ZEROES, 8192, 4096, FLAG_NO_HOLE | FLAG_FAST_ZERO,
            cookie=7),
        req(CMD_CACHE, 0, 65536, cookie=8),
        req(CMD_READ, 1048576, 512, cookie=9),       # past the end
        req(CMD_WRITE, 0, 0, cookie=10),             # zero length
    ]
    if structured:
        out += [
            req(CMD_BLOCK_STATUS, 0, 65536, cookie=11),
            req(CMD_BLOCK_STATUS, 512, 65536, FLAG_REQ_ONE, cookie=12),
            req(CMD_READ, 0, 4096, FLAG_DF, cookie=13),
        ]
    return b"".join(out) + req(CMD_DISC, cookie=99)


def handshake_seeds():
    full = (b"\x00\x00\x00\x03"
            + opt(OPT_STRUCTURED_REPLY)
            + opt(OPT_SET_META_CONTEXT, meta_data())
            + opt(OPT_GO, go_data(b"", (INFO_NAME, INFO_DESCRIPTION,
                                        INFO_BLOCK_SIZE))))
    simple = (b"\x00\x00\x00\x01"
              + opt(OPT_EXPORT_NAME, b""))
    haggle = (b"\x00\x00\x00\x03"
              + opt(OPT_LIST)
              + opt(OPT_INFO, go_data(b"a", (INFO_BLOCK_SIZE,)))
              + opt(OPT_INFO, go_data(b"fail"))
              + opt(OPT_LIST_META_CONTEXT, meta_data(b"", (b"base:",)))
              + opt(OPT_LIST_META_CONTEXT, meta_data(b"", ()))
              + opt(OPT_STARTTLS)
              + opt(OPT_STRUCTURED_REPLY)
              + opt(OPT_STRUCTURED_REPLY)
              + opt(1000, b"junk")
              + opt(OPT_SET_META_CONTEXT, meta_data(b"other"))
              + opt(OPT_GO, go_data(b"a", (INFO_NAME,))))
    seeds = {
        # conf0 0, conf1 0x0f: FUA native, flush/trim/zero, extents.
        "full-structured": b"\x00\x0f" + full + requests(True),
        "full-features": b"\x28\xff" + full + requests(True),
        "v1-plugin": b"\x40\x04" + full + requests(True),
        "big-export": b"\xa0\x3e" + full + requests(True)
        + req(CMD_READ, 1 << 40, 4096, cookie=20),
        "readonly": b"\x01\x0f" + full + requests(True),
        "simple-replies": b"\x00\x06" + simple + requests(False),
        "no-zeroes-oldstyle": b"\x10\x00" + b"\x00\x00\x00\x00"
        + opt(OPT_EXPORT_NAME, b"") + requests(False),
        "haggle": b"\x00\x9f" + haggle + requests(True),
        "abort": b"\x00\x00\x00\x00\x00\x03" + opt(OPT_ABORT),
        "errors": b"\x00\x4f" + full + requests(True),
    }
    return seeds


def validate_seeds():
    def one(size, eflags, sflags, cmd, offset, count, flags, err,
            start, end, bcount, bflags, extents):
        state = struct.pack(">QHB", size, eflags, sflags)
        wire = struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, 7, offset,
                           count)
        bs = struct.pack(">iQQQB", err, start << 2, end << 2, bcount,
                         bflags)
        ext = b"".join(struct.pack(">QB", ln, t) for ln, t in extents)
        return state + wire + bs + ext
    all_flags = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x100 | 0x800
    return {
        "read-ok": one(1 << 20, all_flags, 3, CMD_READ, 0, 4096, 0, 5,
                       0, 1 << 20, 65536, 0x20,
                       [(4096, 0), (4096, 3), (1 << 20, 1)]),
        "write-fua": one(1 << 20, all_flags, 3, CMD_WRITE, 512, 512,
                         FLAG_FUA, 28, 512, 1 << 20, 1 << 19, 1,
                         [(100, 0), (1 << 33, 2)]),
        "block-status": one(1 << 40, all_flags, 3 | (9 << 2),
                            CMD_BLOCK_STATUS, 0, 1 << 30, FLAG_REQ_ONE,
                            95, 0, 1 << 40, 1 << 39, 0xfe,
                            [(1 << 33, 0), (1 << 33, 3)]),
        "zero-fast": one(1 << 20, all_flags, 1, CMD_WRITE_ZEROES, 0,
                         8192, FLAG_FAST_ZERO | FLAG_NO_HOLE, 95,
                         0, 0, 0, 0, []),
        "flush-bad": one(1 << 20, all_flags, 0, CMD_FLUSH, 1, 0, 0, 75,
                         5, 4, 0, 0, []),
    }


def parse_seeds():
    strings = [
        (0, b"1G"), (0, b"1023"), (0, b"9223372036854775807"),
        (0, b"8E"), (1, b"yes"), (1, b"Off"), (2, b"-0x10"),
        (2, b" 077"), (3, b"18446744073709551615"), (4, b"2147483648"),
        (5, b"-128"), (6, b"32767"), (7, b"-2147483649"), (8, b"0xffffffff"),
        (9, b"256"), (10, b"65535"), (11, b"4294967295"),
        (12, b"0.1"), (12, b"10%"), (12, b"1:10"), (12, b"1/0"),
        (12, b"1e-3"), (13, b"1.5"), (13, b"10ms"), (13, b"3us"),
        (13, "7\u00b5s".encode()), (13, b"0.000000001"),
        (13, b"4294967295.999999999"), (13, b"12ns"),
    ]
    return {"s%02d" % i: bytes([fn]) + s for i, (fn, s) in
            enumerate(strings)}


def data_format_seeds():
    # Byte 0: 0 parses data=, 1 decodes base64.
    texts = [
        b"1 2 3", b"@32 0x55 0xaa", b'"hello\\x00world\\n"', b"0*4096",
        b"(1 2)*3 @^512", b"@+16 1 @-4 2", b"\\a 1 2 \\a \\a",
        b"$A $B", b'"abcdef"[1:4]', b"le16:0x1234 be32:0x12345678",
        b"le64:-1 be16:65535", b"(0x01 @+7)*64[8:24]", b"$LOOP",
    ]
    seeds = {"d%02d" % i: b"\x00" + t for i, t in enumerate(texts)}
    seeds["b64-ok"] = b"\x01aGVsbG8gd29ybGQ="
    seeds["b64-bad"] = b"\x01aGVsbG8=x"
    return seeds


def partition_seeds():
    def part(size, align_exp, mbr_id, name=b""):
        return (struct.pack(">QBB", size - 1, align_exp, mbr_id)
                + bytes(range(32)) + name + b"\x00")
    mib = 1024 * 1024
    return {
        "mbr-1": bytes([0 << 1 | 0]) + part(mib, 20, 0x83),
        "mbr-4": bytes([3 << 1 | 0]) + b"".join(
            part(mib * (i + 1), 9 + i, 0x83) for i in range(4)),
        "mbr-6-ebr": bytes([5 << 1 | 0]) + b"".join(
            part(512 * (i + 7), 9, 0x0c) for i in range(6)),
        "gpt-2": bytes([1 << 1 | 1]) + part(mib, 20, 0, b"root")
        + part(3 * mib + 512, 12, 0, "\u00e9t\u00e9".encode())
        + b"0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "gpt-bad-align": bytes([0 << 1 | 1]) + part(mib, 21, 0),
        "mbr-too-big": bytes([0]) + part(1 << 41, 20, 0x83),
    }


def request_ext_seeds():
    """fuzz-request-ext: size, eflags, state byte, a 32-byte extended
    request, then extents (8-byte length, 1-byte type)."""
    ext_magic = 0x21e41c71
    payload_len = 0x20
    all_flags = 0x0fff
    gib = 1 << 30

    def seed(cmd, offset, length, flags=0, size=8 * gib, state=1,
             extents=()):
        return (struct.pack(">QHB", size << 1, all_flags, state) +
                struct.pack(">IHHQQQ", ext_magic, flags, cmd, 7, offset,
                            length) +
                b"".join(struct.pack(">QB", n, t) for n, t in extents))

    return {
        "write-payload": seed(CMD_WRITE, 4096, 4096, payload_len),
        "write-no-payload-len": seed(CMD_WRITE, 0, 4096),
        "trim-with-payload": seed(CMD_TRIM, 0, 512, payload_len),
        "zero-5g": seed(CMD_WRITE_ZEROES, 0, 5 * gib),
        "read-too-big": seed(CMD_READ, 0, 65 << 20),
        "block-status-64": seed(CMD_BLOCK_STATUS, 0, 6 * gib, 0,
                                extents=((5 * gib, 3), (3 * gib, 0))),
        "block-status-req-one": seed(CMD_BLOCK_STATUS, gib, 2 * gib,
                                     FLAG_REQ_ONE,
                                     extents=((7 * gib, 1),)),
        "aligned": seed(CMD_CACHE, 8192, 8192, state=1 | 12 << 1),
    }


def luks_json_seeds():
    """fuzz-luks-json: LUKSv2 metadata as cryptsetup 2.6 writes it, and
    smaller documents for the corners of the grammar."""
    meta = (
        b'{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":'
        b'"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw",'
        b'"offset":"32768","size":"258048","encryption":"aes-xts-plain64",'
        b'"key_size":64},"kdf":{"type":"argon2id","time":4,"memory":32,'
        b'"cpus":2,"salt":"lR1QQZt9kpI4456fmKg3zIF1kzso8FVcC2fbyxTbbqQ="}}},'
        b'"tokens":{},"segments":{"0":{"type":"crypt","offset":"16777216",'
        b'"size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64",'
        b'"sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":'
        b'["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":'
        b'"a6f7XH/RDErmMAE6aHFlo/rKEnClIdgNjv6dOZLzs68=","digest":'
        b'"2IAmOaazgMvLGPKO8FgvEu9eouqIF4Ep688vwf2QllU="}},"config":'
        b'{"json_size":"12288","keyslots_size":"16744448"}}')
    return {
        "luks2-meta": meta,
        "escapes": b'["a\\"b\\n", "\\u00e9\\ud83d\\ude00", "\xc3\xa9"]',
        "numbers": b"[0, -0, 1.5e3, 18446744073709551615, 1E-9]",
        "nested": b"[" * 32 + b"]" * 32,
        "literals": b'{"t":true,"f":false,"n":null,"e":{},"a":[]}',
        "duplicate": b'{"a":1,"a":2}',
    }


def write(target, seeds):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for name, data in sorted(seeds.items()):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("fuzz-handshake", handshake_seeds())
    write("fuzz-validate", validate_seeds())
    write("fuzz-request-ext", request_ext_seeds())
    write("fuzz-parse", parse_seeds())
    write("fuzz-data-format", data_format_seeds())
    write("fuzz-partition", partition_seeds())
    write("fuzz-luks-json", luks_json_seeds())


if __name__ == "__main__":
    main()
