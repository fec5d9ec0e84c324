"""data, random and sparse-random plugins, compared with Debian's
nbdkit 1.32 running its own plugin of the same name.

data: for every expression in DATA_CASES both servers must agree on
whether they start, and then on the size, every byte and block status
(the hole bit included).  The table was built by probing Debian's
plugin; tests/unit/test-data-format.c checks the parser alone.

random and sparse-random: byte equality with Debian's would need its
exact generator, so the tests check what the man pages promise
instead: same seed same disk, writes accepted only when they match,
the share of data set by percent=, and the shape of the extents map.
"""
import os
import subprocess

import nbd
import pytest

from conftest import BINARIES
from util import block_status, connect, errno_of, export_flags, start_both

PAGE = 32768


# The export flags compared with nbdkit's.
FLAGS = ["get_size", "is_read_only", "can_flush", "can_fua", "can_trim",
         "can_zero", "can_fast_zero", "can_multi_conn", "can_cache"]


def start_or_error(server, name, args, impl, env=None):
    """Start a server; return it, or None if it refused the arguments."""
    try:
        return server(name, *args, impl=impl, env=env)
    except RuntimeError:
        return None


def view(srv):
    """Everything a client can see of a small disk."""
    h = connect(srv)
    size = h.get_size()
    data = bytes(h.pread(min(size, 1 << 20), 0)) if size else b""
    extents = block_status(h, min(size, 1 << 30), 0) if size else []
    return export_flags(h, FLAGS), size, data, extents


# Files read by <FILE cases, created in the test's directory.
FILES = {
    "f3": b"ABC",
    "f0": b"",
    "z64k": bytes(65536),
    "a40k": b"A" + bytes(40000),
}

