"""The status book: per-extension counts kept up to date event by event, and per-proxy
lists built only when read."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshext.api.meta import ResourceKey
from meshext.server.delivery import DeliveryState, DeliveryTracker
from meshext.server.status_book import DeliveryCounts, StatusBook

TAG = ResourceKey("ServiceMeshExtension", "bookinfo", "tag")
COUNTER = ResourceKey("ServiceMeshExtension", "bookinfo", "counter")
TAG_NAME = "meshext.servicemeshextension.bookinfo.tag"
COUNTER_NAME = "meshext.servicemeshextension.bookinfo.counter"


def offer(book: StatusBook, node: str, tag: str = "v1", counter: str | None = None) -> None:
    versions = {TAG: (TAG_NAME, tag)}
    if counter is not None:
        versions[COUNTER] = (COUNTER_NAME, counter)
    book.offered(node, versions, messages={TAG_NAME: f"tag-{tag}", COUNTER_NAME: "c"})


def test_an_offered_extension_counts_the_proxy_as_pending_until_it_acks() -> None:
    book = StatusBook()
    offer(book, "a")
    offer(book, "b")
    assert book.counts(TAG) == DeliveryCounts(pending=2)
    book.acked("a", [TAG_NAME], "v1")
    assert book.counts(TAG) == DeliveryCounts(running=1, pending=1)
    assert book.counts(TAG).summary() == "1/2 running, 1 pending"


def test_a_rejection_counts_as_rejected_until_the_proxy_accepts_that_version() -> None:
    book = StatusBook()
    offer(book, "a")
    book.nacked("a", [TAG_NAME], "v1", "Unable to create Wasm plugin")
    assert book.counts(TAG) == DeliveryCounts(rejected=1)
    assert book.tracker.rejects("a")
    book.acked("a", [TAG_NAME], "v1")
    assert book.counts(TAG) == DeliveryCounts(running=1)
    assert not book.tracker.rejects("a")


def test_a_new_version_makes_a_running_proxy_pending_again() -> None:
    book = StatusBook()
    offer(book, "a")
    book.acked("a", [TAG_NAME], "v1")
    offer(book, "a", tag="v2")
    assert book.counts(TAG) == DeliveryCounts(pending=1)
    (delivery,) = book.deliveries(TAG)
    assert (delivery.version, delivery.running_version) == ("v2", "v1")


def test_an_ack_of_an_older_version_leaves_the_proxy_pending() -> None:
    book = StatusBook()
    offer(book, "a", tag="v2")
    book.acked("a", [TAG_NAME], "v1")
    assert book.counts(TAG) == DeliveryCounts(pending=1)


def test_a_disconnected_proxy_counts_nowhere_and_its_rejections_are_forgotten() -> None:
    book = StatusBook()
    offer(book, "a", counter="c1")
    book.nacked("a", [TAG_NAME], "v1", "bad")
    book.forget_proxy("a")
    assert book.counts(TAG) == DeliveryCounts()
    assert book.counts(COUNTER).summary() == "no proxies"
    assert book.deliveries(TAG) == ()
    assert not book.tracker.rejects("a")


def test_an_extension_no_longer_offered_to_a_proxy_stops_counting_it() -> None:
    book = StatusBook()
    offer(book, "a", counter="c1")
    book.acked("a", [COUNTER_NAME], "c1")
    offer(book, "a")
    assert book.counts(COUNTER) == DeliveryCounts()
    assert book.counts(TAG) == DeliveryCounts(pending=1)
    book.acked("a", [COUNTER_NAME], "c1")  # a late ACK for what is gone changes nothing
    assert book.counts(COUNTER) == DeliveryCounts()


def test_a_left_out_extension_stays_in_status_as_rejected_and_is_not_offered_again() -> None:
    book = StatusBook()
    offer(book, "a")
    book.nacked("a", [TAG_NAME], "v1", "bad config")
    book.offered("a", {TAG: (TAG_NAME, "v1")}, left_out=[TAG])
    (delivery,) = book.deliveries(TAG)
    assert delivery.state is DeliveryState.REJECTED
    assert delivery.message == "bad config"
    assert book.tracker.is_rejected("a", TAG_NAME, "v1")


def test_deliveries_list_every_offered_proxy_by_node_id() -> None:
    book = StatusBook()
    for node in ("c", "a", "b"):
        offer(book, node)
    book.acked("b", [TAG_NAME], "v1")
    assert [(d.proxy, d.state) for d in book.deliveries(TAG)] == [
        ("a", DeliveryState.PENDING),
        ("b", DeliveryState.RUNNING),
        ("c", DeliveryState.PENDING),
    ]


class CountingTracker(DeliveryTracker):
    def __init__(self) -> None:
        super().__init__()
        self.state_calls = 0
        self.offers = 0

    def offered(self, node_id: str, name: str, version: str, message: object) -> None:
        self.offers += 1
        super().offered(node_id, name, version, message)

    def phase(self, node_id: str, name: str, version: str) -> DeliveryState:
        self.state_calls += 1
        return super().phase(node_id, name, version)


def test_an_ack_costs_the_same_with_ten_proxies_as_with_a_thousand() -> None:
    def work_per_ack(proxies: int) -> int:
        tracker = CountingTracker()
        book = StatusBook(tracker)
        for index in range(proxies):
            offer(book, f"p{index}")
        book.counts(TAG)  # every offer counted
        tracker.state_calls = 0
        book.acked("p0", [TAG_NAME], "v1")
        return tracker.state_calls

    assert work_per_ack(10) == work_per_ack(1000) == 1


def test_a_push_to_every_proxy_is_counted_when_the_book_is_read() -> None:
    tracker = CountingTracker()
    book = StatusBook(tracker)
    for index in range(1000):
        offer(book, f"p{index}")
    assert tracker.offers == 0
    assert book.counts(TAG) == DeliveryCounts(pending=1000)
    assert tracker.offers == 1000


def test_a_proxys_offers_are_counted_when_it_answers() -> None:
    tracker = CountingTracker()
    book = StatusBook(tracker)
    offer(book, "a")
    offer(book, "b")
    book.acked("a", [TAG_NAME], "v1")
    assert tracker.offers == 1
    assert tracker.last_accepted("a", TAG_NAME) == "tag-v1"


def test_offers_to_a_proxy_that_never_answers_are_not_kept_waiting_without_end() -> None:
    tracker = CountingTracker()
    book = StatusBook(tracker)
    for round_ in range(100):
        offer(book, "silent", tag=f"v{round_}")
    assert tracker.offers >= 90


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["offer", "offer-left-out", "ack", "nack", "forget"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["v1", "v2", "v3"]),
        st.booleans(),
    ),
    max_size=40,
)


def apply(book: StatusBook, event: tuple[str, str, str, bool]) -> None:
    """One generated event: an offer (with or without the counter), an offer left out,
    an ACK, a NACK or a disconnect."""
    kind, node, version, with_counter = event
    if kind == "offer":
        offer(book, node, tag=version, counter=version if with_counter else None)
    elif kind == "offer-left-out":
        book.offered(node, {TAG: (TAG_NAME, version)}, left_out=[TAG])
    elif kind == "ack":
        book.acked(node, [TAG_NAME, COUNTER_NAME], version)
    elif kind == "nack":
        book.nacked(node, [TAG_NAME] if with_counter else [COUNTER_NAME], version, "no")
    else:
        book.forget_proxy(node)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_counts_always_equal_a_recount_of_the_deliveries(
    events: list[tuple[str, str, str, bool]],
) -> None:
    book = StatusBook()
    for event in events:
        apply(book, event)
    for key in (TAG, COUNTER):
        states = [d.state for d in book.deliveries(key)]
        assert book.counts(key) == DeliveryCounts(
            running=states.count(DeliveryState.RUNNING),
            rejected=states.count(DeliveryState.REJECTED),
            pending=states.count(DeliveryState.PENDING),
        )


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_counting_offers_late_gives_the_status_that_counting_them_at_once_gives(
    events: list[tuple[str, str, str, bool]],
) -> None:
    late, at_once = StatusBook(), StatusBook()
    for event in events:
        apply(late, event)
        apply(at_once, event)
        version = event[2]
        at_once.counts(TAG)  # reading counts every queued offer
        # What isolation reads between events: rejections, and for a rejected
        # resource what the proxy accepted before.
        for proxy in "abc":
            for name in (TAG_NAME, COUNTER_NAME):
                rejected = at_once.tracker.is_rejected(proxy, name, version)
                assert late.tracker.is_rejected(proxy, name, version) == rejected
                if rejected:
                    assert late.tracker.last_accepted(proxy, name) == (
                        at_once.tracker.last_accepted(proxy, name)
                    )
                    assert late.tracker.state(proxy, name, version) == (
                        at_once.tracker.state(proxy, name, version)
                    )
            assert late.tracker.rejects(proxy) == at_once.tracker.rejects(proxy)
    for key in (TAG, COUNTER):
        assert late.deliveries(key) == at_once.deliveries(key)
        assert late.counts(key) == at_once.counts(key)
