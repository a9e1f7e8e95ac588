"""The ``epp`` and ``bbr`` console scripts: the gRPC runtime's settings first, then ``epp.cli``.

gRPC's core reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported: set afterwards it
changes nothing. So this module imports nothing that imports ``grpc`` (a test checks), sets the
defaults below where the environment does not set the variable, and only then imports the commands.

``-event_engine_listener`` serves the ext_proc and health connections with gRPC's older I/O
manager instead of its EventEngine listener: fewer thread wake-ups per ext_proc message, and less
CPU and time per request (measured: docs/request-path.md, "Command lines"). A ``GRPC_EXPERIMENTS``
of your own replaces the default.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping, Sequence
from typing import Final

GRPC_EXPERIMENTS: Final = "GRPC_EXPERIMENTS"
# The experiments the servers run with unless the environment names its own.
DEFAULT_GRPC_EXPERIMENTS: Final = "-event_engine_listener"


def grpc_environment(environ: MutableMapping[str, str]) -> None:
    """Set the gRPC runtime's defaults in ``environ`` where it sets nothing of its own."""
    environ.setdefault(GRPC_EXPERIMENTS, DEFAULT_GRPC_EXPERIMENTS)


def epp_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``epp``."""
    grpc_environment(os.environ)
    from epp.cli import epp_main as run

    return run(argv)


def bbr_main(argv: Sequence[str] | None = None) -> int:
    """Console script ``bbr``."""
    grpc_environment(os.environ)
    from epp.cli import bbr_main as run

    return run(argv)
