"""Election rules with a fake clock, and the Lease ⇄ record translation."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.routing.election import Create, Election, LeaseRecord, Update
from daemon.routing.lease import ANNOTATION, published_address, to_lease, to_record

T0 = 1_700_000_000.0
LEASE_S, RENEW_S = 10, 5.0


def held_by(holder: str, renewed: float, version: str = "7") -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        address=f"/ip4/10.0.0.1/tcp/4001/p2p/{holder}",
        duration_s=LEASE_S,
        renew_time=renewed,
        acquire_time=renewed - 30,
        transitions=2,
        resource_version=version,
    )


def election(identity: str = "me") -> Election:
    return Election(
        identity, f"/ip4/10.0.0.2/tcp/4001/p2p/{identity}", LEASE_S, RENEW_S
    )


def test_expiry_is_strictly_after_renew_plus_duration() -> None:
    record = held_by("other", T0)

    assert not record.expired(T0 + LEASE_S)
    assert record.expired(T0 + LEASE_S + 0.001)
    assert replace(record, renew_time=None).expired(T0)
    assert replace(record, holder="").free(T0)


def test_nothing_is_written_before_the_lease_is_read() -> None:
    assert election().next_write(T0) is None
    assert election().needs_read


def test_an_absent_lease_is_created() -> None:
    e = election()
    e.observed(None)

    write = e.next_write(T0)

    assert write == Create(
        LeaseRecord("me", e.address, LEASE_S, T0, T0, 0, resource_version="")
    )


def test_a_live_lease_of_another_is_left_alone() -> None:
    e = election()
    e.observed(held_by("other", T0))

    assert e.next_write(T0 + LEASE_S) is None
    assert e.leader_address(T0 + LEASE_S) == held_by("other", T0).address
    assert not e.is_leader(T0)


@pytest.mark.parametrize(
    "record",
    [held_by("other", T0), replace(held_by("other", T0 + 5), holder="")],
    ids=["expired", "released"],
)
def test_an_expired_or_free_lease_is_taken_at_the_version_read(
    record: LeaseRecord,
) -> None:
    e = election()
    e.observed(record)
    now = T0 + LEASE_S + 1

    write = e.next_write(now)

    assert isinstance(write, Update)
    assert write.record.holder == "me"
    assert write.record.address == e.address
    assert write.record.resource_version == "7"
    assert write.record.transitions == 3
    assert write.record.renew_time == write.record.acquire_time == now
    assert e.leader_address(now) is None


def test_our_own_lease_is_renewed_keeping_acquire_time() -> None:
    e = election()
    e.observed(replace(held_by("me", T0), address=e.address))

    write = e.next_write(T0 + 2)

    assert isinstance(write, Update)
    assert write.record.renew_time == T0 + 2
    assert write.record.acquire_time == T0 - 30
    assert write.record.transitions == 2


def test_leadership_lapses_at_the_renew_deadline() -> None:
    e = election()
    e.observed(None)
    write = e.next_write(T0)
    assert write is not None
    e.written(replace(write.record, resource_version="1"))

    assert e.is_leader(T0 + RENEW_S - 0.001)
    assert not e.needs_read
    e.failed()
    assert e.is_leader(T0 + RENEW_S - 0.001)
    assert not e.is_leader(T0 + RENEW_S)


def test_after_a_conflict_the_lease_is_read_before_any_write() -> None:
    e = election()
    e.observed(held_by("other", T0))
    assert e.next_write(T0 + LEASE_S + 1) is not None

    e.conflicted()

    assert e.needs_read
    assert e.next_write(T0 + LEASE_S + 1) is None
    e.observed(held_by("winner", T0 + LEASE_S + 1, version="8"))
    assert e.next_write(T0 + LEASE_S + 2) is None


def test_release_hands_back_only_a_lease_we_lead() -> None:
    e = election()
    assert e.release(T0) is None
    e.observed(None)
    write = e.next_write(T0)
    assert write is not None
    e.written(replace(write.record, resource_version="1"))

    release = e.release(T0 + 1)

    assert release is not None
    assert release.record.holder == release.record.address == ""
    assert release.record.duration_s == 1
    assert release.record.resource_version == "1"
    assert release.record.free(T0 + 1)
    assert e.release(T0 + RENEW_S) is None


def test_bad_periods_are_refused() -> None:
    with pytest.raises(ValueError):
        Election("me", "", lease_s=5, renew_deadline_s=5)
    with pytest.raises(ValueError):
        Election("", "", lease_s=10, renew_deadline_s=5)


@dataclass
class ModelApi:
    """A sans-IO Lease store with resourceVersion checks, for the property."""

    lease: LeaseRecord | None = None
    version: int = 0
    candidates: list[Election] = field(default_factory=list)

    def write(self, e: Election, now: float, reply_lost: bool) -> None:
        """One candidate decides and writes; the reply may be lost."""
        write = e.next_write(now)
        if write is None:
            return
        current = self.lease
        if isinstance(write, Create) and current is not None:
            e.conflicted()
            return
        if isinstance(write, Update) and (
            current is None or current.resource_version != write.record.resource_version
        ):
            e.conflicted()
            return
        self.version += 1
        self.lease = replace(write.record, resource_version=str(self.version))
        if reply_lost:
            e.failed()
        else:
            e.written(self.lease)


steps = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "write-lost", "release", "tick"]),
        st.integers(0, 2),
        # steps around the renew deadline and the lease duration
        st.sampled_from([0.1, 0.5, 1.0, 2.5, 4.9, 5.1, 9.9, 10.1]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_no_two_candidates_ever_lead_at_once(
    script: list[tuple[str, int, float]],
) -> None:
    api = ModelApi(candidates=[election(f"n{i}") for i in range(3)])
    now = T0

    for action, who, dt in script:
        e = api.candidates[who]
        if action == "read":
            e.observed(api.lease)
        elif action in ("write", "write-lost"):
            api.write(e, now, reply_lost=action == "write-lost")
        elif action == "release" and (release := e.release(now)) is not None:
            if (
                api.lease
                and api.lease.resource_version == release.record.resource_version
            ):
                api.version += 1
                api.lease = replace(release.record, resource_version=str(api.version))
                e.written(api.lease)
        else:
            now += dt

        leaders = [c for c in api.candidates if c.is_leader(now)]
        assert len(leaders) <= 1
        for leader in leaders:
            assert api.lease is not None and api.lease.holder == leader.identity


def test_lease_object_round_trip_keeps_foreign_annotations() -> None:
    record = held_by("me", T0)
    first = to_lease(None, record, "peerpull")
    first.metadata.annotations = {"team": "infra", ANNOTATION: "stale"}  # type: ignore[union-attr]

    released = replace(record, holder="", address="", duration_s=1)
    again = to_lease(first, released, "peerpull")

    assert to_record(to_lease(None, record, "peerpull")) == record
    assert again.metadata is not None
    assert again.metadata.annotations == {"team": "infra"}
    assert to_record(again) == released


def test_published_address_prefers_routable_with_peer_id() -> None:
    routable = "/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWA"
    assert published_address(["/ip4/127.0.0.1/tcp/4001/p2p/x", routable]) == routable
    assert published_address(["/ip4/10.1.2.3/tcp/4001", routable]) == routable
    assert published_address([]) == ""