# Each entry is the argument list after the plugin name.  "FILE:x" is
# replaced by the path of file x.
DATA_CASES = [
    # Bytes, numbers and their quirks.
    ["1 2 3"], ["0x10 010 10"], ["08"], ["0x"], ["0x 1"], ["0xFF 0XFF"],
    ["4294967297"], ["256"], ["99999999999999999999"], ["+5"], ["1e"],
    ["1,2"], ["1\t2\n3"], [" 1"], [""],
    # Offsets and alignment.
    ["@4 1"], ["@4"], ["@4 @2"], ["1 @+3 2"], ["@+ 4"], ["@ 4"],
    ["@+-1"], ["1 2 3 4 5 @-2 9"], ["@-1 1"], ["@-0"], ["1 @^8 2"],
    ["1 @^0 2"], ["1 @^3 2"], ["@^4"], ["@^0x10 1"], ["@08"], ["@0x"],
    ["@010 1"], ["1 2 @1 9"], ["@+1T"], ["@1099511627776 1"],
    ["@9223372036854775806 1"],
    # Repeats.
    ["(1 2)*3"], ["1*4"], ["1 * 4"], ["1*0"], ["(1 2)*0"], ["1*2*3"],
    ["1*-1"], ["1*0x2"], ["1*1k"], ["*2"], ["1*"], ["@4*2"], ["@^4*2"],
    ["(1 2 3 @1)*2"], ["(@3)*2"], ["(@1000)*0"], ["()*5"],
    ["(0x55 0xAA)*2048"], ["(\"Hello\")*2000", "size=8192"],
    ["(@1048576 1)*100"], ["(1)*9223372036854775807"],
    # Slices.
    ["(1 2 3 4)[1:3]"], ["(1 2 3)[:]"], ["(1 2 3)[2]"], ["(1 2 3)[1:1]"],
    ["(1 2 3)[2:1]"], ["(1 2 3)[0:5]"], ["(1 2 3)[4:]"], ["(1 2 3)[3:]"],
    ["(1 2 3)[5:5]"], ["(1 2 3)[-1:]"], ["(1 2 3)[-1:3]"],
    ["(1 2 3)[-3:]"], ["(1 2 3)[:-2]"], ["(1 2 3)[1:-2]"],
    ["(1 2 3)[4:-1]"], ["(1 2)[ 1:1]"], ["(1 2)[: 1]"], ["(1 2)[ :1]"],
    ["(1 2)[:1 ]"], ["(1 2)[]"], ["(1 2)[1:2"], ["(1 2)[1:2]x"],
    ["(1 2) [1:]"], ["(1 2)*2[1:3]"], ["(1 2)[1:]*3"], ["1[0:1]"],
    ["\"abc\"[:2]*2"], ["(@10 1)[5:]"], ["(@3)[1:2]"], ["@4[0:0]"],
    ["1*3[1:]*2"], ["\"ab\"*2[1:3]"], ["(1 2 3)[1:][1:]"],
    # Strings and words.
    ['"ab\\n\\x41"'], ['"\\t\\r\\a\\b\\f\\v\\e"'], ['"\\0"'], ['"\\101"'],
    ['"\\x4"'], ['"\\x414"'], ['"\\u0041"'], ['"\\\\\\""'], ['"\\q"'],
    ['"abc'], ['"a"b'], ['"a" "b"'], ['"#"'], ['("(")'], ['(")")'],
    ["le16:0x1234 be16:0x1234"], ["le32:1 be32:1"],
    ["le64:1 be64:0x0102030405060708"], ["le16:65536"], ["le16:-1"],
    ["be32:0xffffffff"], ["le64:0xffffffffffffffff"], ["le16:"],
    ["le16: 1"], ["le8:1"], ["LE16:1"], ["le16:010"], ["le16:1k"],
    ["le16:1)"], ["(le16:1)"], ["le"],
    ["0 1 2 3 @^0x200 @-2 le16:0xaa55"],
    ["@0x1be 0 0 2 0 0x83 0x20 0x20 0 le32:1 le32:0x7ff @0x1fe 0x55 0xaa",
     "size=1M"],
    # Groups, names and comments.
    ["()"], ["( )"], ["(1"], ["1)"], ["1(2)"], ['1"a"'], ["(1)(2)"],
    ["1@2 3"], ["#c\n1"], ["1#c"], ["(#c\n1)"],
    ["(1 2)->\\a \\a \\a"], ["1 2 -> \\a \\a"], ["1 -> \\a"], ["\\a"],
    ["(1 2) -> \\a-b_c \\a-b_c"], ["(1 2) -> \\a \\a*2"],
    ["((1) -> \\a) \\a"], ["(1)->\\a (\\a \\a)->\\b (2)->\\a \\b"],
    ["\\a -> \\b"], ["\\a -> \\b \\b"], ["@2 1 -> \\a \\a"],
    ["(1)->\\"], ["(1)->\\ab.c"], ["(1) -> \\a[0:1]"], ["\\a\\b"],
    ["(\\c)->\\b (5)->\\c \\b"], ["(5)->\\c (\\c)->\\b (6)->\\c \\b"],
    ["1 -> \\x -> \\y \\y"], ["1 -> \\x -> \\y \\y \\x"], ["@4 -> \\x"],
    ["(1)->\\a \\a->\\b \\b"], ['"" -> \\x \\x 1'], ["1 -x"], ["1 >"],
    ["256 -> \\y"], ["(@-1) -> \\y"], ["(1 2)[5:1] -> \\y"],
    # Variables (parameters win over the environment).
    ["$p*2", "p=1 2"], ["1 $p", "p=@2 1"], ["$p[1:]", "p=1 2"],
    ["$p$q", "p=1", "q=2"], ["$p-x", "p=1"], ["$p_x", "p_x=1"],
    ["$p", "p=(1"], ["$p", "p=\\a"], ["(1)->\\a $p", "p=\\a"],
    ["$p", "p=$q", "q=7"], ["$p -> \\a \\a \\a", "p=1"], ["$x"], ["$"],
    ["$p -> \\y", "p=(1"],
    # Files and scripts.
    ["<FILE:f3"], ["<FILE:f3*2"], ["<FILE:f3[1:]"], ["<FILE:f0 1"],
    ["<FILE:f3 <FILE:f3"], ["<FILE:f3[0:1]*2 1"], ["(<FILE:f3)"],
    ["<FILE:f3)"], ["<FILE:f3#c"], ["< FILE:f3"], ["</nonexistent"],
    ["</nonexistent -> \\y"], ["</dev/zero[:100000]"],
    ["<(echo hi)"], ['<(printf "(a)")'], ["<(exit 1)"], ["<(exit 1) -> \\y"],
    ["<(echo hi"], ['<(echo ")")'], ["<(yes)[:5]"], ["<(echo a)*2"],
    ["<(echo a)->\\x \\x \\x"], ['<(printf "\\001\\000\\002")'],
    # Which zeroes allocate: this decides holes in block status.
    ["0*65536"], ["@65536 1"], ["1 @100000"], ["0*70000 1"],
    ['"" @32768'], ["(0 0)*40000"], ["1 @0 0"], ["<FILE:z64k"],
    ["<FILE:a40k"], ["<FILE:z64k @0 1"], ["1 @0 0 @40000 0"],
    ["(1)*32768 @0 (0)*32768"], ["@32767 1 @32767 0"],
    ["@70000 <FILE:z64k"], ["<(head -c 70000 /dev/zero)"],
    ['"a" @32768 0*5 @65536 "b"'], ["(<FILE:z64k)"], ["(1 @0 0)"],
    ["(0)"], ["(0 0)"], ["((0))"], ["0*1"], ["1 @0 0*1"],
    ["(<FILE:z64k)*1"], ["<FILE:z64k[0:100]"], ["(0 1)[:1] @40000 1"],
    ['"\\x00"'], ["(1 0)*3[1:2]"], ["1 0 0 0"], ["0 0 1"],
    # size=, raw=, base64= and the parameter rules.
    ["1 2", "size=100000"], ["1 2", "size=1"], ["1", "size=-1"],
    ["raw=abc"], ["raw=abc", "size=70000"], ["raw=abc", "size=2"],
    ["raw=\x01", "size=70000"], ["raw="],
    ["base64=YWJj"], ["base64=YWI="], ["base64=YWI"], ["base64=Y"],
    ["base64=YW Jj"], ["base64=YWJj\n"], ["base64=!!!!"], ["base64="],
    ["base64=YWJjZA=="], ["base64=YWJjZA="], ["base64=YW=j"],
    ["base64=YWJjZA==YWJj"], ["base64=MTIz", "size=1M"],
    ["data=1", "raw=a"], ["1", "data=2"], ["size=10"],
    ["1", "allocator=sparse"], ["1", "allocator=foo"],
]


