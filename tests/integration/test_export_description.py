"""The export description is asked of the plugin only when a client
wants it (NBD_INFO_DESCRIPTION), and once, as nbdkit does."""
import os

import nbd
import pytest

from util import accepting, write_script, SH_PLUGIN

SCRIPT = r"""#!/bin/bash
case "$1" in
  get_size) echo 1M ;;
  pread) dd if=/dev/zero bs=$3 count=1 iflag=count_bytes status=none ;;
  export_description) echo asked >> "$LOG"; echo "a description" ;;
  *) exit 2 ;;
esac
"""


@pytest.fixture
def server(server):
    return accepting(server)


@pytest.mark.parametrize("full_info,asked", [(False, 0), (True, 1)])
def test_description_only_when_asked(server, impl, tmp_path, full_info,
                                     asked):
    log = tmp_path / "log"
    script = write_script(tmp_path, "d.sh", SCRIPT)
    env = dict(os.environ, LOG=str(log))
    srv = server(SH_PLUGIN if impl == "nbdkit" else "sh", script,
                 impl=impl, env=env)
    h = nbd.NBD()
    h.set_full_info(full_info)
    h.connect_uri(srv.uri)
    if full_info:
        assert h.get_export_description() == "a description"
    h.shutdown()
    srv.stop()
    lines = log.read_text().splitlines() if log.exists() else []
    assert len(lines) == asked
