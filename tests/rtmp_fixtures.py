"""A real RTMP server for the RTMP-out tests: nginx with the RTMP module, started per test on a free port.

``running_nginx_rtmp(tmp)`` writes its own ``nginx.conf`` (one ``live`` application, no HTTP) and runs
``nginx -p tmp -c conf -g 'daemon off;'`` in the foreground (Debian ``nginx`` + ``libnginx-mod-rtmp``;
``tests/setup_system.py`` installs them); it skips the test with the reason when nginx or the module is missing
or nginx cannot start, and stops nginx on exit.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.janus_fixtures import free_port

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
CONF = """load_module {module};
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        application live {{ live on; record off; }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx_rtmp(tmp: Path, timeout: float = 10.0) -> Iterator[int]:
    """Yields the RTMP port of a fresh nginx (``rtmp://127.0.0.1:PORT/live/<key>``)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
    if nginx is None or not RTMP_MODULE.is_file():
        pytest.skip("nginx with the RTMP module is not installed (apt-get install nginx libnginx-mod-rtmp)")
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(CONF.format(module=RTMP_MODULE, tmp=tmp, port=port))
    log = open(tmp / "nginx.out", "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.skip(f"nginx could not start ({proc.returncode}): {(tmp / 'nginx.out').read_text()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                pytest.skip(f"nginx did not listen on {port} within {timeout:g} s")
            time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
