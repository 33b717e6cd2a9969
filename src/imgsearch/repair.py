"""Checking what is stored, and repairing it from what it was derived from.

    index (manifest, shard builds)  <- embeddings and catalog records   (rebuilt: reindex)
    embeddings, thumbnails          <- the original images               (computed again)
    catalog (SQLite, locally)       <- the original images               (ingested again)
    votes (SQLite, locally)         <- nothing                           (moved aside,
                                                                           begun afresh)

`imgsearch serve` makes the quick checks before it serves (`check_at_start`) and refuses to
start on a problem, in one line naming the file and `imgsearch check --repair`; `imgsearch
check` makes every check (`check`), and with `--repair` fixes what it found (`fix_files`, then
the facade rebuilds the index, or the whole catalog: ImageSearch.repair).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from imgsearch.catalog import (
    EMBEDDINGS_PREFIX,
    IMAGES_PREFIX,
    THUMBNAILS_PREFIX,
    image_id_of_embedding,
    thumbnail_name,
    tile_name,
)
from imgsearch.config import Settings
from imgsearch.images import tile_from_thumbnail
from imgsearch.index.manifest import MANIFEST_KEY, IndexFormatError, Manifest, read_manifest
from imgsearch.index.shards import Shard
from imgsearch.integrity import DamagedFile
from imgsearch.parts import Parts
from imgsearch.storage import CATALOG_FILE, FEEDBACK_FILE, NotFound, SqliteTable

log = logging.getLogger(__name__)

Fix = Literal[
    "rebuild_catalog", "reset_feedback", "reindex", "reembed", "requeue", "delete", "tile", ""
]


@dataclass(frozen=True)
class Finding:
    name: str  # the file, object or image
    problem: str
    fix: Fix  # what `repair` does about it ("": nothing it can)

    def __str__(self) -> str:
        return f"{self.name}: {self.problem}"


def check_at_start(parts: Parts) -> None:
    """What a start checks before it serves: the SQLite files (catalog, votes), the manifest
    and every shard build (verified as the index loads), and that the manifest is not older
    than the last one published. Raises DamagedFile (or IndexFormatError) for the first problem."""
    for table in _sqlite_tables(parts):
        if problem := table.integrity_problem():
            raise DamagedFile(str(table.path), problem)
    parts.preload(("index",))  # loading it verifies the manifest and each build
    parts.client_ids  # noqa: B018 - an unusable client secret file stops the start too
    if problem := _regression(parts):
        raise DamagedFile(MANIFEST_KEY, problem)


def check(parts: Parts) -> list[Finding]:
    """Every check: the catalog file (thoroughly), the manifest, each shard build, each
    embedding, and that every image the catalog says is indexed is in the index."""
    findings = [
        Finding(str(table.path), problem, damaged_file_fix(table.path))
        for table in _sqlite_tables(parts)
        if (problem := table.integrity_problem(thorough=True))
    ]
    if findings:
        return findings  # nothing else can be trusted while the catalog is damaged
    index_findings = _index_findings(parts)
    findings += index_findings
    findings += _embedding_findings(parts, index_usable=not index_findings)
    findings += _tile_findings(parts)
    return findings


def _tile_findings(parts: Parts) -> list[Finding]:
    """Images with a thumbnail but no tile (stored before tiles were made at ingest): one
    listing of the thumbnails, no read per image."""
    stored = {
        info.key.removeprefix(THUMBNAILS_PREFIX)
        for info in parts.storage.objects.list(THUMBNAILS_PREFIX)
    }
    changing = {change.image_id for change in parts.catalog.changes()}
    missing = [
        image_id
        for image_id in sorted(name.removesuffix(".jpg") for name in stored)
        if thumbnail_name(image_id) in stored
        and tile_name(image_id) not in stored
        and image_id not in changing
    ]
    live = parts.catalog.images(missing)  # (a leftover of a removal is not given one)
    return [
        Finding(f"image {image_id}", "has no tile thumbnail (stored before tiles)", "tile")
        for image_id in missing
        if image_id in live and live[image_id].status != "removed"
    ]


def _index_findings(parts: Parts) -> list[Finding]:
    if parts.settings.vector_engine != "annoy":  # no shard files: S3 Vectors keeps the vectors
        problem = _regression(parts)
        return [Finding("the vector index", problem, "reindex")] if problem else []
    store = parts.storage.objects
    try:
        manifest, _ = read_manifest(store)
    except DamagedFile as error:
        return [Finding(error.name, error.problem, "reindex")]
    except IndexFormatError as error:
        return [Finding(MANIFEST_KEY, str(error), "reindex")]
    findings = []
    for entry in manifest.shards:
        try:
            Shard(entry, store)
        except DamagedFile as error:
            findings.append(Finding(error.name, error.problem, "reindex"))
    if problem := _regression(parts, manifest):
        findings.append(Finding(MANIFEST_KEY, problem, "reindex"))
    return findings


def _embedding_findings(parts: Parts, *, index_usable: bool) -> list[Finding]:
    catalog = parts.catalog
    index = parts.index if index_usable else None
    if index is not None:
        index.refresh(force=True)
    queued = {item.image_id for item in catalog.pending()}
    changing = {change.image_id for change in catalog.changes()}
    findings = []
    for info in list(parts.storage.objects.list(EMBEDDINGS_PREFIX)):
        image_id = image_id_of_embedding(info.key)
        record = catalog.image(image_id)
        if record is None or record.status == "removed":
            if image_id not in changing and image_id not in queued:
                findings.append(Finding(info.key, "belongs to no image", "delete"))
            continue
        try:
            catalog.embedding(image_id)
        except DamagedFile as error:
            findings.append(Finding(error.name, error.problem, "reembed"))
            continue
        if index is None or image_id in index or image_id in queued:
            continue
        if record.status == "indexed" or image_id not in changing:
            findings.append(
                Finding(f"image {image_id}", f"{record.status} but not in the index", "requeue")
            )
    return findings


def _regression(parts: Parts, manifest: Manifest | None = None) -> str | None:
    """Why the manifest is older than the last one published, if it is (lost or restored
    from an old copy: it would serve a collection without the images added since)."""
    published = parts.catalog.published()
    if manifest is None:
        generation = parts.index.generation
        if generation < published.generation:  # perhaps published while loading
            parts.index.refresh(force=True)
            generation = parts.index.generation
    else:
        generation = manifest.generation
    if generation >= published.generation:
        return None
    state = "missing" if not generation else f"generation {generation}"
    return (
        f"{state}, but generation {published.generation} with {published.images} images was "
        "published: images would be missing"
    )


def fix_files(parts: Parts, findings: list[Finding]) -> bool:
    """Fix what `check` found in single files, from what is stored: embeddings of no image
    deleted, damaged ones computed again, lost images queued for the index. Returns whether
    the index must be rebuilt from the embeddings (it was damaged); if not, what was queued
    needs an index build. A damaged catalog is not fixed here (`move_catalog_aside`)."""
    for finding in findings:
        if finding.fix == "delete":
            parts.catalog.delete_derived(_image_id(finding.name))
        elif finding.fix == "reembed":
            image_id = _image_id(finding.name)
            if not parts.ingestor.reembed(image_id):
                log.error("image %s: no original bytes left to embed again", image_id)
        elif finding.fix == "tile":
            image_id = _image_id(finding.name)
            try:
                thumbnail = parts.catalog.thumbnail(image_id)
            except NotFound:  # removed meanwhile
                continue
            parts.catalog.put_tile(image_id, tile_from_thumbnail(thumbnail))
    if any(finding.fix == "reindex" for finding in findings):
        return True
    for finding in findings:
        if finding.fix in ("requeue", "reembed"):
            parts.catalog.mark_pending(_image_id(finding.name), "add")
    return False


def damaged_file_fix(path: str | Path) -> Fix:
    """What mends a damaged SQLite file of the data directory: the catalog's is rebuilt from
    the stored images; the votes' file (storage.FEEDBACK_FILE) cannot be, and is begun
    afresh."""
    return "reset_feedback" if Path(path).name == FEEDBACK_FILE else "rebuild_catalog"


def move_catalog_aside(settings: Settings) -> None:
    """Before a catalog is rebuilt: the damaged file moves aside (locally; collections made
    before votes had a file of their own kept them in it, as it still holds them)."""
    if settings.backend == "local":
        move_aside(settings.data_dir / CATALOG_FILE)


def move_feedback_aside(settings: Settings) -> None:
    """A damaged votes file moves aside (kept for whoever wants to dig votes out of it); the
    next open begins an empty one. Votes are lost: nothing else holds them."""
    if settings.backend == "local":
        move_aside(settings.data_dir / FEEDBACK_FILE)


def ingest_originals(parts: Parts) -> None:
    """Ingest every stored original into the catalog again (rebuilding a catalog); the
    index is rebuilt after."""
    objects = parts.storage.objects
    for info in list(objects.list(IMAGES_PREFIX)):
        key = info.key.removeprefix(IMAGES_PREFIX)
        parts.ingestor.add(key, objects.get(info.key).data, store_original=False)


def close_files(parts: Parts) -> None:
    """Close the calling thread's connections to the SQLite files before one is moved aside:
    SQLite closing one later could delete the `-wal` of a new file under the same name.
    Another thread's connection stays open (closing one in use crashes the process), so a
    repair must run where no other thread of the process uses the tables (review-s6b #4)."""
    for table in _sqlite_tables(parts):
        table.close()


def move_aside(path: Path) -> Path:
    """Rename an SQLite file (with its journal files) to `<name>.damaged-<time>`."""
    target = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    log.warning("moved the damaged %s aside to %s", path, target)
    return target


def _sqlite_tables(parts: Parts) -> list[SqliteTable]:
    tables = {}
    for table in (parts.storage.catalog, parts.storage.feedback):
        if isinstance(table, SqliteTable):
            tables[table.path] = table
    return list(tables.values())


def _image_id(name: str) -> str:
    """The image id in a finding's name (`embeddings/<id>.npz` or `image <id>`)."""
    return image_id_of_embedding(name).removeprefix("image ")
