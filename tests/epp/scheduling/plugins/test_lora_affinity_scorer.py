from tests.epp.scheduling.builders import GEMMA, endpoint, plugin, request

ADAPTER = "gemma-sql-lora"


def lora_pod(name, **metrics):
    return endpoint(name, loras={ADAPTER: GEMMA}, **metrics)


def test_prefers_adapter_running_then_room_to_load_then_queued_then_full():
    pods = [
        lora_pod("running", running_adapters={ADAPTER, "other"}, max_loras=2),
        lora_pod("room", running_adapters={"other"}, max_loras=2),
        lora_pod("queued", running_adapters={"other"}, waiting_adapters={ADAPTER}, max_loras=2),
        lora_pod("full", running_adapters={"x", "y"}, max_loras=2),
    ]
    assert plugin("lora-affinity-scorer").score({}, request(ADAPTER), pods) == [1.0, 0.8, 0.6, 0.0]


def test_a_base_model_request_needs_no_adapter_and_scores_one_everywhere():
    pods = [lora_pod("full", running_adapters={"x", "y"}, max_loras=2), endpoint("plain")]
    assert plugin("lora-affinity-scorer").score({}, request(GEMMA), pods) == [1.0, 1.0]
