"""The ends a scrape cannot show yet: as many as routed since, the oldest requests first."""

from epp.datastore import SEND_SHOWS_AFTER, Endpoint, unseen_ends

NOW = 1000.0
SCRAPED = NOW - 0.03  # every pod's last scrape: sent and answered 30 ms ago
FRESH = NOW - 0.2  # scrapes older than this are stale


def pod(name: str, *sent: float, running: int = 0, waiting: int = 0, scraped: float = SCRAPED) -> Endpoint:
    """A pod this EPP routed requests to at ``sent`` (monotonic times), last scraped at ``scraped``
    showing ``running`` and ``waiting``."""
    e = Endpoint(name, f"10.0.0.{len(name)}", 8000)
    for at in sent:
        e.load.routed(at)
    e.metrics.running, e.metrics.waiting = running, waiting
    e.metrics.updated_at = e.metrics.sent_at = scraped
    return e


def test_nothing_routed_since_the_scrapes_means_no_end_is_guessed():
    pool = [pod("a", NOW - 0.9, NOW - 0.5, running=2), pod("bb", NOW - 0.7, running=1)]
    assert unseen_ends(pool, FRESH) == [0, 0]


def test_as_many_ends_as_requests_routed_since_the_oldest_requests_first_across_the_pool():
    # Counted by the scrapes: a's requests from 0.9 s and 0.5 s ago, b's from 0.7 s ago. Since, two
    # requests were routed (to b): the two oldest counted ones have most likely ended, a's and b's.
    a = pod("a", NOW - 0.9, NOW - 0.5, running=2)
    b = pod("bb", NOW - 0.7, NOW - 0.01, NOW - 0.005, running=1)
    assert unseen_ends([a, b], FRESH) == [1, 1]


def test_no_pod_is_given_more_ends_than_its_scrape_counted_and_an_idle_pool_none():
    a = pod("a", NOW - 0.9, running=1)
    b = pod("bb", *(NOW - 0.01 + i * 0.001 for i in range(5)))  # idle at its scrape; five since
    assert unseen_ends([a, b], FRESH) == [1, 0]
    idle = [pod("a", NOW - 0.01), pod("bb", NOW - 0.005)]
    assert unseen_ends(idle, FRESH) == [0, 0]


def test_the_counted_requests_are_the_latest_routed_before_the_scrape_could_see_them():
    # The scrape counts one request: of the two routed before it, the later one (the earlier ended
    # before the scrape). A request routed just before the scrape was sent may have been missed by
    # it: it counts as routed since (SEND_SHOWS_AFTER), not as one the scrape counted.
    # One request routed since (to b) stands for one end: a's counted request (0.4 s ago) is older
    # than b's (0.2 s ago); the one routed just before a's scrape, newer than b's, is not counted.
    a = pod("a", NOW - 0.9, NOW - 0.4, SCRAPED - SEND_SHOWS_AFTER / 2, running=1)
    b = pod("bb", NOW - 0.2, NOW - 0.01, running=1)
    assert unseen_ends([a, b], FRESH) == [1, 0]


def test_a_request_routed_before_the_scrapes_were_sent_stands_for_no_end():
    # Its end came before the scrapes, which show it already.
    a = pod("a", NOW - 0.9, running=1)
    b = pod("bb", NOW - 0.6, SCRAPED - 0.001, running=1)
    assert unseen_ends([a, b], FRESH) == [0, 0]


def test_an_end_is_not_put_on_a_pod_scraped_after_the_request_it_stands_for_was_routed():
    # a's scrape is 40 ms old, b's 2 ms: the request routed 10 ms ago came after an end that b's
    # scrape already shows, if it was b's; so it is put on a, though b's request is the older.
    a = pod("a", NOW - 0.5, running=1, scraped=NOW - 0.04)
    b = pod("bb", NOW - 0.9, NOW - 0.01, running=1, scraped=NOW - 0.002)
    assert unseen_ends([a, b], FRESH) == [1, 0]


def test_an_end_this_epp_saw_is_not_guessed_again_on_the_same_request():
    # Two requests routed since (to b) stand for two ends; one was seen, a's oldest. The other is
    # guessed on the oldest request left: b's, from 0.85 s ago, not a's seen one from 0.9 s ago.
    a = pod("a", NOW - 0.9, NOW - 0.8, running=2)
    a.load.answer_ended(NOW - 0.02)
    b = pod("bb", NOW - 0.85, NOW - 0.01, NOW - 0.005, running=1)
    assert unseen_ends([a, b], FRESH) == [0, 1]


def test_a_request_routed_to_a_queuing_pod_stands_for_an_end_elsewhere():
    queuing = pod("a", NOW - 0.9, NOW - 0.8, NOW - 0.01, running=1, waiting=1)
    b = pod("bb", NOW - 0.5, running=1)
    assert unseen_ends([queuing, b], FRESH) == [0, 1]


def test_ends_this_epp_saw_come_off_the_guess():
    a = pod("a", NOW - 0.9, NOW - 0.8, NOW - 0.01, running=2)
    a.load.answer_ended(NOW - 0.02)  # followed to its end: already off the load
    assert unseen_ends([a], FRESH) == [0]


def test_a_stale_or_never_scraped_pod_gets_no_guess_and_its_sends_make_none():
    stale = pod("stale", NOW - 0.9, NOW - 0.01, running=1, scraped=NOW - 5)
    never = pod("never", NOW - 0.8, NOW - 0.01, scraped=0.0)
    fresh = pod("fresh", NOW - 0.7, running=1)
    assert unseen_ends([stale, never, fresh], FRESH) == [0, 0, 0]


def test_a_pod_that_queued_at_its_scrape_is_given_no_end():
    # Its queue is load measured to last; the end goes to the oldest request elsewhere.
    queuing = pod("a", NOW - 0.9, NOW - 0.8, running=1, waiting=1)
    b = pod("bb", NOW - 0.5, NOW - 0.01, running=1)
    assert unseen_ends([queuing, b], FRESH) == [0, 1]
