"""A fresh Debian machine has only what scripts/install-deps.sh installs.

Every program that a test, benchmark or script starts, every Python
module a test imports and every pkg-config module meson.build asks for
must come from a package named in scripts/packages.txt, unless that
package is on every Debian machine (Essential or Priority: required).

The programs are found by reading the sources, not by running them:
  - Python (AST): the first word of a command given to a function that
    runs one (subprocess.run/Popen, run, check_run, spawn, ...), either
    as a list literal or as separate string arguments; shutil.which
    ("NAME") and the names a `for` loop hands to shutil.which; the
    command after "--run"; shell scripts written by tests ("#!...sh").
  - Shell (scripts/, tests/, bench/, .ci/, Makefile recipes): the first
    word of every simple command, quoted text and here-documents left
    out.
A name found that way and installed here is looked up with dpkg; one
that is not installed here fails too, since nothing would install it.
"""
import ast
import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TABLE = os.path.join(ROOT, "scripts", "packages.txt")
SCANNED_DIRS = ["tests", "bench", "scripts", ".ci"]

# Programs that are ours (built by `make`), not a package's.
OURS = {"nbdsrv"}

# Functions that run their first argument as a command.
RUNNERS = re.compile(r"(^|_)(run|check_run|run_text|popen|call|check_call|"
                     r"check_output|spawn|exec[lv]p?e?|first)$", re.I)

PROGRAM = re.compile(r"^[a-z][a-z0-9._+-]*$")

SHELL_WORDS = {
    # keywords and builtins of sh/bash: never a package's program
    "if", "then", "else", "elif", "fi", "do", "done", "while", "until",
    "case", "esac", "for", "in", "select", "function", "time", "!",
    "echo", "printf", "cd", "set", "unset", "exit", "return", "export",
    "read", "test", "[", "[[", "local", "shift", "trap", "wait", "kill",
    "true", "false", "eval", "exec", "command", "type", "source", ".",
    "break", "continue", "umask", "ulimit", "getopts", "pwd", "readonly",
    "declare", "let", "hash", "jobs", "alias", "builtin", ":",
}
# Words after which the rest of a simple command is not a command.
NOT_A_COMMAND = {"for", "case", "select", "function", "in", "esac"}
# Prefixes after which the command word follows.
PREFIXES = {"if", "then", "else", "elif", "do", "while", "until", "!",
            "time", "exec", "sudo", "nohup", "xargs"}


# ---------------------------------------------------------------- table

def read_table():
    """[(set, package, [uses])] from scripts/packages.txt."""
    rows = []
    with open(TABLE) as f:
        for n, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            assert len(words) >= 3 and words[0] in ("build", "test"), (
                "scripts/packages.txt:%d: want 'SET PACKAGE USES...' with "
                "SET build or test and USES '-' or names: %r" % (n, line))
            rows.append((words[0], words[1],
                         [w for w in words[2:] if w != "-"]))
    return rows


TABLE_ROWS = read_table()
PROVIDED = {use: pkg for _, pkg, uses in TABLE_ROWS for use in uses}
PACKAGES = {pkg for _, pkg, _ in TABLE_ROWS}


# ---------------------------------------------------------------- shell

def shell_commands(text):
    """The first word of every simple command in the shell TEXT."""
    text = drop_heredocs(text).replace("\\\n", " ")
    text = re.sub(r"'[^']*'", "''", text)
    # $(...) inside double quotes still runs: keep it, on a line of its
    # own, and drop the rest of the quoted text (where ';' or '|' do not
    # separate commands).
    inner = []
    text = re.sub(r'"((?:[^"\\]|\\.)*)"',
                  lambda m: inner.extend(re.findall(r"\$\(([^()]*)\)",
                                                    m.group(1))) or '""',
                  text)
    text = "\n".join([text] + inner)
    text = re.sub(r"(^|\s)#.*", "", text)
    # case labels: "a|b)" starts no command
    text = re.sub(r"(?m)^(\s*)\(?[\w*.$-]+(\s*\|\s*[\w*.$-]+)*\)", r"\1",
                  text)
    defined = set(re.findall(r"(?m)^\s*([A-Za-z_][\w-]*)\s*\(\)", text))
    found = []
    for seg in re.split(r"\n|;|&&|\|\||\||&|\$\(|`|\{|\}|\(", text):
        word = first_command_word(seg.split())
        if word and word not in defined:
            found.append(word)
    return found


