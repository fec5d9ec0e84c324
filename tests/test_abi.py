"""Plugin ABI compatibility with Debian's nbdkit 1.32.

A plugin binary built for nbdkit depends on three things: the layout of
struct nbdkit_plugin and the constants in the headers (checked by
tests/abi/probe.c, compiled against nbdkit's headers and against ours),
the prototypes of the nbdkit_* functions it calls (checked by compiling
nbdkit's declarations against our headers), and the symbols the server
exports for the dynamic linker to bind them to (checked with nm -D).
"""
import os
import re
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BUILD = os.environ.get("NBDSRV_BUILD", os.path.join(ROOT, "build"))
NBDSRV = os.path.join(BUILD, "nbdsrv")
OUR_INCLUDE = os.path.join(ROOT, "include")
DEBIAN_INCLUDE = "/usr/include"
DEBIAN_NBDKIT = "/usr/bin/nbdkit"
PROBE = os.path.join(ROOT, "tests", "abi", "probe.c")

CFLAGS = ["-std=gnu11", "-Wall", "-Wextra", "-Werror",
          "-Werror=incompatible-pointer-types"]

need_debian_headers = pytest.mark.skipif(
    not os.path.exists(os.path.join(DEBIAN_INCLUDE, "nbdkit-plugin.h")),
    reason="Debian's nbdkit-plugin-dev is not installed")


def compile_c(args, what):
    proc = subprocess.run(["cc"] + CFLAGS + args, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=120)
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, "compiling %s failed:\n%s" % (what, out)


def run_probe(tmp_path, include, api):
    exe = str(tmp_path / ("probe-%s-%d" % (os.path.basename(include), api)))
    compile_c(["-DPROBE_API=%d" % api, "-I", include, "-o", exe, PROBE],
              "probe.c against %s (API %d)" % (include, api))
    out = subprocess.run([exe], stdout=subprocess.PIPE, check=True,
                         timeout=60).stdout.decode()
    return out.splitlines()


@need_debian_headers
@pytest.mark.parametrize("api", [0, 1, 2],
                         ids=["api-default", "api-1", "api-2"])
def test_plugin_struct_layout(tmp_path, api):
    """Every offset, size, field type and constant is nbdkit's."""
    theirs = run_probe(tmp_path, DEBIAN_INCLUDE, api)
    ours = run_probe(tmp_path, OUR_INCLUDE, api)
    fields = [l for l in theirs if l.startswith("field ")]
    # 49 fields in nbdkit 1.32; all of them must have the documented type.
    assert len(fields) == 49
    bad = [l for l in ours + theirs
           if l.startswith("field ") and not l.endswith("type_ok=1")]
    assert not bad, "fields whose type is not the documented one:\n" + \
        "\n".join(bad)
    diff = [(t, o) for t, o in zip(theirs, ours) if t != o]
    assert len(theirs) == len(ours) and not diff, (
        "probe output differs (nbdkit's, ours):\n%s"
        % "\n".join("%s\n%s" % d for d in diff))
    expected_api = 2 if api == 2 else 1
    assert "register _api_version=%d" % expected_api in ours


# NBDKIT_EXTERN_DECL (RET, NAME, (ARGS) [ATTRIBUTE_FORMAT_PRINTF (..)]);
DECL = re.compile(r"NBDKIT_EXTERN_DECL\s*\(\s*(?P<ret>[^,]+?)\s*,\s*"
                  r"(?P<name>nbdkit_\w+)\s*,\s*(?P<args>\(.*?\))\s*"
                  r"(?:ATTRIBUTE_\w+\s*\([^)]*\)\s*)?\)\s*;", re.S)


def declarations(path):
    """{name: (return type, argument list)} of the NBDKIT_EXTERN_DECLs
    in the header at PATH; every use of the macro must be understood."""
    with open(path) as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    uses = len(re.findall(r"^\s*NBDKIT_EXTERN_DECL\b", text, flags=re.M))
    decls = {m.group("name"): (" ".join(m.group("ret").split()),
                               " ".join(m.group("args").split()))
             for m in DECL.finditer(text)}
    assert len(decls) == uses, (
        "%s: parsed %d of %d declarations: %s" % (path, len(decls), uses,
                                                 sorted(decls)))
    return decls


def check_prototypes(tmp_path, decls, name, header="nbdkit-plugin.h"):
    """Compile against our headers a file that first takes the address
    of each function (an error if we do not declare it), then declares
    it again with nbdkit's prototype (an error if the types conflict).
    """
    lines = ["#define NBDKIT_API_VERSION 2",
             "#include <%s>" % header, ""]
    for fn, (ret, args) in sorted(decls.items()):
        lines.append("void (*const probe_%s) (void) = (void (*) (void)) &%s;"
                     % (fn, fn))
        lines.append("extern %s %s %s;" % (ret, fn, args))
    src = tmp_path / (name + ".c")
    src.write_text("\n".join(lines) + "\n")
    # nbdkit's nbdkit_get_export returns a const struct, a qualifier
    # that C ignores on a returned value and -Wextra reports.
    compile_c(["-Wno-ignored-qualifiers", "-I", OUR_INCLUDE, "-c", "-o",
               str(tmp_path / (name + ".o")), str(src)],
              "nbdkit's prototypes against our headers")


