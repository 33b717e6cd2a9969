"""The engine's results as the API's response models (schemas.py), with the URLs a client
follows to an image's bytes."""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic_core import to_json

from imgsearch.api.kept import Kept, Parts
from imgsearch.api.schemas import (
    ClassScore,
    ClassWeight,
    Duplicates,
    Explore,
    ImageDetail,
    LearnedSummary,
    LearnedTerm,
    Reading,
    Result,
    Stack,
    Voter,
)
from imgsearch.api.schemas import Interpretation as InterpretationModel
from imgsearch.api.schemas import LearnedImage as LearnedImageModel
from imgsearch.api.schemas import Topic as TopicModel
from imgsearch.results import Hit, ImageRecord, Interpretation, Learned, TermReport, Topic
from imgsearch.service import TILE_SIDE, ImageSearch

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


class ImageUrls:
    """The URLs of images' bytes and thumbnails in one response: where they start (see
    `url_base`) is worked out once per response, not per image."""

    def __init__(self, request: Request) -> None:
        base = url_base(request)
        self._base = base
        self._images = f"{base}/api/images/"
        self._service: ImageSearch = request.app.state.service

    def of(self, image_id: str) -> tuple[str, str]:
        """An image's URL and its thumbnail's: where a CDN serves thumbnails
        (`ImageSearch.cdn_thumbnail_url`) the thumbnail's is there, else through the API."""
        image = f"{self._images}{image_id}"
        static = self._service.cdn_thumbnail_url(image_id)
        if static is None:
            return f"{image}/file", f"{image}/thumbnail"
        return f"{image}/file", f"{self._base}{static}" if static.startswith("/") else static

    def tile(self, image_id: str) -> str:
        """An image's tile thumbnail's URL: beside its thumbnail (see `of`)."""
        static = self._service.cdn_tile_url(image_id)
        if static is None:
            return f"{self._images}{image_id}/thumbnail?size={TILE_SIDE}"
        return f"{self._base}{static}" if static.startswith("/") else static


def results_json(
    request: Request, service: ImageSearch, hits: Iterable[Hit], kept: Kept | None = None
) -> str:
    """The JSON of the hits' results, a list of `Result` (see `result_objects`)."""
    return f"[{','.join(result_objects(request, service, hits, kept))}]"


def result_objects(
    request: Request,
    service: ImageSearch,
    hits: Iterable[Hit],
    kept: Kept | None = None,
    records: Mapping[str, ImageRecord] | None = None,
) -> list[str]:
    """The JSON of each hit's `Result` object, the text pydantic's serialiser makes of one,
    skipping images removed since they were ranked. Made from each image's part of the
    object (its record, unless given in `records` where the service read them already, and
    its URLs; kept in `kept` for the next answer that shows it) and the hit's own fields,
    without pydantic's validation and serialisation of each object, which cost a page of 20
    about 0.3 ms."""
    hits = list(hits)
    base = url_base(request)
    found = kept.results.get_many((base, hit.image_id) for hit in hits) if kept else {}
    missing = [hit.image_id for hit in hits if (base, hit.image_id) not in found]
    if missing:
        made = _result_parts(request, service, missing, records)
        fresh: dict[Hashable, Parts] = {(base, i): parts for i, parts in made.items()}
        if kept:
            kept.results.put_many(fresh)
        found.update(fresh)
    objects = []
    for hit in hits:
        parts = found[base, hit.image_id]
        if not parts:  # no record: removed since it was ranked
            continue
        head, tail = parts
        objects.append(
            f"{head}{_float_json(float(round(hit.score, 6)))},"
            f'"learned":{"true" if hit.learned else "false"},"reason":{_word_json(hit.reason)}'
            f"{tail}{_word_json(hit.tier)}}}"
        )
    return objects


def _result_parts(
    request: Request,
    service: ImageSearch,
    image_ids: list[str],
    records: Mapping[str, ImageRecord] | None = None,
) -> dict[str, Parts]:
    """For each image, the JSON of its result object before the score and from its width to
    the tier (what its record and URLs say: the same whatever ranked it), or () if it has no
    record; the records (unless given) in one batched read."""
    if records is None:
        records = service.images(image_ids)
    urls = ImageUrls(request)
    names = service.class_names
    parts: dict[str, Parts] = {}
    for image_id in image_ids:
        record = records.get(image_id)
        if record is None:
            parts[image_id] = ()
            continue
        url, thumbnail = urls.of(image_id)
        label = names[record.classes[0][0]] if record.classes else None
        parts[image_id] = (
            f'{{"id":{_json(image_id)},"key":{_json(record.key)},"url":{_json(url)},'
            f'"thumbnail":{_json(thumbnail)},"tile":{_json(urls.tile(image_id))},"score":',
            f',"width":{_json(record.width)},"height":{_json(record.height)},'
            f'"label":{_json(label)},"tier":',
        )
    return parts


