"""Test-session set-up shared by every area."""

import os

# The suite forks children (the one box's EPPs, BBRs, Envoy) from a process that already runs gRPC
# servers and channels; with gRPC's fork handlers installed a child between fork and exec has been
# seen to abort ("epoll_wait error: Bad file descriptor", exit -6). The children exec at once and
# need none of the parent's gRPC state, so the handlers are not installed. Set before gRPC loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
