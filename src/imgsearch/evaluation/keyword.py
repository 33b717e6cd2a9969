"""Measurement 3: keyword search, each label typed as the query (underscores as spaces).

A label *maps onto ImageNet* when every phrase the vocabulary reads in it has the source
"imagenet" (it names a class) or "wordnet" (WordNet's senses of it reach classes through
hyponymy); a label read by guessing ("related": relations, glosses, word vectors) or not at all
("unknown") does not map. That is the vocabulary's own account, as the search response shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgsearch.evaluation import DEPTH, PAGE
from imgsearch.evaluation.collection import LabelledCollection
from imgsearch.evaluation.methods import Sandbox, Variant
from imgsearch.evaluation.metrics import precision_at_k, precision_curve
from imgsearch.evaluation.progress import Track, untracked
from imgsearch.results import Interpretation
from imgsearch.service import ImageSearch

MAPPED_SOURCES = frozenset({"imagenet", "wordnet"})


@dataclass
class KeywordResult:
    label: str
    query: str  # what was typed
    term: str  # the normalised query votes are stored under
    sources: list[str]  # per phrase read
    level: str  # "high" | "low" | "none"
    confidence: float
    maps: bool  # onto ImageNet, see the module docstring
    precision: float  # p@20 of the first page
    relevant_shown: int  # relevant images on the first page
    matches: int = 0  # confident matches the response counts
    matches_shown: int = 0  # of them on the first page (tier "match")
    matches_relevant: int = 0  # of those, relevant
    curve: list[float] = field(default_factory=list)  # p@k for k = 1..DEPTH


def query_for(label: str) -> str:
    return label.replace("_", " ")


def maps_onto_imagenet(interpretation: Interpretation) -> bool:
    readings = interpretation.readings
    return bool(readings) and all(r.source in MAPPED_SOURCES for r in readings)


def keyword_search(
    service: ImageSearch,
    label: str,
    collection: LabelledCollection,
    method: Variant,
) -> KeywordResult:
    """One label's first page (and a deeper one for the curve), with no votes at all."""
    query = query_for(label)
    relevant = collection.relevant(label)
    page = service.search_text(query, limit=PAGE)
    deep = service.search_text(query, limit=DEPTH)
    judged = [hit.image_id in relevant for hit in page.hits]
    interpretation = page.interpretation
    return KeywordResult(
        label=label,
        query=query,
        term=interpretation.query,
        sources=[reading.source for reading in interpretation.readings],
        level=interpretation.level,
        confidence=float(interpretation.confidence),
        maps=maps_onto_imagenet(interpretation),
        precision=precision_at_k(judged, PAGE, len(relevant)),
        relevant_shown=sum(judged),
        matches=page.matches,
        matches_shown=sum(hit.tier == "match" for hit in page.hits),
        matches_relevant=sum(hit.tier == "match" and hit.image_id in relevant for hit in page.hits),
        curve=precision_curve(
            [hit.image_id in relevant for hit in deep.hits], DEPTH, len(relevant)
        ),
    )


def keyword_table(
    sandbox: Sandbox,
    collection: LabelledCollection,
    method: Variant,
    track: Track = untracked,
) -> list[KeywordResult]:
    """Every label's first page under `method`, on a feedback table nobody voted in."""
    service = sandbox.service(method)
    labels = list(collection.by_label)
    return [
        keyword_search(service, label, collection, method)
        for label in track(labels, f"keyword search ({method.name})")
    ]