def drop_heredocs(text):
    """TEXT without the bodies of its here-documents (data, not code)."""
    out, end = [], None
    for line in text.splitlines():
        if end is not None:
            if line.strip() == end:
                end = None
            continue
        out.append(line)
        m = re.search(r"<<-?\s*['\"]?(\w+)", line)
        if m:
            end = m.group(1)
    return "\n".join(out)


def first_command_word(words):
    """The command a simple command's WORDS start, or None."""
    while words:
        w = words[0].lstrip("@")            # make's silent prefix
        if w in NOT_A_COMMAND:
            return None
        if (w in PREFIXES or w.endswith(")") or w.startswith("$")
                or re.match(r"^\w+=", w)):
            words = words[1:]       # keyword, case label, $SUDO, VAR=x
            continue
        if w in ("env", "timeout"):
            words = [x for x in words[1:] if not x.startswith("-")]
            if w == "timeout":
                words = words[1:]           # the duration
            continue
        if w == "command" and words[1:2] == ["-v"]:
            words = words[2:]
            continue
        if w in SHELL_WORDS:
            return None
        if PROGRAM.match(w) or w.startswith("/"):
            return w
        return None
    return None


# ---------------------------------------------------------------- python

def const_str(node):
    """The string NODE stands for (f-string holes as 'X'), or None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "X"
                       for v in node.values)
    return None


def list_head(node):
    """The elements of the list or tuple a command expression starts
    with ([...] or [...] + more), or None."""
    while isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        node = node.left
    if isinstance(node, (ast.List, ast.Tuple)):
        return node.elts
    return None


def call_name(node):
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def python_uses(tree):
    """(line, kind, name) for programs and modules the module uses."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            uses += call_uses(node)
        elif isinstance(node, ast.For):
            uses += which_loop_uses(node)
        elif isinstance(node, (ast.List, ast.Tuple)):
            uses += run_option_uses(node)
        elif isinstance(node, ast.Assign):
            uses += command_assign_uses(node)
        elif isinstance(node, ast.Import):
            uses += [(node.lineno, "py", a.name.split(".")[0])
                     for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            uses.append((node.lineno, "py", node.module.split(".")[0]))
        s = const_str(node)
        if s and re.match(r"#!\S*sh\b", s):
            uses += [(node.lineno, "prog", w) for w in shell_commands(s)]
    return uses


def call_uses(node):
    name = call_name(node)
    args = node.args
    if name == "which" and args and const_str(args[0]):
        return [(node.lineno, "prog", const_str(args[0]))]
    if name == "importorskip" and args and const_str(args[0]):
        return [(node.lineno, "py", const_str(args[0]).split(".")[0])]
    if not RUNNERS.search(name) or not args:
        return []
    elts = list_head(args[0])
    first = const_str(elts[0]) if elts else const_str(args[0])
    if first is None:
        return []
    if elts is None and len(args) == 1 and " " in first:
        # run("prog args") with a shell: not how our tests run things,
        # but read it as shell rather than miss it.
        return [(node.lineno, "prog", w) for w in shell_commands(first)]
    return [(node.lineno, "prog", first)]


def command_assign_uses(node):
    """cmd = ["prog", ...] (or argv, command): run later."""
    names = [t.id for t in node.targets if isinstance(t, ast.Name)]
    elts = list_head(node.value)
    if not elts or not any(re.search(r"cmd|argv|command", n) for n in names):
        return []
    first = const_str(elts[0])
    return [(node.lineno, "prog", first)] if first else []


def which_loop_uses(node):
    """for tool in ("a", "b"): ... shutil.which(tool) ..."""
    if not isinstance(node.target, (ast.Name, ast.Tuple)):
        return []
    var = node.target if isinstance(node.target, ast.Name) \
        else node.target.elts[0]
    if not isinstance(var, ast.Name) or not isinstance(
            node.iter, (ast.List, ast.Tuple)):
        return []
    checked = any(isinstance(n, ast.Call) and call_name(n) == "which"
                  and n.args and isinstance(n.args[0], ast.Name)
                  and n.args[0].id == var.id
                  for b in node.body for n in ast.walk(b))
    if not checked:
        return []
    names = []
    for e in node.iter.elts:
        if isinstance(e, ast.Tuple) and e.elts:
            e = e.elts[0]
        if const_str(e):
            names.append((node.lineno, "prog", const_str(e)))
    return names


def run_option_uses(node):
    """The shell command after "--run" in a command line."""
    uses = []
    for a, b in zip(node.elts, node.elts[1:]):
        if const_str(a) == "--run" and const_str(b):
            uses += [(node.lineno, "prog", w)
                     for w in shell_commands(const_str(b))]
    return uses


# ---------------------------------------------------------------- sources

def source_files():
    files = []
    for d in SCANNED_DIRS:
        for path in glob.glob(os.path.join(ROOT, d, "**", "*"),
                              recursive=True):
            rel = os.path.relpath(path, ROOT)
            if (os.path.isfile(path) and "/corpus/" not in rel
                    and rel != "scripts/packages.txt"):
                files.append(rel)
    return sorted(files) + ["Makefile"]


def file_uses(rel):
    """(where, kind, name) for one source file."""
    path = os.path.join(ROOT, rel)
    with open(path, errors="replace") as f:
        text = f.read()
    first = text.split("\n", 1)[0]
    if rel.endswith(".py") or "python" in first:
        found = python_uses(ast.parse(text, rel))
    elif rel == "Makefile":
        recipes = "\n".join(l[1:] for l in text.splitlines()
                            if l.startswith("\t"))
        while re.search(r"(?<!\$)\$\([^()]*\)", recipes):
            recipes = re.sub(r"(?<!\$)\$\([^()]*\)", "MAKEVAR", recipes)
        found = [(0, "prog", w) for w in shell_commands(recipes)]
    elif re.match(r"#!\S*sh\b", first):
        found = [(0, "prog", w) for w in shell_commands(text)]
    elif os.path.basename(rel) == "meson.build":
        found = [(0, "pc", m) for m in re.findall(
            r"dependency\s*\(\s*'([^']+)'", text) if m != "threads"]
    else:
        found = []
    return [("%s:%d" % (rel, line) if line else rel, kind, name)
            for line, kind, name in found]


def meson_files():
    return [os.path.relpath(p, ROOT) for p in glob.glob(
        os.path.join(ROOT, "**", "meson.build"), recursive=True)
        if "/build" not in os.path.relpath(p, ROOT)]


def all_uses():
    uses = {}
    for rel in source_files() + meson_files():
        for where, kind, name in file_uses(rel):
            uses.setdefault((kind, name), []).append(where)
    return uses


# ---------------------------------------------------------------- dpkg

def local_python_modules():
    names = set()
    for d in SCANNED_DIRS:
        for p in glob.glob(os.path.join(ROOT, d, "**", "*.py"),
                           recursive=True):
            names.add(os.path.basename(p)[:-3])
    return names


@functools.lru_cache(maxsize=None)
def owner(path):
    """The package that owns PATH (as installed, /usr-merged or not),
    or None."""
    real = os.path.realpath(path)
    candidates = [path, real]
    for p in (path, real):
        if p.startswith("/usr/"):
            candidates.append(p[4:])
        elif p.startswith(("/bin/", "/sbin/", "/lib/")):
            candidates.append("/usr" + p)
    for p in candidates:
        r = subprocess.run(["dpkg-query", "-S", p], capture_output=True,
                           text=True, timeout=60)
        for line in r.stdout.splitlines():
            # "pkg[, pkg]: path"; dpkg-divert's lines name no owner
            if not line.startswith("diversion by "):
                return line.split(":", 1)[0].split(",")[0].strip()
    return None


@functools.lru_cache(maxsize=None)
def everywhere(pkg):
    """True if PKG is on every Debian machine."""
    r = subprocess.run(["dpkg-query", "-W", "-f",
                        "${Essential} ${Priority}", pkg],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.startswith("yes") or r.stdout.endswith("required")


def locate(kind, name):
    """Where NAME of KIND is installed here, or None."""
    if kind == "prog":
        return name if name.startswith("/") and os.path.exists(name) \
            else shutil.which(name)
    if kind == "py":
        spec = importlib.util.find_spec(name)
        if spec is None:
            return None
        return spec.origin if spec.origin not in (None, "namespace") \
            else list(spec.submodule_search_locations)[0]
    r = subprocess.run(["pkg-config", "--path", name],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip() if r.returncode == 0 else None


def missing_line(kind, name, wheres):
    key = {"prog": name, "py": "py:" + name, "pc": "pc:" + name}[kind]
    where = ", ".join(sorted(set(wheres))[:3])
    path = locate(kind, name)
    if path is None:
        return ("%s (used in %s) is not installed here and no line of "
                "scripts/packages.txt names it: find its package (apt-file "
                "search %s) and add 'test PACKAGE %s'"
                % (key, where, name, key))
    pkg = owner(path)
    if pkg is None or everywhere(pkg):
        return None
    if pkg in PACKAGES:
        fix = "add '%s' to the line of %s" % (key, pkg)
    else:
        fix = "add the line 'test %s %s'" % (pkg, key)
    return ("%s (used in %s; %s) comes from package %s, which a fresh "
            "machine lacks: %s to scripts/packages.txt"
            % (key, where, path, pkg, fix))


# ---------------------------------------------------------------- tests

def test_scanner_finds_what_the_suite_runs():
    """The scan sees the programs the suite is known to start, so a
    broken scanner cannot pass the completeness test by finding
    nothing."""
    uses = all_uses()
    for kind, name in [("prog", "sfdisk"), ("prog", "nbdinfo"),
                       ("prog", "unshare"), ("prog", "apt-get"),
                       ("prog", "qemu-img"), ("prog", "ss"),
                       ("prog", "fio"), ("prog", "meson"),
                       ("py", "nbd"), ("prog", "nbd-server")]:
        assert (kind, name) in uses, (kind, name)


def test_scanner_reads_shell():
    """The shell reader takes commands, not quoted text or data."""
    text = """#!/bin/sh
set -eu
x=$(sfdisk --dump "$d" | awk '{ if (a || b) c; d }')
[ -f y ] || { echo "a; notaprogram b" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || SUDO=sudo
case $x in
  build|test) ;;
  get_size|pread) exit 3 ;;
  can_write|can_flush|\\
  can_trim) exit 3 ;;
esac
helper () { :; }
helper
FOO=1 timeout 5 fio --x
case $1 in
  open) qemu-io -c r ;;
esac
cat <<EOF
heredata here
EOF
command -v nbdcopy >/dev/null
echo "$(nbdinfo --size x)"
"""
    assert sorted(shell_commands(text)) == [
        "awk", "cat", "fio", "id", "nbdcopy", "nbdinfo", "qemu-io", "sfdisk"]


def test_every_used_program_has_a_package():
    uses = all_uses()
    problems = []
    for (kind, name), wheres in sorted(uses.items()):
        key = name if kind == "prog" else "%s:%s" % (kind, name)
        base = os.path.basename(name)
        if key in PROVIDED or base in PROVIDED or base in OURS:
            continue
        if kind == "prog" and name.startswith("/") and not name.startswith(
                ("/usr/", "/bin/", "/sbin/")):
            continue                         # not a system program
        if kind == "py" and (name in sys.stdlib_module_names
                             or name in local_python_modules()):
            continue
        line = missing_line(kind, name, wheres)
        if line:
            problems.append(line)
    assert not problems, "\n".join(problems)


def test_every_package_in_the_table_is_known():
    """A misspelt package would make install-deps.sh fail on a fresh
    machine; one apt does not know is no better."""
    unknown = []
    for _, pkg, _ in TABLE_ROWS:
        known = subprocess.run(["dpkg-query", "-W", pkg],
                               capture_output=True, timeout=60)
        if known.returncode != 0:
            known = subprocess.run(["apt-cache", "show", "--no-all-versions",
                                    pkg], capture_output=True, timeout=60)
        if known.returncode != 0:
            unknown.append(pkg)
    assert not unknown, ("scripts/packages.txt names packages neither dpkg "
                         "nor apt knows: %s" % " ".join(unknown))


def test_table_uses_are_what_the_packages_give():
    """For every installed package of the table, what its line says it
    gives is there (a misspelt program would hide a missing one)."""
    wrong = []
    for _, pkg, uses in TABLE_ROWS:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", pkg],
                           capture_output=True, text=True, timeout=60)
        if "install ok installed" not in r.stdout:
            continue
        for use in uses:
            kind, _, name = use.rpartition(":")
            if locate(kind or "prog", name) is None:
                wrong.append("%s (package %s)" % (use, pkg))
    assert not wrong, ("scripts/packages.txt lists what is not installed "
                       "with its package: %s" % ", ".join(wrong))


def test_install_deps_reads_the_table():
    out = subprocess.run([os.path.join(ROOT, "scripts", "install-deps.sh"),
                          "--list", "test"], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == [pkg for _, pkg, _ in TABLE_ROWS]
    build = subprocess.run([os.path.join(ROOT, "scripts", "install-deps.sh"),
                            "--list", "build"], capture_output=True,
                           text=True, timeout=60, check=True).stdout.split()
    assert build == [pkg for s, pkg, _ in TABLE_ROWS if s == "build"]
