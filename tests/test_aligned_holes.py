"""`benchmarks/aligned_holes.py`: its reproduction of why the retained heap grows on several CPU devices.

glibc before 2.38 serves `posix_memalign` from a chunk of the block plus its alignment and more
(sourceware bug 14581), so a freed block's hole, with something allocated above it, is not reused
for the same aligned request; `malloc` reuses it. The script's `reuses_hole` must show exactly
that, or its figures in `benchmarks/README.md` ("Seventh pass") would not mean what they say.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from vljepa_jax import host_memory

# A process of its own: the allocator must be set as `host_memory` retains it (blocks from the heap).
_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import aligned_holes
    from vljepa_jax import host_memory
    assert host_memory.retain_freed_memory("retain")
    block = 64 * 2**20
    aligned, plain = aligned_holes.reuses_hole(True, block), aligned_holes.reuses_hole(False, block)
    print(*aligned_holes.glibc_version(), aligned["reused"], aligned["grown"], plain["reused"], plain["grown"],
          aligned["hole"] - block)
""")


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc (Linux)")  # pylint: disable=protected-access
def test_an_aligned_block_does_not_reuse_its_own_hole_before_glibc_2_38():
  out = subprocess.run([sys.executable, "-c", _CHILD, os.path.join(REPO, "benchmarks")], capture_output=True,
                       text=True, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu")).stdout.split()
  major, minor = int(out[0]), int(out[1])
  aligned_reused, aligned_grown, plain_reused, plain_grown, hole_slack = (
      out[2] == "True", int(out[3]), out[4] == "True", int(out[5]), int(out[6]))
  # The freed chunk is the block plus glibc's chunk overhead: tens of bytes.
  assert 0 < hole_slack < 4096, hole_slack
  assert plain_reused and plain_grown == 0  # malloc takes an exact hole
  if (major, minor) < (2, 38):
    assert not aligned_reused and aligned_grown >= 64 * 2**20, (aligned_reused, aligned_grown)
  # glibc 2.38's fix scans the free bins for an aligned chunk, which should take the hole; no machine
  # with it has run this yet, so nothing is asserted there beyond `malloc`'s behaviour.
