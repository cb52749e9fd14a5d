"""Election: the sans-IO leader election rules over one Lease record.

It owns no client and no clock: the shell (`lease.py`) feeds it what it
read or wrote and the current wall time in seconds, and asks it what to
write next. The rules follow the coordination.k8s.io/v1 Lease contract:

- a Lease may be taken only when it is free (no holder) or expired
  (`renewTime + leaseDurationSeconds < now`); every write carries the
  resourceVersion last read, so of two racing writers the API server lets
  exactly one through and answers the other 409 Conflict;
- after a conflict nothing is written until the Lease has been read again;
- a leader is a leader only while its last successful renewal is younger
  than the renew deadline, which is shorter than the lease duration, so it
  has stepped down before anyone else may take the Lease over.

Times are compared across nodes, so node clocks must agree to well within
`lease_s - renew_deadline_s` (Kubernetes nodes run NTP).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says; `holder` and `address` are "" when nobody holds it."""

    holder: str
    address: str
    duration_s: int
    renew_time: float | None = None
    acquire_time: float | None = None
    transitions: int = 0
    resource_version: str = ""

    def expired(self, now: float) -> bool:
        """True when the holder's claim has lapsed at wall time `now`."""
        if self.renew_time is None:
            return True
        return self.renew_time + self.duration_s < now

    def free(self, now: float) -> bool:
        """True when anyone may take the Lease at `now`."""
        return not self.holder or self.expired(now)


@dataclass(frozen=True)
class Create:
    """Create the Lease (it does not exist yet) holding `record`."""

    record: LeaseRecord


@dataclass(frozen=True)
class Update:
    """Replace the Lease with `record`, conditional on its resourceVersion."""

    record: LeaseRecord


Write = Create | Update


class Election:
    """One candidate's view of the Lease and its rules for writing it."""

    def __init__(
        self, identity: str, address: str, lease_s: int, renew_deadline_s: float
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        if not 0 < renew_deadline_s < lease_s:
            raise ValueError("renew deadline must be positive and below lease")
        self.identity = identity
        self.address = address
        self.lease_s = lease_s
        self.renew_deadline_s = renew_deadline_s
        self._known = False
        self._record: LeaseRecord | None = None
        self._renewed_at: float | None = None

    @property
    def needs_read(self) -> bool:
        """True when the Lease must be read before deciding anything.

        After our own successful write we know the current resourceVersion
        and renew from it directly; otherwise (followers, after a conflict or
        an error) we read first.
        """
        return not self._known or self._renewed_at is None

    def observed(self, record: LeaseRecord | None) -> None:
        """The Lease as just read; None when it does not exist."""
        self._known = True
        self._record = record
        if record is None or record.holder != self.identity:
            self._renewed_at = None

    def next_write(self, now: float) -> Write | None:
        """What to write at `now`, or None when someone else holds the Lease."""
        if not self._known:
            return None
        current = self._record
        if current is None:
            return Create(self._claim(now, None))
        if current.holder == self.identity or current.free(now):
            return Update(self._claim(now, current))
        return None

    def written(self, record: LeaseRecord) -> None:
        """The API server accepted our write and returned `record`."""
        self._known = True
        self._record = record
        held = record.holder == self.identity
        self._renewed_at = record.renew_time if held else None

    def conflicted(self) -> None:
        """Our write lost (409): someone else wrote first; read again."""
        self._known = False
        self._renewed_at = None

    def failed(self) -> None:
        """The API could not be reached; leadership lapses by the deadline."""
        self._known = False

    def is_leader(self, now: float) -> bool:
        """True while our last renewal is younger than the renew deadline."""
        if self._renewed_at is None or self._record is None:
            return False
        return now - self._renewed_at < self.renew_deadline_s

    def leader_address(self, now: float) -> str | None:
        """The address another live leader published, if any."""
        record = self._record
        if record is None or record.free(now) or record.holder == self.identity:
            return None
        return record.address or None

    def release(self, now: float) -> Update | None:
        """The write that hands the Lease back at once, if we hold it."""
        if not self.is_leader(now) or self._record is None:
            return None
        released = replace(
            self._record, holder="", address="", duration_s=1, renew_time=now
        )
        return Update(released)

    def _claim(self, now: float, current: LeaseRecord | None) -> LeaseRecord:
        """The record that makes (or keeps) us the holder at `now`."""
        if current is not None and current.holder == self.identity:
            return replace(
                current, address=self.address, duration_s=self.lease_s, renew_time=now
            )
        return LeaseRecord(
            holder=self.identity,
            address=self.address,
            duration_s=self.lease_s,
            renew_time=now,
            acquire_time=now,
            transitions=0 if current is None else current.transitions + 1,
            resource_version="" if current is None else current.resource_version,
        )
