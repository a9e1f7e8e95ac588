"""How the box starts a real vLLM server (``onebox.realvllm``): what its environment leaves to it."""

from __future__ import annotations

from onebox.realvllm import server_env


def test_real_vllm_servers_are_not_pinned_to_one_core_but_left_one_thread_each_for_the_kernel() -> None:
    # vLLM's CPU backend would bind each server's compute thread to the first core it does not reserve:
    # two servers on 2 CPUs both on CPU 0, their streams stalling for seconds behind each other.
    env = server_env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"  # and still never reaches the network
