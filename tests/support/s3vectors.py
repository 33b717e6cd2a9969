"""S3 Vectors on moto, with the one operation moto 5.2.5 lacks, `QueryVectors`, and the
paging of `ListVectors` that it ignores.

moto emulates vector buckets, indexes and PutVectors/GetVectors/ListVectors/DeleteVectors, but
not QueryVectors. `install_query_vectors()` adds it to moto's S3 Vectors backend (its response
class and URL table), in this process, before or inside `mock_aws()`: an exact search (every
stored vector compared, cosine distance 1 - cos, or Euclidean by the index's metric), top-k
(at most 100, as the service refuses more), with metadata filters (`$eq`, `$ne`, `$gt`,
`$gte`, `$lt`, `$lte`, `$in`, `$nin`, `$exists`, `$and`, `$or`, as the service documents).
So the adapter runs end to end through boto3 and botocore's real request and response shapes.
moto's ListVectors returns every vector in one response, whatever `maxResults`: the one
installed here pages as the service does (`maxResults`, 500 unless given, at most 1,000, and
`nextToken`, and its segments, `segmentCount` and `segmentIndex`; not the service's early
end of a page at about 1 MB), so a listing's requests are counted as on AWS.
Being exact, it measures the adapter, not S3 Vectors' approximate search: recall@20 against
exact search is 1.0 here by construction (docs/deploy.md, "Vector engines"). A benchmark may
keep vectors outside moto (EXTRA below: bench/cloud_synthetic.py at 100k and 1M images);
QueryVectors and GetVectors then answer from both.

`create_vector_indexes` makes the vector bucket and both indexes from infra/template.yaml's
own definitions (with the dimensions of the test's vectors where they differ from the model).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from imgsearch.index.s3vectors import classes_index_name
from imgsearch.storage.aws_resources import resource_properties

TOP_K_LIMIT = 100


def _matches(metadata: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
    for name, test in condition.items():
        if name == "$and":
            if not all(_matches(metadata, inner) for inner in test):
                return False
        elif name == "$or":
            if not any(_matches(metadata, inner) for inner in test):
                return False
        elif not _holds(metadata, name, test):
            return False
    return True


def _holds(metadata: Mapping[str, Any], name: str, test: Any) -> bool:
    if not isinstance(test, Mapping):
        test = {"$eq": test}
    value = metadata.get(name)
    checks = {
        "$eq": lambda v: value == v,
        "$ne": lambda v: value != v,
        "$gt": lambda v: value is not None and value > v,
        "$gte": lambda v: value is not None and value >= v,
        "$lt": lambda v: value is not None and value < v,
        "$lte": lambda v: value is not None and value <= v,
        "$in": lambda v: value in v,
        "$nin": lambda v: value not in v,
        "$exists": lambda v: (name in metadata) == bool(v),
    }
    return all(checks[operator](operand) for operator, operand in test.items())


def _query_vectors(self: Any) -> Any:
    """S3VectorsResponse.query_vectors: exact top-k over the index's stored vectors."""
    from moto.core.responses import ActionResult
    from moto.s3vectors.exceptions import ValidationError

    index = self.s3vectors_backend.get_index(
        self._get_param("vectorBucketName"),
        index_name=self._get_param("indexName"),
        index_arn=self._get_param("indexArn"),
    )
    top_k = int(self._get_param("topK"))
    if not 1 <= top_k <= TOP_K_LIMIT:
        raise ValidationError(f"topK must be between 1 and {TOP_K_LIMIT}")
    query = np.asarray(self._get_param("queryVector")["float32"], dtype=np.float32)
    if len(query) != index.dimension:
        raise ValidationError(f"queryVector must have {index.dimension} dimensions")
    condition = self._get_param("filter") or {}
    stored, matrix = _stored(index)
    rows = [r for r, v in enumerate(stored) if _matches(v.metadata or {}, condition)]
    vectors = [stored[r] for r in rows]
    hits: list[tuple[float, str, Any]] = []  # (distance, key, metadata)
    if vectors:
        data = matrix[rows]
        if index.distance_metric == "euclidean":
            distances = np.linalg.norm(data - query, axis=1)
        else:
            norms = np.linalg.norm(data, axis=1) * np.linalg.norm(query)
            distances = 1.0 - (data @ query) / np.maximum(norms, 1e-12)
        hits = [(float(d), v.key, v.metadata) for d, v in zip(distances, vectors, strict=True)]
    outside = getattr(index, EXTRA, None)
    if outside is not None:
        hits += outside.query(query, top_k, lambda metadata: _matches(metadata, condition))
    result: dict[str, Any] = {"vectors": [], "distanceMetric": index.distance_metric}
    for distance, key, metadata in sorted(hits, key=lambda hit: hit[:2])[:top_k]:
        hit: dict[str, Any] = {"key": key}
        if self._get_bool_param("returnDistance", False):
            hit["distance"] = distance
        if self._get_bool_param("returnMetadata", False):
            hit["metadata"] = metadata
        result["vectors"].append(hit)
    return ActionResult(result)


LIST_LIMIT = 1000  # ListVectors' maxResults at most
LIST_DEFAULT = 500  # ... when none is given
LIST_SEGMENTS = 16  # its segmentCount at most


