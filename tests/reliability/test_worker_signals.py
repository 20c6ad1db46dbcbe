"""A pool worker stopped by its parent's clean-up leaves quietly: no traceback on stderr."""

import subprocess
import sys

SCRIPT = """
import signal, time
from rmdata.cliutils import _terminate
from rmdata.utils import worker_pool
signal.signal(signal.SIGTERM, _terminate)   # as every command installs it
pool = worker_pool(2, time.sleep, (5.0,))    # workers still inside their initializer
time.sleep(0.5)
pool.terminate()                             # SIGTERM to each worker, as `with pool` does on an error
pool.join()
print("joined")
"""


def test_terminated_workers_print_no_traceback():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "joined" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
