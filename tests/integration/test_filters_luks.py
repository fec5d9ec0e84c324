"""The luks filter: LUKS-encrypted disks served decrypted.

LUKSv1 images are made by qemu-img and by cryptsetup (luksFormat on a
regular file needs no device mapper); the plaintext is written and read
back through QEMU's own luks driver, so what our filter serves is
checked against an independent implementation both ways.  Each test
runs under nbdsrv with our filter, Debian's nbdkit with its own filter
("nbdkit") and Debian's nbdkit with our filter .so ("ours").

LUKSv2 (which nbdkit does not read) is checked against cryptsetup's
dump of the volume key and python3-cryptography's AES-XTS.
"""
import errno
import json
import os
import re
import subprocess
import time

import nbd
import pytest

from conftest import NBDKIT, NBDSRV, filter_path
from util import connect, errno_of, export_flags

IMPLS = [
    "nbdsrv",
    "nbdkit",
    pytest.param("ours", marks=pytest.mark.nbdkit_plugin),
]
OURS = [
    "nbdsrv",
    pytest.param("ours", marks=pytest.mark.nbdkit_plugin),
]

SECRET = "correct horse"
SIZE = 4 << 20            # plaintext bytes of every test image


@pytest.fixture(params=IMPLS)
def impl(request):
    """Overrides conftest's: the three ways of running a filter."""
    return request.param


def start(server, impl, image, *args):
    """Serve IMAGE through the luks filter under IMPL."""
    luks = filter_path("luks") if impl == "ours" else "luks"
    return server("--filter=" + luks, "file", str(image), *args,
                  impl="nbdkit" if impl == "ours" else impl)


def run_server(impl, *args):
    """A server command line that must exit at startup: (rc, stderr)."""
    luks = filter_path("luks") if impl == "ours" else "luks"
    binary = NBDSRV if impl == "nbdsrv" else NBDKIT
    p = subprocess.run([binary, "-f", "-U", "/nonexistent/sock",
                        "--filter=" + luks] + list(args),
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=60)
    return p.returncode, p.stderr


def qemu_secret():
    return ["--object", "secret,id=sec0,data=" + SECRET]


def qemu_opts(image):
    return "driver=luks,file.filename=%s,key-secret=sec0" % image


def qemu_img_create(image, *opts):
    """A LUKSv1 image by qemu-img.  qemu-img times PBKDF2 to choose the
    iteration count and now and then fails to ("Unable to get accurate
    CPU usage"): that one error is retried, a bounded number of times."""
    o = ",".join(("key-secret=sec0", "iter-time=10") + opts)
    for _ in range(5):
        p = subprocess.run(["qemu-img", "create", "-q", "-f", "luks"]
                           + qemu_secret() + ["-o", o, str(image),
                                              str(SIZE)],
                           capture_output=True, text=True, timeout=120)
        if p.returncode == 0:
            return
        assert "accurate CPU usage" in p.stderr, p.stderr
    pytest.fail("qemu-img create kept failing: " + p.stderr)


def cryptsetup_format(image, luks_type, *args):
    """An image by cryptsetup luksFormat on a regular file, with a
    fixed, small PBKDF cost so that the tests stay quick."""
    with open(image, "wb") as f:
        f.truncate(SIZE + (16 << 20))
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", luks_type,
                    "--key-file", "-", *args, str(image)],
                   input=SECRET.encode(), check=True, timeout=120)
    os.truncate(image, payload_offset(image) + SIZE)


def payload_offset(image):
    """Where the encrypted data starts, as cryptsetup luksDump says."""
    dump = subprocess.run(["cryptsetup", "luksDump", str(image)],
                          capture_output=True, text=True, check=True,
                          timeout=60).stdout
    m = re.search(r"^Payload offset:\s*(\d+)", dump, re.M)
    if m:
        return int(m.group(1)) * 512
    return int(re.search(r"^\s*offset:\s*(\d+) \[bytes\]", dump,
                         re.M).group(1))