def _list_vectors(self: Any) -> Any:
    """S3VectorsResponse.list_vectors, a page of `maxResults` after `nextToken` (an offset
    into moto's vectors in insertion order, enough for a test's listing without writes), of
    segment `segmentIndex` of `segmentCount` if given (the keys' CRC-32 modulo the count)."""
    from moto.core.responses import ActionResult
    from moto.s3vectors.exceptions import ValidationError

    index = self.s3vectors_backend.get_index(
        self._get_param("vectorBucketName"),
        index_name=self._get_param("indexName"),
        index_arn=self._get_param("indexArn"),
    )
    limit = int(self._get_param("maxResults") or LIST_DEFAULT)
    if not 1 <= limit <= LIST_LIMIT:
        raise ValidationError(f"maxResults must be between 1 and {LIST_LIMIT}")
    segments, segment = self._get_param("segmentCount"), self._get_param("segmentIndex")
    if (segments is None) != (segment is None) or (
        segments is not None and not 0 <= int(segment) < int(segments) <= LIST_SEGMENTS
    ):
        raise ValidationError("segmentCount and segmentIndex go together, index < count <= 16")
    vectors = [
        v
        for v in index.vectors.values()
        if segments is None or zlib.crc32(v.key.encode()) % int(segments) == int(segment)
    ]
    start = int(self._get_param("nextToken") or 0)
    page = vectors[start : start + limit]
    result: dict[str, Any] = {
        "vectors": [
            {
                "key": v.key,
                **({"data": v.data} if self._get_bool_param("returnData") else {}),
                **({"metadata": v.metadata} if self._get_bool_param("returnMetadata") else {}),
            }
            for v in page
        ]
    }
    if start + limit < len(vectors):
        result["nextToken"] = str(start + limit)
    return ActionResult(result)


# A benchmark's vectors kept outside moto (bench/cloud_scale.py's synthesised collection: moto
# keeps a vector as a list of Python floats, 41 KB for 1280 dimensions): an object set on
# moto's Index under this name, with `query(vector, top_k, matches) -> [(distance, key,
# metadata)]` (exact, the `top_k` nearest whose metadata `matches`) and `get(keys) -> [Vector]`
# (those it holds). QueryVectors and GetVectors answer from both as from one index.
EXTRA = "_imgsearch_outside"


def _getting_outside(get: Any) -> Any:
    def got(self: Any, **request: Any) -> Any:
        found = get(self, **request)
        index = self.get_index(
            request["vector_bucket_name"], request["index_name"], request["index_arn"]
        )
        outside = getattr(index, EXTRA, None)
        if outside is None:
            return found
        missing = [key for key in request["keys"] if key not in index.vectors]
        return found + outside.get(missing)

    got.gets_outside = True
    return got


def _stored(index: Any) -> tuple[list[Any], np.ndarray]:
    """The index's vectors and their matrix, kept until a write changes them."""
    cached = getattr(index, "_imgsearch_matrix", None)
    if cached is None:
        stored = list(index.vectors.values())
        matrix = np.asarray([v.data["float32"] for v in stored], dtype=np.float32)
        cached = index._imgsearch_matrix = (stored, matrix.reshape(len(stored), index.dimension))
    return cached


def _forgetting_matrix(write: Any) -> Any:
    def written(self: Any, **request: Any) -> Any:
        index = self.get_index(
            request["vector_bucket_name"], request["index_name"], request["index_arn"]
        )
        index._imgsearch_matrix = None
        return write(self, **request)

    written.forgets_matrix = True
    return written


def install_query_vectors() -> None:
    """Give moto's S3 Vectors emulation QueryVectors and ListVectors' pages (idempotent)."""
    from moto.s3vectors import urls
    from moto.s3vectors.models import S3VectorsBackend
    from moto.s3vectors.responses import S3VectorsResponse

    S3VectorsResponse.query_vectors = _query_vectors  # type: ignore[attr-defined]
    S3VectorsResponse.list_vectors = _list_vectors  # type: ignore[method-assign]
    urls.url_paths.setdefault("{0}/QueryVectors$", S3VectorsResponse.dispatch)
    for name in ("put_vectors", "delete_vectors"):
        write = getattr(S3VectorsBackend, name)
        if not getattr(write, "forgets_matrix", False):
            setattr(S3VectorsBackend, name, _forgetting_matrix(write))
    if not getattr(S3VectorsBackend.get_vectors, "gets_outside", False):
        S3VectorsBackend.get_vectors = _getting_outside(S3VectorsBackend.get_vectors)


def create_vector_indexes(
    client: Any, bucket: str, index: str, *, dim: int | None = None, classes: int | None = None
) -> None:
    """The template's vector bucket and its two indexes (feature and class vectors), named
    `bucket`, `index` and `index`-classes; `dim` and `classes` (vector dimension, classes)
    replace the model's for tests of synthetic vectors."""
    client.create_vector_bucket(vectorBucketName=bucket)
    for logical_id, name, size in (
        ("VectorIndex", index, dim),
        ("ClassVectorIndex", classes_index_name(index), None if classes is None else classes + 1),
    ):
        properties = resource_properties(logical_id, "AWS::S3Vectors::Index")
        request: dict[str, Any] = {
            "vectorBucketName": bucket,
            "indexName": name,
            "dataType": properties["DataType"],
            "dimension": size or int(properties["Dimension"]),
            "distanceMetric": properties["DistanceMetric"],
        }
        keys = properties.get("MetadataConfiguration", {}).get("NonFilterableMetadataKeys")
        if keys:
            request["metadataConfiguration"] = {"nonFilterableMetadataKeys": keys}
        client.create_index(**request)
