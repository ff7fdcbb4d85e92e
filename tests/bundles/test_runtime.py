# Copyright (c) the liverseg contributors. Licensed under the MIT License (see LICENSE).
"""scripts.runtime: keep_freed_memory (repeated forward passes stop faulting in fresh pages for their activations)
and end_distributed without a process group (with one: tests/bundles/test_bundle.py, under torchrun)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bundles.test_networks import BUNDLE_ROOT

# the default network on one training-size window (its 16-channel full-resolution activations are 38 MB, above
# glibc's largest mmap threshold): the fewest page faults of passes 3 to 5 (now and then one pass still grows the
# heap once; without the setting every pass faults in about 40 000 pages)
CHILD = r"""
import json, resource, sys
sys.path.insert(0, {bundle!r})
import torch
torch.set_num_threads(1)
from scripts.runtime import keep_freed_memory
applied = keep_freed_memory() if {apply!r} else None
from scripts.networks import AttentionUNetDS
net = AttentionUNetDS(3, 1, 3, [8, 16, 32, 64, 128], [2, 2, 2, 2]).eval()
x = torch.rand(1, 1, 96, 96, 64)
with torch.no_grad():
    net(x); net(x)
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"applied": applied, "faults": min(faults)}}))
"""


def steady_faults(apply: bool) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(bundle=str(BUNDLE_ROOT), apply=apply)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_spares_page_faults():
    default, kept = steady_faults(False), steady_faults(True)
    assert kept["applied"] is True
    assert default["faults"] > 5_000  # tens of MB of 4 kB pages faulted in again on every pass
    assert kept["faults"] < 500


def test_end_distributed_without_a_process_group_does_nothing():
    import torch
    import torch.distributed as dist

    from scripts.runtime import end_distributed  # the bundle is on sys.path (tests.bundles.test_networks)

    assert not dist.is_initialized()
    end_distributed(None)
    end_distributed(torch.nn.Linear(2, 2))