def _json(value: object) -> str:
    """`value` as pydantic's serialiser writes it in a response (NaN as null)."""
    return to_json(value, inf_nan_mode="null").decode()


def _float_json(value: float) -> str:
    """`_json(value)` for a float, without a call into pydantic-core where Python's repr is
    the same text: a finite float written without an exponent (tests compare them)."""
    text = repr(value)
    return _json(value) if "e" in text or "n" in text else text


# The JSON of the few words a result's reason and tier take (and null), made once each.
_WORDS: dict[str | None, str] = {}


def _word_json(value: str | None) -> str:
    text = _WORDS.get(value)
    if text is None:
        text = _json(value)
        if len(_WORDS) < 64:  # a handful in practice (schemas.py's literals)
            _WORDS[value] = text  # (a race writes the same text twice)
    return text


def results_body(results: str, model: BaseModel | None = None) -> bytes:
    """The JSON of `{"results": results, ...}`: `results` (from `results_json`), then the
    fields of `model` (a response model whose `results` field, its first, is left empty):
    the bytes pydantic's serialiser makes of the whole model."""
    rest = model.model_dump_json(by_alias=True, exclude={"results"}) if model else "{}"
    more = "" if rest == "{}" else f",{rest[1:-1]}"
    return f'{{"results":{results}{more}}}'.encode()


def json_bytes(body: bytes) -> Response:
    """A JSON response of `body`, made in the route's own thread: the route's
    `response_model` documents it (OpenAPI), and returned as a model it would be validated
    again and serialised in a second trip through the thread pool, which cost a fast answer
    (a keyword search, "more like this") a third of its time."""
    return Response(body, media_type="application/json")


def explore_body(
    request: Request, service: ImageSearch, found: Sequence[tuple[Topic, ImageRecord]]
) -> bytes:
    """The JSON of an `Explore` of `ImageSearch.explore`'s topics and their covers' records
    (the bytes pydantic's serialiser makes of it), each cover's made as `result_objects`
    makes a result's."""
    hits = [Hit(topic.cover, 1.0, "listed") for topic, _ in found]
    covers = result_objects(request, service, hits, records={r.id: r for _, r in found})
    topics = [
        _model_json(
            TopicModel(kind=t.kind, label=t.label, query=t.query, count=t.count, cover=_BLANK),
            cover=cover,
        )
        for (t, _), cover in zip(found, covers, strict=True)
    ]
    return _model_json(Explore(topics=[]), topics=f"[{','.join(topics)}]").encode()


def duplicates_body(
    request: Request, service: ImageSearch, stacks: Iterable[Sequence[ImageRecord]], total: int
) -> bytes:
    """The JSON of a `Duplicates` page of `ImageSearch.duplicates`' stacks (the bytes
    pydantic's serialiser makes of it), each copy's made as `result_objects` makes a
    result's."""
    shown = []
    for stack in stacks:
        hits = (Hit(record.id, 1.0, "similar") for record in stack)
        found = result_objects(request, service, hits, records={r.id: r for r in stack})
        shown.append(
            _model_json(Stack(count=len(found), results=[]), results=f"[{','.join(found)}]")
        )
    return _model_json(Duplicates(stacks=[], total=total), stacks=f"[{','.join(shown)}]").encode()


# A result a model is made with where its JSON is written in its place (see `_model_json`).
_BLANK = Result(id="", key="", url="", thumbnail="", score=0.0, width=0, height=0)


def _model_json(model: BaseModel, **written: str) -> str:
    """The JSON pydantic's serialiser makes of `model`, but with the fields named in
    `written` as given there (JSON made already), each in its field's place; the model's own
    values of those fields are placeholders, never read."""
    values = model.model_dump(mode="json", by_alias=True, exclude=set(written))
    fields = []
    for name, field in type(model).model_fields.items():
        key = field.alias or name
        fields.append(f"{_json(key)}:{written[name] if name in written else _json(values[key])}")
    return f"{{{','.join(fields)}}}"


def image_detail(request: Request, service: ImageSearch, record: ImageRecord) -> ImageDetail:
    url, thumbnail = ImageUrls(request).of(record.id)
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
    photos: Mapping[int, int] | None = None,
) -> InterpretationModel:
    """How the words were understood (class `names` by id; `top` classes per list), and what
    votes taught about them (None: nothing). `photos`: how many photos each class stands for,
    given in the combined classes."""

    def labelled(
        classes: Iterable[tuple[int, float]], photos: Mapping[int, int] | None = None
    ) -> list[ClassWeight]:
        return [
            ClassWeight(
                id=c,
                label=names[c],
                weight=round(w, 4),
                photos=None if photos is None else photos.get(c),
            )
            for c, w in list(classes)[:top]
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
        classes=labelled(understood.combined_classes(), photos),
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