@need_debian_headers
def test_function_prototypes(tmp_path):
    """Every function nbdkit's plugin headers declare, ours declare with
    a compatible prototype."""
    decls = {}
    for h in ("nbdkit-common.h", "nbdkit-plugin.h"):
        decls.update(declarations(os.path.join(DEBIAN_INCLUDE, h)))
    assert len(decls) >= 36, sorted(decls)  # 36 in nbdkit 1.32
    assert decls["nbdkit_parse_int"] == (
        "int", "(const char *what, const char *str, int *r)")
    check_prototypes(tmp_path, decls, "prototypes")


@need_debian_headers
def test_prototype_check_detects_a_mismatch(tmp_path):
    """The method above fails on a wrong prototype or a missing one."""
    wrong = {"nbdkit_parse_int": ("int", "(const char *, const char *, "
                                  "long *)")}
    with pytest.raises(AssertionError, match="conflicting types"):
        check_prototypes(tmp_path, wrong, "wrong")
    missing = {"nbdkit_no_such_function": ("int", "(void)")}
    with pytest.raises(AssertionError, match="undeclared"):
        check_prototypes(tmp_path, missing, "missing")


FILTER_PROBE = os.path.join(ROOT, "tests", "abi", "filter-probe.c")


def run_filter_probe(tmp_path, include):
    exe = str(tmp_path / ("filter-probe-%s" % os.path.basename(include)))
    # nbdkit's header declares nbdkit_get_export's result const, which
    # -Wextra reports (ignored-qualifiers); ours does not.
    compile_c(["-Wno-ignored-qualifiers", "-I", include, "-o", exe,
               FILTER_PROBE], "filter-probe.c against %s" % include)
    out = subprocess.run([exe], stdout=subprocess.PIPE, check=True,
                         timeout=60).stdout.decode()
    return out.splitlines()


@need_debian_headers
def test_filter_struct_layout(tmp_path):
    """struct nbdkit_filter, struct nbdkit_next_ops, the extent and
    export structs, the constants and the registration are nbdkit
    1.32's, so filter binaries built for it run in nbdsrv."""
    theirs = run_filter_probe(tmp_path, DEBIAN_INCLUDE)
    ours = run_filter_probe(tmp_path, OUR_INCLUDE)
    filter_fields = [l for l in theirs if l.startswith("nbdkit_filter ")]
    next_fields = [l for l in theirs if l.startswith("nbdkit_next_ops ")]
    # 41 filter fields and 22 next calls in filter API version 6.
    assert (len(filter_fields), len(next_fields)) == (41, 22)
    bad = [l for l in ours + theirs
           if l.startswith("nbdkit_") and " offset=" in l
           and not l.endswith("type_ok=1")]
    assert not bad, "fields whose type is not the documented one:\n" + \
        "\n".join(bad)
    diff = [(t, o) for t, o in zip(theirs, ours) if t != o]
    assert len(theirs) == len(ours) and not diff, (
        "filter probe output differs (nbdkit's, ours):\n%s"
        % "\n".join("%s\n%s" % d for d in diff))
    assert "register same_struct=1 _api_version=6 _version=1.32.5" in ours


@need_debian_headers
def test_filter_function_prototypes(tmp_path):
    """Every function nbdkit's filter header declares, ours declares
    with a compatible prototype."""
    decls = declarations(os.path.join(DEBIAN_INCLUDE, "nbdkit-filter.h"))
    assert len(decls) >= 14, sorted(decls)  # 14 in nbdkit 1.32
    check_prototypes(tmp_path, decls, "filter-prototypes",
                     header="nbdkit-filter.h")


def dynamic_symbols(path):
    """{name: nm type letter} of the defined dynamic symbols of PATH."""
    out = subprocess.run(["nm", "-D", "--defined-only", path],
                         stdout=subprocess.PIPE, check=True,
                         timeout=60).stdout.decode()
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3:
            syms[parts[2]] = parts[1]
    return syms


@pytest.mark.skipif(not os.path.exists(DEBIAN_NBDKIT),
                    reason="Debian's nbdkit is not installed")
def test_exported_symbols():
    """Every nbdkit_* function nbdkit exports, nbdsrv exports too: the
    plugin API and the filter API."""
    assert os.path.exists(NBDSRV), "build nbdsrv first: %s" % NBDSRV
    theirs = dynamic_symbols(DEBIAN_NBDKIT)
    ours = dynamic_symbols(NBDSRV)
    api = sorted(s for s, t in theirs.items()
                 if s.startswith("nbdkit_") and t == "T")
    assert len(api) >= 50, api  # 46 + 4 filter-only in nbdkit 1.32
    missing = [s for s in api if ours.get(s) != "T"]
    assert not missing, "nbdsrv does not export: %s" % ", ".join(missing)


def test_only_the_api_is_exported():
    """nbdsrv exports the nbdkit_* API (and nbdsrv_* additions) and
    none of its internals (STYLE.md 14).  Versioned names are glibc's
    copy relocations (stdout@GLIBC_2.2.5), not ours."""
    assert os.path.exists(NBDSRV), "build nbdsrv first: %s" % NBDSRV
    # __asan_*/__ubsan_* come from the sanitizer runtime of a
    # SANITIZE=1 build, not from nbdsrv.
    extra = sorted(s for s in dynamic_symbols(NBDSRV)
                   if "@" not in s and not s.startswith(("nbdkit_",
                                                         "nbdsrv_",
                                                         "__asan_",
                                                         "__ubsan_",
                                                         "__lsan_",
                                                         "__sanitizer_")))
    assert not extra, "nbdsrv exports internal symbols: %s" % extra