def expand(args, tmp_path):
    out = []
    for a in args:
        for name in FILES:
            a = a.replace("FILE:" + name, str(tmp_path / name))
        out.append(a)
    return out


@pytest.mark.parametrize("args", DATA_CASES,
                         ids=[repr(" ".join(a))[1:-1][:60]
                              for a in DATA_CASES])
def test_data_matches_nbdkit(server, tmp_path, args):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    args = expand(args, tmp_path)
    env = dict(os.environ, q="99")     # parameters must win over this
    ours = start_or_error(server, "data", args, "nbdsrv", env)
    theirs = start_or_error(server, "data", args, "nbdkit", env)
    assert (ours is None) == (theirs is None), \
        "ours %s, Debian's %s" % ("refused" if ours is None else "started",
                                  "refused" if theirs is None else "started")
    if ours is None:
        return
    assert view(ours) == view(theirs)


def test_data_bad_parameter_is_one_line(server):
    """The error names the parameter and where in it the problem is."""
    with pytest.raises(RuntimeError) as e:
        server("data", "1 2 ,")
    msg = str(e.value)
    assert "data parameter" in msg and "offset 4" in msg
    lines = [l for l in msg.splitlines() if "error" in l]
    assert len(lines) == 1, msg


def test_data_beyond_largest_size_is_refused(server):
    """Deliberate difference: Debian's nbdkit starts and then fails
    every connection (.get_size returns a negative size); we refuse
    the string at startup, naming the offending offset."""
    with pytest.raises(RuntimeError) as e:
        server("data", "@9223372036854775807 1")
    assert "2^63-1" in str(e.value) and "offset 21" in str(e.value)


def test_data_variable_from_environment(server):
    env = dict(os.environ, NBDSRV_TEST_PATTERN="0x55 0xAA")
    srv = server("data", "$NBDSRV_TEST_PATTERN*3", env=env)
    assert bytes(connect(srv).pread(6, 0)) == b"\x55\xaa" * 3


def test_data_writes_match_nbdkit(server):
    """The disk is a RAM disk after loading: writes, zeroes and trims
    change data and holes the same way as Debian's."""
    args = ["@0x10000 (1 2 3)*100 @200000 0*70000 <(printf abc)",
            "size=1M"]
    ours, theirs = server("data", *args), server("data", *args,
                                                  impl="nbdkit")
    handles = [connect(ours), connect(theirs)]
    ops = [
        lambda h: h.pwrite(b"\x55" * 4096, 65536),
        lambda h: h.pwrite(bytes(4096), 6 * PAGE + 10),
        lambda h: h.zero(10, 65536 + 5),
        lambda h: h.zero(PAGE, 2 * PAGE, nbd.CMD_FLAG_NO_HOLE),
        lambda h: h.trim(4096, 65536),
        lambda h: h.trim(PAGE * 3, 0),
        lambda h: h.pwrite(b"\x02" * 10, (1 << 20) - 10, nbd.CMD_FLAG_FUA),
        lambda h: h.flush(),
        lambda h: h.cache(4096, 0),
    ]
    for op in ops:
        for h in handles:
            op(h)
        a, b = handles
        assert bytes(a.pread(1 << 20, 0)) == bytes(b.pread(1 << 20, 0))
        assert block_status(a, 1 << 20, 0) == block_status(b, 1 << 20, 0)


