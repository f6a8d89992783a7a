"""Stand-in for GPT-NeoX v1.0's deepy.py + DeeperSpeed v1.0's runner (tests only).

Reads the hostfile (DLTS_HOSTFILE) as DeeperSpeed does. Several hosts: the SLURM runner's
``srun -n <all slots> --export=ALL python -u train.py ARGS`` (runner.py / multinode_runner.py
SlurmRunner). One host: the local launcher, one process per slot with RANK/LOCAL_RANK/
WORLD_SIZE set (deepspeed.launcher.launch), as DeepSpeed intends; DeeperSpeed v1.0 itself fails
there (runner.py line 375, tests/test_neox_upstream.py), so the workflow refuses one-node GPU
layouts and this branch serves only the CPU test layouts. Exit status: the launched processes'.
"""

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import HERE, log_call, read_hostfile  # noqa: E402


def main() -> int:
    log_call("deepy.py", cwd=os.getcwd())
    user_script, args = sys.argv[1], sys.argv[2:]
    pool = read_hostfile(os.environ["DLTS_HOSTFILE"])
    train = [sys.executable, "-u", str(HERE / user_script), *args]
    if len(pool) > 1:
        srun = [str(HERE / "bin" / "srun"), "-n", str(sum(pool.values())), "--export=ALL"]
        return subprocess.run(srun + train).returncode
    (slots,) = pool.values()
    procs = []
    for rank in range(slots):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(slots),
            "MASTER_ADDR": os.environ.get("MASTER_ADDR", "127.0.0.1"),
        }
        procs.append(subprocess.Popen(train, env=env))
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