def qemu_write_plain(image, data):
    """Write DATA as the plaintext of IMAGE through QEMU's luks driver."""
    src = str(image) + ".src"
    with open(src, "wb") as f:
        f.write(data)
    subprocess.run(["qemu-img", "convert", "-n"] + qemu_secret()
                   + ["-f", "raw", src, "--target-image-opts",
                      qemu_opts(image)], check=True, timeout=120)
    os.unlink(src)


def qemu_read_plain(image, tmp_path):
    """The plaintext of IMAGE as QEMU's luks driver reads it."""
    out = str(tmp_path / "qemu-plain.raw")
    subprocess.run(["qemu-img", "convert"] + qemu_secret()
                   + ["--image-opts", qemu_opts(image), "-O", "raw", out],
                   check=True, timeout=120)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def nbdcopy_read(srv, tmp_path):
    """The whole export as nbdcopy reads it."""
    out = str(tmp_path / "nbd-plain.raw")
    subprocess.run(["nbdcopy", srv.uri, out], check=True, timeout=120)
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


def pattern(size, seed):
    """SIZE bytes that differ in every sector and between seeds."""
    block = bytes((seed * 7 + i * 13) & 0xff for i in range(251))
    data = (block * (size // len(block) + 1))[:size]
    return data


# The LUKSv1 images: (name, maker).  qemu-img's default is
# aes-256-xts-plain64 with sha256; the cryptsetup ones cover CBC with
# plain and ESSIV IVs and other hashes.
V1_IMAGES = {
    "qemu-xts": lambda p: qemu_img_create(p),
    "qemu-cbc-essiv": lambda p: qemu_img_create(
        p, "cipher-alg=aes-128", "cipher-mode=cbc", "ivgen-alg=essiv",
        "ivgen-hash-alg=sha256", "hash-alg=sha1"),
    "qemu-xts128-plain-sha512": lambda p: qemu_img_create(
        p, "cipher-alg=aes-128", "cipher-mode=xts", "ivgen-alg=plain",
        "hash-alg=sha512"),
    "cryptsetup-cbc-essiv": lambda p: cryptsetup_format(
        p, "luks1", "--cipher", "aes-cbc-essiv:sha256", "--key-size", "256",
        "--hash", "sha1", "--pbkdf-force-iterations", "1000"),
    "cryptsetup-cbc-plain": lambda p: cryptsetup_format(
        p, "luks1", "--cipher", "aes-cbc-plain", "--key-size", "128",
        "--hash", "sha256", "--pbkdf-force-iterations", "1000"),
}


@pytest.fixture(scope="module")
def v1_images(tmp_path_factory):
    """Each LUKSv1 image made once, with known plaintext; tests copy
    the one they change."""
    d = tmp_path_factory.mktemp("luks-v1")
    images = {}
    for seed, (name, make) in enumerate(sorted(V1_IMAGES.items())):
        path = d / (name + ".img")
        make(path)
        qemu_write_plain(path, pattern(SIZE, seed))
        images[name] = path
    return images


def copy_image(src, tmp_path):
    dst = tmp_path / "copy.img"
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    return dst


# ------------------------------------------------------------- LUKSv1

@pytest.mark.parametrize("name", sorted(V1_IMAGES))
def test_v1_read_matches_qemu(server, impl, v1_images, tmp_path, name):
    """nbdkit 1.32 has no ESSIV: it refuses those images, we read
    them."""
    image = v1_images[name]
    if impl == "nbdkit" and "essiv" in name:
        srv = start(server, impl, image, "passphrase=" + SECRET)
        assert "unknown IV generation algorithm: essiv" in refused(srv)
        return
    srv = start(server, impl, image, "passphrase=" + SECRET)
    served = nbdcopy_read(srv, tmp_path)
    assert len(served) == SIZE
    assert served == qemu_read_plain(image, tmp_path)
    assert served == pattern(SIZE, sorted(V1_IMAGES).index(name))


@pytest.mark.parametrize("name", ["qemu-xts", "cryptsetup-cbc-plain"])
def test_v1_writes_read_back_by_qemu(server, impl, v1_images, tmp_path,
                                     name):
    """Whole sectors from nbdcopy, in parallel over several connections,
    then zeroes; QEMU's driver reads them back."""
    image = copy_image(v1_images[name], tmp_path)
    expect = bytearray(pattern(SIZE, sorted(V1_IMAGES).index(name)))
    srv = start(server, impl, image, "passphrase=" + SECRET)
    src = tmp_path / "new.raw"
    new = pattern(SIZE // 2, 99)
    with open(src, "wb") as f:
        f.write(new)
    subprocess.run(["nbdcopy", "--connections=4", "--requests=8",
                    str(src), srv.uri], check=True, timeout=120)
    expect[:len(new)] = new
    h = connect(srv)
    h.zero(8192, 65536)
    expect[65536:65536 + 8192] = bytes(8192)
    h.pwrite(b"\x77" * 4096, SIZE - 4096, nbd.CMD_FLAG_FUA)
    expect[SIZE - 4096:] = b"\x77" * 4096
    h.flush()
    h.shutdown()
    srv.stop()
    assert qemu_read_plain(image, tmp_path) == bytes(expect)


@pytest.mark.parametrize("impl", OURS)
@pytest.mark.parametrize("name", ["qemu-xts", "cryptsetup-cbc-essiv"])
def test_v1_partial_sectors(server, impl, v1_images, tmp_path, name):
    """Bytes across sector boundaries from a client that asked for no
    block sizes, so the filter must read-modify-write.  Not against
    Debian's nbdkit: its luks filter (1.32.5) writes garbage over the
    rest of a partly written sector, and has no ESSIV."""
    image = copy_image(v1_images[name], tmp_path)
    expect = bytearray(pattern(SIZE, sorted(V1_IMAGES).index(name)))
    srv = start(server, impl, image, "passphrase=" + SECRET)
    h = nbd.NBD()
    h.set_request_block_size(False)
    h.set_strict_mode(0)
    h.connect_uri(srv.uri)
    for off, data in [(1000, b"\x5a" * 5000), (3, b"abc"),
                      (SIZE - 7, b"tail!!!"),
                      (SIZE // 2 - 100, b"\x01" * 300)]:
        h.pwrite(data, off)
        expect[off:off + len(data)] = data
    h.zero(4096 + 17, 70001)
    expect[70001:70001 + 4096 + 17] = bytes(4096 + 17)
    assert h.pread(10, 998) == bytes(expect[998:1008])
    assert h.pread(5, SIZE - 5) == b"il!!!"
    h.flush()
    h.shutdown()
    srv.stop()
    assert qemu_read_plain(image, tmp_path) == bytes(expect)


def test_v1_flags_match_nbdkit(server, v1_images):
    image = v1_images["qemu-xts"]
    flags = {}
    for impl in ["nbdsrv", "nbdkit"]:
        srv = start(server, impl, image, "passphrase=" + SECRET)
        h = connect(srv)
        flags[impl] = export_flags(h)
        flags[impl]["block_size"] = [h.get_block_size(s) for s in
                                     (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED)]
        h.shutdown()
    assert flags["nbdsrv"] == flags["nbdkit"]
    assert flags["nbdsrv"]["get_size"] == SIZE
    assert flags["nbdsrv"]["block_size"] == [512, 512]
    assert not flags["nbdsrv"]["can_trim"]
    assert flags["nbdsrv"]["can_zero"]


def test_v1_extents_all_data(server, impl, v1_images):
    """The plugin's holes are in the ciphertext: everything is data."""
    srv = start(server, impl, v1_images["qemu-xts"], "passphrase=" + SECRET)
    h = connect(srv)
    seen = []
    h.block_status(SIZE, 0, lambda ctx, off, ents, err:
                   seen.extend(ents) or 0)
    assert seen[1] == 0 and sum(seen[0::2]) == SIZE
    h.shutdown()


# ------------------------------------------------------- passphrases

def test_passphrase_from_file(server, impl, v1_images, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    srv = start(server, impl, v1_images["qemu-xts"], "passphrase=+%s" % pw)
    h = connect(srv)
    assert h.pread(512, 0) == pattern(512, sorted(V1_IMAGES).index(
        "qemu-xts"))
    h.shutdown()


def test_passphrase_from_fd(server, impl, v1_images, tmp_path):
    r, w = os.pipe()
    os.write(w, SECRET.encode())
    os.close(w)
    try:
        luks = filter_path("luks") if impl == "ours" else "luks"
        binary = NBDSRV if impl == "nbdsrv" else NBDKIT
        sock = str(tmp_path / "sock")
        p = subprocess.Popen([binary, "-f", "-U", sock, "--filter=" + luks,
                              "file", str(v1_images["qemu-xts"]),
                              "passphrase=-%d" % r],
                             pass_fds=[r], stdin=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    finally:
        os.close(r)
    try:
        # The socket file appears at bind(), before listen(): retry a
        # refused connection, a bounded number of times.
        for _ in range(1000):
            assert p.poll() is None, p.stderr.read()
            try:
                h = nbd.NBD()
                h.connect_uri("nbd+unix:///?socket=" + sock)
                break
            except nbd.Error:
                time.sleep(0.01)
        assert h.get_size() == SIZE
        h.shutdown()
    finally:
        p.terminate()
        p.wait(10)


def test_passphrase_missing(impl, v1_images):
    rc, err = run_server(impl, "file", str(v1_images["qemu-xts"]))
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "passphrase" in lines[0]


def test_passphrase_interactive_needs_tty(impl, v1_images):
    rc, err = run_server(impl, "file", str(v1_images["qemu-xts"]),
                         "passphrase=-")
    assert rc == 1
    assert "tty" in err


# --------------------------------------------------- connection errors

def refused(srv):
    """Connect to SRV, which must refuse the export; return the
    server's error text."""
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(srv.uri)
    return srv.stderr_text()


@pytest.mark.parametrize("impl", OURS)
def test_wrong_passphrase_fails_the_connection(server, impl, v1_images):
    """As in nbdkit, at connection time (the filter cannot read the disk
    earlier); unlike nbdkit 1.32, which then crashes, the server goes on
    serving."""
    srv = start(server, impl, v1_images["qemu-xts"], "passphrase=wrong")
    h = nbd.NBD()
    with pytest.raises(nbd.Error):
        h.connect_uri(srv.uri)
    assert srv.alive()
    err = srv.stderr_text()
    msgs = [l for l in err.splitlines() if "luks" in l and "error" in l]
    assert len(msgs) == 1 and "passphrase is not correct" in msgs[0]


def test_nbdkit_rejects_wrong_passphrase(server, v1_images):
    """What Debian's nbdkit says (it then crashes: see above)."""
    srv = start(server, "nbdkit", v1_images["qemu-xts"], "passphrase=wrong")
    assert "passphrase is not correct" in refused(srv)


def corrupt(src, tmp_path, offset, data):
    image = copy_image(src, tmp_path)
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)
    return image


@pytest.mark.parametrize("case,expect", [
    ("zeroes", "no LUKS header"),
    ("tiny", "too small"),
    ("version3", "version 3"),
    ("slot-flag", "key slot 0"),
    ("truncated", "truncated"),
])
def test_bad_v1_header(server, tmp_path, v1_images, case, expect):
    src = v1_images["qemu-xts"]
    if case == "zeroes":
        image = tmp_path / "zero.img"
        image.write_bytes(bytes(1 << 20))
    elif case == "tiny":
        image = copy_image(src, tmp_path)
        os.truncate(image, 100)
    elif case == "version3":
        image = corrupt(src, tmp_path, 6, b"\x00\x03")
    elif case == "slot-flag":
        image = corrupt(src, tmp_path, 208, b"\x12\x34\x56\x78")
    else:
        image = copy_image(src, tmp_path)
        os.truncate(image, 1 << 20)
    srv = start(server, "nbdsrv", image, "passphrase=" + SECRET)
    err = refused(srv)
    msgs = [l for l in err.splitlines() if "luks" in l and "error" in l]
    assert len(msgs) == 1 and expect in msgs[0], err


def test_unsupported_cipher(server, impl, tmp_path):
    image = tmp_path / "twofish.img"
    qemu_img_create(image, "cipher-alg=twofish-128")
    srv = start(server, impl, image, "passphrase=" + SECRET)
    err = refused(srv)
    assert "twofish" in err


# ------------------------------------------------------------- LUKSv2

def volume_key(image, secret=SECRET):
    """The volume key as cryptsetup dumps it after unlocking."""
    out = subprocess.run(["cryptsetup", "luksDump", "--dump-volume-key",
                          "-q", "--key-file", "-", str(image)],
                         input=secret.encode(), capture_output=True,
                         check=True, timeout=120).stdout.decode()
    return bytes.fromhex("".join(
        re.findall(r"[0-9a-f]{2}", out[out.index("MK dump:") + 8:])))


def metadata(image):
    """The LUKSv2 JSON metadata as cryptsetup reads it."""
    return json.loads(subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(image)],
        capture_output=True, check=True, timeout=60).stdout)


def sector_cipher(image):
    """(offset, sector size, function (data, first byte, encrypt) ->
    data) for IMAGE's data segment, from python3-cryptography and
    cryptsetup's dump alone."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers import (Cipher,
                                                        algorithms, modes)
    seg = metadata(image)["segments"]["0"]
    key = volume_key(image)
    ss = seg["sector_size"]
    tweak0 = int(seg["iv_tweak"])

    def essiv(n):
        h = hashes.Hash(hashes.SHA256())
        h.update(key)
        e = Cipher(algorithms.AES(h.finalize()), modes.ECB()).encryptor()
        return e.update(n.to_bytes(16, "little"))

    def crypt(data, first, encrypt):
        out = bytearray()
        for i in range(0, len(data), ss):
            n = ((first + i) // 512 + tweak0) // (ss // 512)
            if seg["encryption"] == "aes-xts-plain64":
                c = Cipher(algorithms.AES(key),
                           modes.XTS(n.to_bytes(16, "little")))
            else:
                assert seg["encryption"] == "aes-cbc-essiv:sha256"
                c = Cipher(algorithms.AES(key), modes.CBC(essiv(n)))
            op = c.encryptor() if encrypt else c.decryptor()
            out += op.update(data[i:i + ss]) + op.finalize()
        return bytes(out)
    return int(seg["offset"]), ss, crypt


def write_cipher_text(image, plain):
    """Encrypt PLAIN into IMAGE's data segment without our filter."""
    offset, _, crypt = sector_cipher(image)
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(crypt(plain, 0, True))


def read_plain_text(image):
    """Decrypt IMAGE's data segment without our filter."""
    offset, _, crypt = sector_cipher(image)
    with open(image, "rb") as f:
        f.seek(offset)
        return crypt(f.read(SIZE), 0, False)


ARGON = ["--pbkdf-force-iterations", "4", "--pbkdf-memory", "32",
         "--pbkdf-parallel", "1"]
V2_IMAGES = {
    "argon2id-4k": ["--pbkdf", "argon2id"] + ARGON,
    "argon2i-512": ["--pbkdf", "argon2i", "--sector-size", "512"] + ARGON,
    "pbkdf2-sha512-aes128": ["--pbkdf", "pbkdf2", "--hash", "sha512",
                             "--pbkdf-force-iterations", "1000",
                             "--key-size", "256", "--sector-size", "512"],
    "pbkdf2-cbc-essiv-2k": ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                            "1000", "--cipher", "aes-cbc-essiv:sha256",
                            "--key-size", "256", "--sector-size", "2048"],
}


@pytest.fixture(scope="module")
def v2_images(tmp_path_factory):
    """Each LUKSv2 image made once, its plaintext written by
    python3-cryptography with cryptsetup's volume key."""
    d = tmp_path_factory.mktemp("luks-v2")
    images = {}
    for seed, (name, args) in enumerate(sorted(V2_IMAGES.items())):
        path = d / (name + ".img")
        cryptsetup_format(path, "luks2", *args)
        write_cipher_text(path, pattern(SIZE, 50 + seed))
        images[name] = path
    return images


def v2_seed(name):
    return 50 + sorted(V2_IMAGES).index(name)


@pytest.mark.parametrize("impl", OURS)
@pytest.mark.parametrize("name", sorted(V2_IMAGES))
def test_v2_read(server, impl, v2_images, tmp_path, name):
    image = v2_images[name]
    srv = start(server, impl, image, "passphrase=" + SECRET)
    h = connect(srv)
    ss = metadata(image)["segments"]["0"]["sector_size"]
    assert h.get_block_size(nbd.SIZE_MINIMUM) == ss
    h.shutdown()
    assert nbdcopy_read(srv, tmp_path) == pattern(SIZE, v2_seed(name))


@pytest.mark.parametrize("impl", OURS)
@pytest.mark.parametrize("name", ["argon2id-4k", "pbkdf2-cbc-essiv-2k"])
def test_v2_write(server, impl, v2_images, tmp_path, name):
    """Whole sectors in parallel, then partial sectors (read-modify-write
    of 2 and 4 KiB sectors); python3-cryptography decrypts the result."""
    image = copy_image(v2_images[name], tmp_path)
    expect = bytearray(pattern(SIZE, v2_seed(name)))
    srv = start(server, impl, image, "passphrase=" + SECRET)
    src = tmp_path / "new.raw"
    new = pattern(SIZE // 2, 77)
    with open(src, "wb") as f:
        f.write(new)
    subprocess.run(["nbdcopy", "--connections=4", "--requests=8",
                    str(src), srv.uri], check=True, timeout=120)
    expect[:len(new)] = new
    h = nbd.NBD()
    h.set_request_block_size(False)
    h.set_strict_mode(0)
    h.connect_uri(srv.uri)
    for off, data in [(4000, b"\x42" * 9000), (1, b"xyz"),
                      (SIZE - 3, b"end")]:
        h.pwrite(data, off)
        expect[off:off + len(data)] = data
    h.flush()
    h.shutdown()
    srv.stop()
    assert read_plain_text(image) == bytes(expect)


@pytest.mark.parametrize("impl", OURS)
def test_v2_second_key_slot(server, impl, v2_images, tmp_path):
    """A pbkdf2 slot added beside the argon2id one opens the volume with
    its own passphrase; the first still does."""
    image = copy_image(v2_images["argon2id-4k"], tmp_path)
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text(SECRET)
    new.write_text("second secret")
    subprocess.run(["cryptsetup", "luksAddKey", "-q", "--key-file", str(old),
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    str(image), str(new)], check=True, timeout=120)
    for pw in [new, old]:
        srv = start(server, impl, image, "passphrase=+%s" % pw)
        h = connect(srv)
        assert h.pread(4096, 0) == pattern(4096, v2_seed("argon2id-4k"))
        h.shutdown()
        srv.stop()
    # A slot of priority "ignore" is not tried, as by cryptsetup open.
    subprocess.run(["cryptsetup", "config", "--priority", "ignore",
                    "--key-slot", "1", str(image)], check=True, timeout=60)
    srv = start(server, impl, image, "passphrase=+%s" % new)
    assert "passphrase is not correct" in refused(srv)


def test_nbdkit_refuses_v2(server, v2_images):
    """nbdkit 1.32 reads only LUKSv1 (the difference we document)."""
    srv = start(server, "nbdkit", v2_images["argon2id-4k"],
                "passphrase=" + SECRET)
    assert "only supports LUKSv1" in refused(srv)


@pytest.mark.parametrize("impl", OURS)
def test_v2_wrong_passphrase(server, impl, v2_images):
    srv = start(server, impl, v2_images["argon2i-512"], "passphrase=nope")
    err = refused(srv)
    msgs = [l for l in err.splitlines() if "luks" in l and "error" in l]
    assert len(msgs) == 1 and "passphrase is not correct" in msgs[0]


def test_v2_damaged_primary_uses_secondary(server, v2_images, tmp_path):
    """The JSON of the first copy is damaged (its checksum fails): the
    second copy serves; with both damaged the connection fails."""
    image = corrupt(v2_images["pbkdf2-sha512-aes128"], tmp_path, 4096 + 2,
                    b"#")
    srv = start(server, "nbdsrv", image, "passphrase=" + SECRET)
    h = connect(srv)
    assert h.pread(512, 0) == pattern(512, v2_seed("pbkdf2-sha512-aes128"))
    h.shutdown()
    srv.stop()
    size = metadata(v2_images["pbkdf2-sha512-aes128"])["config"]["json_size"]
    with open(image, "r+b") as f:
        f.seek(4096 + int(size) + 4096 + 2)
        f.write(b"#")
    srv = start(server, "nbdsrv", image, "passphrase=" + SECRET)
    err = refused(srv)
    assert "LUKSv2 header is damaged" in err


@pytest.mark.parametrize("case,expect", [
    ("truncated", "damaged"),
    ("segment-beyond", "beyond"),
])
def test_v2_bad_header(server, v2_images, tmp_path, case, expect):
    image = copy_image(v2_images["argon2i-512"], tmp_path)
    if case == "truncated":
        os.truncate(image, 8192)
    else:
        os.truncate(image, payload_offset(image) - 4096)
    srv = start(server, "nbdsrv", image, "passphrase=" + SECRET)
    err = refused(srv)
    msgs = [l for l in err.splitlines() if "luks" in l and "error" in l]
    assert len(msgs) == 1 and expect in msgs[0], err


@pytest.mark.parametrize("impl", OURS)
def test_key_slot_opened_once_per_volume(server, impl, v2_images):
    """Later connections reuse the volume key the first one unlocked,
    instead of paying for Argon2 again (nbdkit unlocks every time)."""
    srv = start(server, impl, v2_images["argon2id-4k"], "-v",
                "passphrase=" + SECRET)
    for _ in range(3):
        h = connect(srv)
        assert h.pread(4096, 0) == pattern(4096, v2_seed("argon2id-4k"))
        h.shutdown()
    err = srv.stderr_text()
    assert err.count("key slot 0 unlocked the volume") == 1
    assert err.count("volume key unlocked by an earlier connection") == 2


@pytest.mark.parametrize("impl", OURS)
def test_partial_sector_writes_in_parallel(server, impl, v1_images,
                                           tmp_path):
    """Four connections at once write 8-byte pieces, each its own, into
    the same eight sectors: every read-modify-write must keep the
    others' pieces (the partial-sector lock)."""
    import threading
    image = copy_image(v1_images["qemu-xts"], tmp_path)
    expect = bytearray(pattern(SIZE, sorted(V1_IMAGES).index("qemu-xts")))
    # The delay filter below makes every read of a sector take 1 ms,
    # so that without the lock read-modify-writes would overlap.
    delay = filter_path("delay") if impl == "ours" else "delay"
    srv = start(server, impl, image, "--filter=" + delay, "rdelay=1ms",
                "passphrase=" + SECRET)
    failures = []

    def writer(c):
        try:
            h = nbd.NBD()
            h.set_request_block_size(False)
            h.set_strict_mode(0)
            h.connect_uri(srv.uri)
            # All at once, so that the server has many in flight.
            bufs = [nbd.Buffer.from_bytearray(bytearray([c + 1]) * 8)
                    for _ in range(128)]
            cookies = [h.aio_pwrite(bufs[k], (k * 4 + c) * 8)
                       for k in range(128)]
            for cookie in cookies:
                while not h.aio_command_completed(cookie):
                    h.poll(-1)
            h.shutdown()
        except nbd.Error as e:
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures and not any(t.is_alive() for t in threads)
    for c in range(4):
        for k in range(128):
            off = (k * 4 + c) * 8
            expect[off:off + 8] = bytes([c + 1]) * 8
    srv.stop()
    assert qemu_read_plain(image, tmp_path) == bytes(expect)
