"""Asyncio client for the subset of containerd's gRPC API that peerpull reads.

Errors from grpc are translated here, once, keeping the cause:

    ContainerdError             any failed call
    ├── ContainerdUnavailable   socket missing, refused, or no answer in time
    └── ContainerdNotFound      the image or blob is not in the store

Lookups of one image or one blob answer None instead of raising NotFound.
Every call runs in the client's namespace (gRPC metadata `containerd-namespace`).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError

from daemon.state.proto import (
    content_events_pb2,
    content_pb2,
    content_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    image_events_pb2,
    images_pb2,
    images_pb2_grpc,
    introspection_pb2,
    introspection_pb2_grpc,
    version_pb2_grpc,
)

log = logging.getLogger(__name__)

# containerd's Read sends up to 1 MiB of data per message, List batches infos.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    ("grpc.default_authority", "localhost"),
    ("grpc.enable_http_proxy", 0),
)
_CONTENT_PLUGIN_FILTER = "type==io.containerd.content.v1,id==content"


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: media type, digest and size in bytes."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Image:
    """A named image and the descriptor of its root (an index or a manifest)."""

    name: str
    target: Descriptor


@dataclass(frozen=True)
class ContentInfo:
    """A committed blob in the content store."""

    digest: str
    size: int
    labels: Mapping[str, str]


@dataclass(frozen=True)
class ImageCreated:
    """An image name was created (after all its blobs were committed)."""

    name: str


@dataclass(frozen=True)
class ImageUpdated:
    """An existing image name was pointed at a new target or relabelled."""

    name: str


@dataclass(frozen=True)
class ImageDeleted:
    """An image name was removed; its blobs may linger until GC."""

    name: str


@dataclass(frozen=True)
class BlobDeleted:
    """A blob was deleted explicitly (GC deletions publish no event)."""

    digest: str


@dataclass(frozen=True)
class BlobCommitted:
    """A blob was committed; published by containerd 2.1 and later only."""

    digest: str


ContainerdEvent: TypeAlias = (
    ImageCreated | ImageUpdated | ImageDeleted | BlobDeleted | BlobCommitted
)


class ContainerdError(Exception):
    """A call to containerd failed."""


class ContainerdUnavailable(ContainerdError):
    """containerd's socket is missing, refuses connections or does not answer."""


class ContainerdNotFound(ContainerdError):
    """The requested image or blob does not exist in the namespace."""


def _decode_event(topic: str, payload: bytes) -> ContainerdEvent | None:
    """Turn one envelope payload into an event, or None for a topic we ignore."""
    decoder = _DECODERS.get(topic)
    if decoder is None:
        return None

    try:
        return decoder(payload)
    except DecodeError as exc:
        raise ContainerdError(f"cannot decode containerd event {topic}") from exc


_DECODERS: dict[str, Callable[[bytes], ContainerdEvent]] = {
    "/images/create": lambda b: ImageCreated(
        image_events_pb2.ImageCreate.FromString(b).name
    ),
    "/images/update": lambda b: ImageUpdated(
        image_events_pb2.ImageUpdate.FromString(b).name
    ),
    "/images/delete": lambda b: ImageDeleted(
        image_events_pb2.ImageDelete.FromString(b).name
    ),
    "/content/delete": lambda b: BlobDeleted(
        content_events_pb2.ContentDelete.FromString(b).digest
    ),
    # TODO(containerd>=2.1): the only per-blob signal from events; older
    # versions need the eBPF or inotify watcher.
    "/content/create": lambda b: BlobCommitted(
        content_events_pb2.ContentCreate.FromString(b).digest
    ),
}


def _image(msg: images_pb2.Image) -> Image:
    """Convert a wire image into ours."""
    target = msg.target
    descriptor = Descriptor(target.media_type, target.digest, target.size)
    return Image(name=msg.name, target=descriptor)


def _info(msg: content_pb2.Info) -> ContentInfo:
    """Convert a wire content info into ours."""
    return ContentInfo(digest=msg.digest, size=msg.size, labels=dict(msg.labels))