def test_data_far_offset_is_cheap(server):
    """@1T 1 serves a 1 TiB disk with one byte set, in little memory."""
    srv = server("data", "@1099511627776 1 <(echo end)")
    h = connect(srv)
    assert h.get_size() == (1 << 40) + 5
    assert bytes(h.pread(5, 1 << 40)) == b"\x01end\n"
    assert block_status(h, 1 << 30, 0) == \
        [1 << 30, nbd.STATE_HOLE | nbd.STATE_ZERO]
    with open("/proc/%d/status" % srv.pid) as f:
        rss = [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]
    assert rss < 64 * 1024, "RSS %d KiB" % rss


def test_data_qemu_img_sees_same_disk(server, tmp_path):
    """qemu-img compare finds our disk and Debian's identical."""
    args = ["(0x55 0xAA)*2048 @0x1fe 0x55 0xaa @1048576 1", "size=2M"]
    ours, theirs = server("data", *args), server("data", *args,
                                                  impl="nbdkit")
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw",
                        ours.uri, theirs.uri], capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr


def dump_plugin(impl, name):
    r = subprocess.run([BINARIES[impl], name, "--dump-plugin"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)


@pytest.mark.parametrize("name", ["data", "random", "sparse-random"])
def test_dump_plugin(name):
    ours, theirs = dump_plugin("nbdsrv", name), dump_plugin("nbdkit", name)
    assert ours["name"] == name
    for key in ["has_pread", "has_pwrite", "has_flush", "has_trim",
                "has_zero", "has_extents", "thread_model"]:
        assert ours.get(key) == theirs.get(key), key
    if name == "data":
        assert ours["data_base64"] == "yes"


# ---- random ----

@pytest.mark.parametrize("name", ["random", "sparse-random"])
def test_random_flags_match_nbdkit(server, name):
    ours, theirs = start_both(server, name, "size=1M", "seed=1")
    assert export_flags(connect(ours), FLAGS) == \
        export_flags(connect(theirs), FLAGS)


@pytest.mark.parametrize("name", ["random", "sparse-random"])
def test_random_no_size_is_empty_like_nbdkit(server, name):
    """The man pages call size= required, but nbdkit 1.32 serves an
    empty disk without it; so do we."""
    ours, theirs = start_both(server, name)
    assert connect(ours).get_size() == connect(theirs).get_size() == 0


@pytest.mark.parametrize("name,args", [
    ("random", ["seed=-1"]), ("random", ["seed=x"]),
    ("random", ["seed=4294967296"]), ("random", ["1M", "colour=red"]),
    ("sparse-random", ["1M", "seed=-1"]),
    ("sparse-random", ["1M", "percent=101"]),
    ("sparse-random", ["1M", "percent=-1"]),
    ("sparse-random", ["1M", "percent=abc"]),
    ("sparse-random", ["1M", "runlength=0"]),
    ("sparse-random", ["1M", "runlength=1M"]),   # no suffixes in 1.32
    ("sparse-random", ["1M", "random-content=maybe"]),
])
def test_random_bad_parameters_refused_like_nbdkit(server, name, args):
    for impl in ["nbdsrv", "nbdkit"]:
        with pytest.raises(RuntimeError) as e:
            server(name, *args, impl=impl)
        if impl == "nbdsrv":
            errors = [l for l in str(e.value).splitlines() if "error" in l]
            assert len(errors) == 1, str(e.value)
            key = args[-1].split("=")[0]
            assert key in errors[0], errors[0]


@pytest.mark.parametrize("name", ["random", "sparse-random"])
def test_random_same_seed_same_disk(server, name):
    extra = ["percent=50", "runlength=1048576"] \
        if name == "sparse-random" else []
    a = server(name, "size=64M", "seed=42", *extra)
    b = server(name, "size=64M", "seed=42", *extra)
    c = server(name, "size=64M", "seed=43", *extra)
    ha, hb, hc = connect(a), connect(b), connect(c)
    if name == "sparse-random":
        assert block_status(ha, 64 << 20, 0) == block_status(hb, 64 << 20, 0)
    for off in [0, 12345, 33 << 20, (64 << 20) - 4096]:
        assert ha.pread(4096, off) == hb.pread(4096, off)
    assert [bytes(ha.pread(1 << 20, i << 20)) for i in range(64)] != \
        [bytes(hc.pread(1 << 20, i << 20)) for i in range(64)]


def test_random_bytes_look_random(server):
    h = connect(server("random", "size=4M", "seed=7"))
    data = bytes(h.pread(4 << 20, 0))
    counts = [0] * 256
    for b in data:
        counts[b] += 1
    expect = len(data) / 256
    # Deterministic for this seed; any decent generator is far inside.
    assert min(counts) > expect * 0.9 and max(counts) < expect * 1.1
    # Unaligned reads agree with aligned ones.
    assert bytes(h.pread(100, 4093)) == data[4093:4193]
    assert block_status(h, 4 << 20, 0) == [4 << 20, 0]


def test_random_writes_checked_like_nbdkit(server):
    ours, theirs = start_both(server, "random", "size=1M", "seed=1")
    for srv in [ours, theirs]:
        h = connect(srv)
        same = bytes(h.pread(10000, 5))
        assert errno_of(lambda: h.pwrite(same, 5)) == 0
        other = bytes([same[0] ^ 1]) + same[1:]
        assert errno_of(lambda: h.pwrite(other, 5)) == 5        # EIO
        assert errno_of(lambda: h.zero(512, 0)) == 5
        assert errno_of(lambda: h.trim(512, 0)) == 5
        assert errno_of(lambda: h.cache(4096, 0)) == 0
        assert bytes(h.pread(10000, 5)) == same


@pytest.mark.parametrize("name", ["random", "sparse-random"])
def test_random_copy_to_itself(server, name):
    """The use the man pages give: nbdcopy from the disk to itself."""
    srv = server(name, "size=256M", "seed=5", *(
        ["percent=30", "runlength=4194304"] if name == "sparse-random"
        else []))
    r = subprocess.run(["nbdcopy", srv.uri, srv.uri], capture_output=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O",
                        "raw", srv.uri, srv.uri], capture_output=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr


# ---- sparse-random ----

def extents_map(h, size):
    """[(offset, length, type)] of the whole disk."""
    out, off = [], 0
    while off < size:
        ents = block_status(h, min(size - off, 1 << 30), off)
        for length, flags in zip(ents[::2], ents[1::2]):
            length = min(length, size - off)
            if out and out[-1][2] == flags:
                out[-1] = (out[-1][0], out[-1][1] + length, flags)
            else:
                out.append((off, length, flags))
            off += length
            if off >= size:
                break
    return out


def data_share(emap, size):
    return sum(l for o, l, t in emap if t == 0) / size


@pytest.mark.parametrize("percent", [0, 10, 50, 100])
def test_sparse_random_percent_like_nbdkit(server, percent):
    """With many runs the share of data is close to percent= for both
    plugins (64 GiB, 1 MiB runs: thousands of runs)."""
    size = 64 << 30
    args = ["size=%d" % size, "seed=11", "percent=%d" % percent,
            "runlength=1048576"]
    shares = []
    for srv in start_both(server, "sparse-random", *args):
        h = connect(srv)
        emap = extents_map(h, size)
        shares.append(data_share(emap, size))
        # Shape: 4 KiB aligned, alternating, holes read as zero.
        for (o, l, t), nxt in zip(emap, emap[1:] + [None]):
            assert o % 4096 == 0 and (l % 4096 == 0 or o + l == size)
            assert t in (0, nbd.STATE_HOLE | nbd.STATE_ZERO)
            if nxt:
                assert nxt[2] != t
        holes = [e for e in emap if e[2] != 0][:3]
        for o, l, t in holes:
            assert bytes(h.pread(min(l, 65536), o)) == bytes(min(l, 65536))
    for share in shares:
        assert abs(share - percent / 100) < 0.03, shares


def test_sparse_random_run_lengths(server):
    """Data runs average about runlength=, like nbdkit's."""
    size = 64 << 30
    means = []
    for srv in start_both(server, "sparse-random", "size=%d" % size,
                          "seed=3", "runlength=8388608"):
        emap = extents_map(connect(srv), size)
        runs = [l for o, l, t in emap if t == 0]
        means.append(sum(runs) / len(runs))
    for m in means:
        assert 0.7 * 8388608 < m < 1.3 * 8388608, means


@pytest.mark.parametrize("random_content", [False, True])
def test_sparse_random_block_content(server, random_content):
    """Each 4 KiB data block is one non-zero byte repeated, or random
    bytes with random-content=true."""
    args = ["size=1G", "seed=9", "percent=50", "runlength=65536"]
    if random_content:
        args.append("random-content=true")
    srv = server("sparse-random", *args)
    h = connect(srv)
    emap = extents_map(h, 1 << 30)
    data = [e for e in emap if e[2] == 0][:5]
    assert data
    for o, l, t in data:
        for blk in range(o, o + min(l, 8 * 4096), 4096):
            b = bytes(h.pread(4096, blk))
            if random_content:
                assert len(set(b)) > 200
            else:
                assert len(set(b)) == 1 and b[0] != 0


def test_sparse_random_writes_like_nbdkit(server):
    """Writes must match what is there; zero and trim only on holes."""
    args = ["size=1G", "seed=1", "percent=50", "runlength=1048576"]
    for srv in start_both(server, "sparse-random", *args):
        h = connect(srv)
        emap = extents_map(h, 1 << 30)
        d_off = next(o for o, l, t in emap if t == 0)
        h_off = next(o for o, l, t in emap if t != 0)
        d = bytes(h.pread(8192, d_off))
        assert errno_of(lambda: h.pwrite(d, d_off)) == 0
        assert errno_of(lambda: h.pwrite(d, d_off, nbd.CMD_FLAG_FUA)) == 0
        assert errno_of(lambda: h.pwrite(bytes(4096), h_off)) == 0
        assert errno_of(lambda: h.pwrite(b"x" * 10, h_off)) == 5
        assert errno_of(lambda: h.pwrite(b"x" * 10, d_off)) == 5
        assert errno_of(lambda: h.zero(4096, h_off)) == 0
        assert errno_of(lambda: h.trim(4096, h_off)) == 0
        assert errno_of(lambda: h.zero(4096, d_off)) == 5
        assert errno_of(lambda: h.trim(4096, d_off)) == 5
        assert errno_of(lambda: h.flush()) == 0
        assert errno_of(lambda: h.cache(4096, d_off)) == 0
        assert bytes(h.pread(8192, d_off)) == d


@pytest.mark.parametrize("source", ["raw=abc", "base64=YWJj", "raw="])
def test_extra_parameters_without_data(source):
    """Parameters other than size= are only ever $VARIABLES of data=;
    beside raw= or base64= both servers refuse them."""
    for impl in ("nbdsrv", "nbdkit"):
        p = subprocess.run([BINARIES[impl], "-U", "-", "data", source,
                            "a=X", "--run", "exit 9"],
                           capture_output=True, timeout=60)
        assert p.returncode == 1, (impl, p.stderr)
        assert b"extra parameters passed and not using data='...'" \
            in p.stderr, (impl, p.stderr)


def test_debug_ast_dump():
    """-D data.AST=1 -v frames a dump of the data= expression in
    nbdkit's BEGIN AST / END AST lines (nbdsrv shows what it evaluated
    to, see docs/nbdkit-data-plugin.md)."""
    out = {}
    for impl in ("nbdsrv", "nbdkit"):
        p = subprocess.run([BINARIES[impl], "-v", "-D", "data.AST=1", "-U",
                            "-", "data", "1 2 3 @4 (5)*2 @8 0*4 $a", "a=7",
                            "--run", "exit 0"], capture_output=True,
                           timeout=60)
        assert p.returncode == 0, p.stderr
        lines = [l.split("debug: ", 1)[1] for l in
                 p.stderr.decode().splitlines() if "debug: " in l]
        start = lines.index("BEGIN AST (-D data.AST=1)")
        out[impl] = lines[start:lines.index("END AST", start) + 1]
    assert out["nbdsrv"] == ["BEGIN AST (-D data.AST=1)", "(",
                             '    @0 "\\x01\\x02\\x03"',
                             '    @4 "\\x05\\x05"',
                             "    @8 fill(0*4)",
                             '    @12 "\\x07"',
                             ")", "END AST"]
    assert out["nbdkit"][:2] == out["nbdsrv"][:2]
    assert out["nbdkit"][-2:] == out["nbdsrv"][-2:]
