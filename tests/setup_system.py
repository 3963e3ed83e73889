"""Install the system programs the tests drive for real (espeak-ng for speech, Chromium for the page,
Janus for the audience fan-out, nginx with the RTMP module for RTMP out).

Run by `make test` before pytest. It installs only what is missing, through Debian's apt, and never fails the
run: tests that need a program that could not be installed skip with a reason naming it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

NEEDED = {"espeak-ng": "espeak-ng", "chromium": "chromium", "janus": "janus"}  # command -> Debian package
NEEDED_FILES = {"/usr/sbin/nginx": "nginx", "/usr/lib/nginx/modules/ngx_rtmp_module.so": "libnginx-mod-rtmp"}


def main() -> int:
    missing = [pkg for cmd, pkg in NEEDED.items() if shutil.which(cmd) is None]
    missing += [pkg for path, pkg in NEEDED_FILES.items() if not os.path.exists(path)]
    if not missing:
        return 0
    apt = shutil.which("apt-get")
    if apt is None:
        print(f"setup_system: apt-get not found; tests needing {missing} will skip", file=sys.stderr)
        return 0
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        print(f"setup_system: not root and no sudo; tests needing {missing} will skip", file=sys.stderr)
        return 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"setup_system: installing {' '.join(missing)} with apt-get", flush=True)
    quiet = {"stdout": subprocess.DEVNULL}
    subprocess.run([*prefix, apt, "-qq", "update"], env=env, check=False, **quiet)
    result = subprocess.run([*prefix, apt, "-qq", "install", "-y", *missing], env=env, check=False, **quiet)
    if result.returncode != 0:
        print(f"setup_system: apt-get failed ({result.returncode}); dependent tests will skip", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