@dataclass(frozen=True)
class _Stubs:
    """The generated service stubs over one channel (untyped, hence Any)."""

    images: Any
    content: Any
    events: Any
    version: Any
    introspection: Any

    @classmethod
    def over(cls, channel: Any) -> _Stubs:
        """Build every stub over `channel`."""
        return cls(
            images=_build(images_pb2_grpc.ImagesStub, channel),
            content=_build(content_pb2_grpc.ContentStub, channel),
            events=_build(events_pb2_grpc.EventsStub, channel),
            version=_build(version_pb2_grpc.VersionStub, channel),
            introspection=_build(introspection_pb2_grpc.IntrospectionStub, channel),
        )


def _build(factory: Callable[[Any], Any], channel: Any) -> Any:
    """Call a generated (untyped) stub constructor."""
    return factory(channel)


class ContainerdClient:
    """A connection to one containerd socket, scoped to one namespace.

    `connect()` opens the channel and must succeed before any other call;
    `close()` releases it. Unary calls and listings are bounded by
    `call_timeout_s`; `read_content` and `subscribe` run until the caller
    stops iterating (which cancels the stream) or containerd ends them.
    """

    def __init__(
        self, socket_path: str, namespace: str, *, call_timeout_s: float = 10.0
    ) -> None:
        self._socket = os.path.abspath(socket_path)
        self._namespace = namespace
        self._timeout_s = call_timeout_s
        self._metadata = (("containerd-namespace", namespace),)
        self._channel: Any = None
        self._stubs: _Stubs | None = None

    @property
    def socket_path(self) -> str:
        """The absolute path of containerd's gRPC socket."""
        return self._socket

    @property
    def namespace(self) -> str:
        """The containerd namespace every call runs in."""
        return self._namespace

    async def connect(self, timeout_s: float = 5.0) -> str:
        """Open the channel, check containerd answers, and return its version."""
        self._check_socket()
        await self.close()
        self._channel = grpc.aio.insecure_channel(
            f"unix:{self._socket}", options=_CHANNEL_OPTIONS
        )
        self._stubs = _Stubs.over(self._channel)

        try:
            return await self._version(timeout_s)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the channel; safe to call more than once."""
        channel, self._channel, self._stubs = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def version(self) -> str:
        """Return containerd's version string, e.g. `1.6.20~ds1`."""
        return await self._version(self._timeout_s)

    async def get_image(self, name: str) -> Image | None:
        """Return the image with this name, or None if there is none."""
        stub = self._open().images
        request = images_pb2.GetImageRequest(name=name)
        try:
            response = await self._unary(stub.Get, request, f"image {name}")
        except ContainerdNotFound:
            return None
        return _image(response.image)

    async def list_images(self, filters: Sequence[str] = ()) -> list[Image]:
        """List images matching any of the containerd filters (all if none)."""
        stub = self._open().images
        request = images_pb2.ListImagesRequest(filters=list(filters))
        response = await self._unary(stub.List, request, "images")
        return [_image(image) for image in response.images]

    async def content_info(self, digest: str) -> ContentInfo | None:
        """Return what the store knows of a committed blob, or None."""
        stub = self._open().content
        request = content_pb2.InfoRequest(digest=digest)
        try:
            response = await self._unary(stub.Info, request, f"blob {digest}")
        except ContainerdNotFound:
            return None
        return _info(response.info)

    async def list_content(self, filters: Sequence[str] = ()) -> list[ContentInfo]:
        """List committed blobs matching any of the filters (all if none)."""
        stub = self._open().content
        request = content_pb2.ListContentRequest(filters=list(filters))
        call = stub.List(request, metadata=self._metadata, timeout=self._timeout_s)

        infos: list[ContentInfo] = []
        try:
            async for response in call:
                infos.extend(_info(info) for info in response.info)
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, "content") from exc
        finally:
            call.cancel()
        return infos

    async def read_content(
        self, digest: str, offset: int = 0, size: int = 0
    ) -> AsyncIterator[bytes]:
        """Stream a blob's bytes from `offset`; `size` 0 reads to the end.

        Raises ContainerdNotFound (on first iteration) if the blob is absent.
        """
        stub = self._open().content
        request = content_pb2.ReadContentRequest(
            digest=digest, offset=offset, size=size
        )
        call = stub.Read(request, metadata=self._metadata)

        try:
            async for response in call:
                data: bytes = response.data
                if data:
                    yield data
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, f"blob {digest}") from exc
        finally:
            call.cancel()

    async def subscribe(
        self, filters: Sequence[str] = ()
    ) -> AsyncIterator[ContainerdEvent]:
        """Stream image and blob events of this namespace; other topics are skipped.

        `filters` are containerd event filters (e.g. `topic~="/images/"`).
        Events published before the stream is established are not seen.
        """
        stub = self._open().events
        request = events_pb2.SubscribeRequest(filters=list(filters))
        call = stub.Subscribe(request, metadata=self._metadata)

        try:
            async for envelope in call:
                event = self._event(envelope)
                if event is not None:
                    yield event
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, "events") from exc
        finally:
            call.cancel()

    async def content_root(self) -> str | None:
        """Return the content plugin's root directory, or None if not exported.

        The path is as containerd sees it; a daemon in a container must have
        it mounted at the same place to read blobs from it.
        """
        stub = self._open().introspection
        request = introspection_pb2.PluginsRequest(filters=[_CONTENT_PLUGIN_FILTER])
        response = await self._unary(stub.Plugins, request, "content plugin")

        for plugin in response.plugins:
            root: str = plugin.exports.get("root", "")
            if root:
                return root
        return None

    def _check_socket(self) -> None:
        """Fail fast and clearly when the socket path is not a socket."""
        try:
            mode = os.stat(self._socket).st_mode
        except FileNotFoundError as exc:
            message = f"containerd socket {self._socket} does not exist"
            raise ContainerdUnavailable(message) from exc
        except OSError as exc:
            message = f"cannot stat containerd socket {self._socket}: {exc.strerror}"
            raise ContainerdUnavailable(message) from exc

        if not stat.S_ISSOCK(mode):
            message = f"containerd socket {self._socket} is not a unix socket"
            raise ContainerdUnavailable(message)

    def _open(self) -> _Stubs:
        """Return the stubs of the open channel; connect() comes first."""
        if self._stubs is None:
            message = f"client for {self._socket} is not connected; call connect()"
            raise ContainerdError(message)
        return self._stubs

    async def _version(self, timeout_s: float) -> str:
        """Call Version with a deadline."""
        stub = self._open().version
        method = stub.Version
        try:
            response = await method(
                empty_pb2.Empty(), metadata=self._metadata, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, "version", timeout_s) from exc
        version: str = response.version
        return version

    async def _unary(self, method: Any, request: Any, what: str) -> Any:
        """Run one unary call with the default deadline, translating errors."""
        try:
            return await method(
                request, metadata=self._metadata, timeout=self._timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise self._translate(exc, what) from exc

    def _translate(
        self, exc: grpc.aio.AioRpcError, what: str, timeout_s: float | None = None
    ) -> ContainerdError:
        """Map a grpc error to our tree; the caller chains the cause."""
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return ContainerdNotFound(
                f"{what} not found in namespace {self._namespace}"
            )

        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            limit = self._timeout_s if timeout_s is None else timeout_s
            message = f"containerd on {self._socket} did not answer within {limit}s"
            return ContainerdUnavailable(message)

        if code == grpc.StatusCode.UNAVAILABLE:
            message = f"containerd on {self._socket} is not answering"
            return ContainerdUnavailable(f"{message}: {_last_reason(exc.details())}")

        details = _one_line(exc.details())
        return ContainerdError(f"containerd {what}: {code.name}: {details}")

    def _event(self, envelope: events_pb2.Envelope) -> ContainerdEvent | None:
        """Decode an envelope of our namespace, or None to skip it."""
        if envelope.namespace != self._namespace:
            return None

        event = _decode_event(envelope.topic, envelope.event.value)
        if event is None:
            log.debug("event skipped", extra={"topic": envelope.topic})
        return event


def _one_line(text: str | None) -> str:
    """Collapse grpc's multi-line details into one line."""
    return " ".join((text or "").split())


def _last_reason(text: str | None) -> str:
    """The innermost reason of grpc's nested `a: b: reason` details."""
    return _one_line(text).rsplit(": ", 1)[-1] or "no details"
