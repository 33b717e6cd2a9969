"""The engine's results as the API's response models (schemas.py), with the URLs a client
follows to an image's bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from fastapi import Request

from imgsearch.api.schemas import (
    ClassScore,
    ClassWeight,
    ImageDetail,
    LearnedSummary,
    LearnedTerm,
    Reading,
    Result,
    Voter,
)
from imgsearch.api.schemas import Interpretation as InterpretationModel
from imgsearch.api.schemas import LearnedImage as LearnedImageModel
from imgsearch.results import Hit, ImageRecord, Interpretation, Learned, TermReport
from imgsearch.service import ImageSearch

MAX_VOTERS = 100  # listed in a term's report
INTERPRETATION_CLASSES = 10  # classes listed per reading, and in the combination

_HOST = re.compile(r"^(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?$")


def url_base(request: Request) -> str:
    """What result URLs start with: the configured public URL; else the request's own scheme
    and Host when the Host names a trusted host (a client on this machine gets absolute URLs
    it can follow); else nothing (paths from the root, with the server's root path). Never an
    arbitrary Host header, which any client may set: a poisoned cache, or a page pointing
    elsewhere, would follow it."""
    settings = request.app.state.service.settings
    if settings.public_url:
        return str(settings.public_url).rstrip("/")
    root = str(request.scope.get("root_path", ""))
    host = _HOST.match(request.headers.get("host", ""))
    if host and host["name"].strip("[]") in settings.trusted_hosts:
        return f"{request.url.scheme}://{host[0]}{root}"
    return root


def image_urls(request: Request, image_id: str) -> tuple[str, str]:
    """The URLs of an image's bytes and thumbnail (see `url_base`); the thumbnail's where a
    CDN serves it (`ImageSearch.thumbnail_url`), else through the API."""
    base = url_base(request)
    image = f"{base}/api/images/{image_id}"
    service: ImageSearch = request.app.state.service
    static = service.thumbnail_url(image_id)
    if static is None:
        return f"{image}/file", f"{image}/thumbnail"
    return f"{image}/file", f"{base}{static}" if static.startswith("/") else static


def results(request: Request, service: ImageSearch, hits: Iterable[Hit]) -> list[Result]:
    """Result objects for hits, skipping images removed since they were ranked."""
    names = service.class_names
    hits = list(hits)
    records = service.images(hit.image_id for hit in hits)  # batched reads
    out = []
    for hit in hits:
        record = records.get(hit.image_id)
        if record is None:
            continue
        url, thumbnail = image_urls(request, hit.image_id)
        out.append(
            Result(
                id=hit.image_id,
                key=record.key,
                url=url,
                thumbnail=thumbnail,
                score=round(hit.score, 6),
                learned=hit.learned,
                reason=hit.reason,
                width=record.width,
                height=record.height,
                label=names[record.classes[0][0]] if record.classes else None,
            )
        )
    return out


def listed(request: Request, service: ImageSearch, records: Iterable[ImageRecord]) -> list[Result]:
    """Result objects for images listed, not ranked (browsing, a key's image)."""
    return results(request, service, (Hit(r.id, 1.0, "listed") for r in records))


def image_detail(request: Request, service: ImageSearch, record: ImageRecord) -> ImageDetail:
    url, thumbnail = image_urls(request, record.id)
    names = service.class_names
    return ImageDetail(
        id=record.id,
        key=record.key,
        keys=list(record.keys),
        url=url,
        thumbnail=thumbnail,
        width=record.width,
        height=record.height,
        classes=[ClassScore(label=names[c], score=p) for c, p in record.classes],
    )


def interpretation(
    names: Sequence[str],
    understood: Interpretation,
    learned: Learned | None,
    *,
    top: int = INTERPRETATION_CLASSES,
) -> InterpretationModel:
    """How the words were understood (class `names` by id; `top` classes per list), and what
    votes taught about them (None: nothing)."""

    def labelled(classes: Iterable[tuple[int, float]]) -> list[ClassWeight]:
        return [
            ClassWeight(id=c, label=names[c], weight=round(w, 4)) for c, w in list(classes)[:top]
        ]

    return InterpretationModel(
        query=understood.query,
        confidence=round(understood.confidence, 3),
        level=understood.level,
        terms=[
            Reading(
                phrase=r.phrase,
                source=r.source,
                confidence=round(r.confidence, 3),
                note=r.note,
                classes=labelled(r.classes),
            )
            for r in understood.readings
        ],
        classes=labelled(understood.combined_classes()),
        learned=None
        if learned is None
        else LearnedSummary(
            votes=learned.votes,
            sessions=learned.sessions,
            clients=learned.clients,
            strength=round(learned.strength, 3),
            method=learned.method,
        ),
    )


def learned_term(report: TermReport) -> LearnedTerm:
    summary = report.summary
    return LearnedTerm(
        term=summary.term,
        votes=summary.votes,
        sessions=summary.sessions,
        clients=summary.clients,
        images=[
            LearnedImageModel(
                id=image.agreement.image_id,
                key=image.key,
                up_clients=image.agreement.up_clients,
                down_clients=image.agreement.down_clients,
                up=round(image.agreement.up, 4),
                down=round(image.agreement.down, 4),
                weight=round(image.weight, 4),
            )
            for image in report.images
        ],
        voters=[
            Voter(client=client, up=up, down=down)
            for client, up, down in report.voters[:MAX_VOTERS]
        ],
    )
