"""The datastore owns the pool's shared state and tells listeners of each change, in a stated order:
the change is applied first, then every listener gets the event in the order they subscribed."""

from __future__ import annotations

from epp.datastore import (
    Datastore,
    DatastoreEvent,
    Endpoint,
    EndpointRemoved,
    EndpointUpserted,
    ModelsChanged,
    RotationChanged,
    Synced,
)


def test_listeners_get_each_change_in_order_after_it_is_applied() -> None:
    datastore = Datastore()
    seen: list[tuple[str, str, bool]] = []

    def listener(tag: str):  # type: ignore[no-untyped-def]
        def on_event(event: DatastoreEvent) -> None:
            # What the listener sees of the datastore is what the event says.
            routable = bool(datastore.view.endpoints)
            seen.append((tag, type(event).__name__, routable))
        return on_event

    datastore.subscribe(listener("first"))
    datastore.subscribe(listener("second"))
    endpoint = datastore.upsert(Endpoint(name="pod", ip="10.0.0.1", port=8000))
    datastore.set_models(endpoint.address, frozenset({"m"}), {})
    datastore.set_ejected(endpoint, True)
    datastore.set_ejected(endpoint, True)  # no change, no event
    datastore.synced = True
    datastore.synced = True  # once
    datastore.remove(endpoint.address)
    assert seen == [
        ("first", "EndpointUpserted", False), ("second", "EndpointUpserted", False),
        ("first", "ModelsChanged", True), ("second", "ModelsChanged", True),
        ("first", "RotationChanged", False), ("second", "RotationChanged", False),
        ("first", "Synced", False), ("second", "Synced", False),
        ("first", "EndpointRemoved", False), ("second", "EndpointRemoved", False),
    ]


def test_readiness_follows_the_events() -> None:
    datastore = Datastore()
    readiness: list[tuple[str, bool]] = []
    datastore.subscribe(lambda event: readiness.append((type(event).__name__, datastore.ready)))
    assert not datastore.ready
    datastore.mark_synced()  # an empty pool is ready once synced
    endpoint = datastore.upsert(Endpoint(name="pod", ip="10.0.0.1", port=8000))  # not routable yet
    datastore.set_models(endpoint.address, frozenset({"m"}), {})
    assert readiness == [("Synced", True), ("EndpointUpserted", False), ("ModelsChanged", True)]


def test_in_flight_counts_belong_to_the_address_and_outlive_a_flap() -> None:
    datastore = Datastore()
    first = datastore.upsert(Endpoint(name="pod", ip="10.0.0.1", port=8000))
    count = datastore.acquire(first.address)
    datastore.remove(first.address)
    back = datastore.upsert(Endpoint(name="pod-again", ip="10.0.0.1", port=8000))
    assert back.in_flight == 1
    datastore.release(back.address, count)
    assert back.in_flight == 0
    datastore.remove(back.address)
    assert datastore.in_flight_addresses() == 0


def test_events_are_typed() -> None:
    events: list[DatastoreEvent] = []
    datastore = Datastore()
    datastore.subscribe(events.append)
    endpoint = datastore.upsert(Endpoint(name="pod", ip="10.0.0.1", port=8000))
    datastore.upsert(Endpoint(name="renamed", ip="10.0.0.1", port=8000))
    datastore.set_models(endpoint.address, frozenset({"m"}), {})
    datastore.set_ejected(endpoint, True)
    datastore.mark_synced()
    datastore.remove(endpoint.address)
    assert events == [
        EndpointUpserted(endpoint, added=True), EndpointUpserted(endpoint, added=False),
        ModelsChanged(endpoint), RotationChanged(endpoint), Synced(), EndpointRemoved(endpoint),
    ]
