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

PAGE = 32768


def connect(srv):
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(srv.uri)
    return h


def block_status(h, count, offset, flags=0):
    entries = []

    def cb(metacontext, off, e, err):
        entries.extend(e)
        return 0

    h.block_status(count, offset, cb, flags)
    return entries


def export_flags(h):
    names = ["get_size", "is_read_only", "can_flush", "can_fua",
             "can_trim", "can_zero", "can_fast_zero", "can_multi_conn",
             "can_cache"]
    return {n: getattr(h, n)() for n in names}


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
    return export_flags(h), size, data, extents


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


@pytest.mark.parametrize("name", ["data"])
def test_dump_plugin(name):
    ours, theirs = dump_plugin("nbdsrv", name), dump_plugin("nbdkit", name)
    assert ours["name"] == name
    for key in ["has_pread", "has_pwrite", "has_flush", "has_trim",
                "has_zero", "has_extents", "thread_model"]:
        assert ours.get(key) == theirs.get(key), key
    if name == "data":
        assert ours["data_base64"] == "yes"
