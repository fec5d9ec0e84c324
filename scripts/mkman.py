#!/usr/bin/python3
"""Turn one docs/*.md page into a man page with lowdown.

    scripts/mkman.py LOWDOWN INPUT.md OUTPUT PAGE SECTION

LOWDOWN is the lowdown program Meson found.

The Markdown pages start with a "# title" line, then "## NAME",
"## SYNOPSIS" and so on.  The title is dropped and every heading moves
up a level, so the "##" sections become the man page's sections (.SH).

PAGE is the installed name.  The plugin and filter pages are written
under nbdkit's names (docs/nbdkit-memory-plugin.md) but installed as
nbdsrv-memory-plugin(1), so they never replace the pages of Debian's
nbdkit: the NAME line, and the SEE ALSO entries that name a page
shipped here, are renamed to match.
"""
import os
import re
import subprocess
import sys

MODULE_PAGE = re.compile(r"\bnbdkit-([a-z0-9-]+)-(plugin|filter)\b(?!\()")


def shipped_pages(docdir):
    """nbdkit-NAME-KIND names that have a page in DOCDIR."""
    return {name[:-3] for name in os.listdir(docdir)
            if name.endswith(".md") and MODULE_PAGE.fullmatch(name[:-3])}


def rename(text, shipped):
    """nbdkit-NAME-KIND to nbdsrv-NAME-KIND(1) where it is ours."""
    def sub(m):
        if m.group(0) not in shipped:
            return m.group(0)
        return "nbdsrv-%s-%s(1)" % (m.group(1), m.group(2))
    return MODULE_PAGE.sub(sub, text)


def split_row(line):
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_as_list(rows):
    """A Markdown table as a list, one item per row: "- KEY: VALUE"
    for two columns, "- KEY: HEAD2 VALUE2; HEAD3 VALUE3" for more
    (empty cells left out), indented as the table was.  A man page is
    read at 80 columns, where tbl cannot fit long values (paths, option
    lists) into a column and warns."""
    indent = rows[0][:len(rows[0]) - len(rows[0].lstrip())]
    head = split_row(rows[0])
    out = []
    for row in rows[2:]:
        cells = split_row(row)
        if len(cells) == 2:
            rest = cells[1]
        else:
            rest = "; ".join("%s %s" % (h, c)
                             for h, c in zip(head[1:], cells[1:]) if c)
        out.append("%s- %s: %s\n" % (indent, cells[0], rest))
    return out


def convert(lines, page, shipped):
    """The Markdown for lowdown: headings up a level, tables as lists,
    NAME and SEE ALSO renamed."""
    out = []
    section = None
    table = []
    for line in lines + [""]:
        if line.lstrip().startswith("|"):
            table.append(line)
            continue
        if table:
            out += table_as_list(table)
            table = []
        if line.startswith("# "):
            continue                    # the title; .TH replaces it
        m = re.match(r"(#{2,}) (.*)", line)
        if m:
            section = m.group(2).strip()
            out.append(m.group(1)[1:] + " " + section + "\n")
            continue
        if section == "NAME" and " - " in line:
            line = page + " - " + line.split(" - ", 1)[1]
        elif section == "SEE ALSO":
            line = rename(line, shipped)
        out.append(line)
    return "".join(out)


def main():
    if len(sys.argv) != 6:
        sys.exit("usage: mkman.py LOWDOWN INPUT.md OUTPUT PAGE SECTION")
    lowdown, src, dest, page, section = sys.argv[1:]
    with open(src, encoding="utf-8") as f:
        lines = f.readlines()
    text = convert(lines, page, shipped_pages(os.path.dirname(src)))
    if "\n# NAME\n" not in "\n" + text:
        sys.exit("%s: no '## NAME' section: a man page needs one" % src)
    # --parse-no-super: "2^63" is arithmetic here, not a superscript.
    r = subprocess.run(
        [lowdown, "-s", "-Tman", "--parse-no-super",
         "-M", "title=" + page, "-M", "section=" + section,
         "-M", "source=nbdsrv", "-M", "volume=nbdsrv"],
        input=text, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("lowdown failed on %s: %s" % (src, r.stderr))
    with open(dest + ".tmp", "w", encoding="utf-8") as f:
        f.write(r.stdout)
    os.replace(dest + ".tmp", dest)


if __name__ == "__main__":
    main()
