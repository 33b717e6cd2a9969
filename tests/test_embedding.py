"""The model: the committed file is the one documented, it classifies, and it can be swapped."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from support.demo import REPO, demo_image

from imgsearch.config import ASSETS_DIR, Settings
from imgsearch.embedding import Embedder, ModelRunner, ModelSpec
from imgsearch.images import DecodeLimits, decode_image
from imgsearch.service import ImageSearch

pytestmark = pytest.mark.model  # the model itself

LIMITS = DecodeLimits.from_settings(Settings())
ELEPHANTS = {101, 385, 386}  # tusker, Asian elephant, African elephant
TINY = REPO / "tests" / "data" / "models" / "tiny_inception.json"


def test_the_committed_model_matches_its_checksums() -> None:
    for line in (ASSETS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest() == digest
    spec = ModelSpec.load(Settings().model_path)
    assert hashlib.sha256(spec.path.read_bytes()).hexdigest() == spec.sha256


def test_features_and_probabilities(embedder) -> None:
    embedding = embedder.embed(decode_image(demo_image("elephant", 2), LIMITS).image)
    assert embedding.features.shape == (1280,) and embedding.features.dtype == np.float32
    assert embedding.probabilities.shape == (1000,)
    assert embedding.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert int(np.argmax(embedding.probabilities)) in ELEPHANTS


def test_batch_and_single_embeddings_agree(embedder) -> None:
    images = [decode_image(demo_image(c), LIMITS).image for c in ("pizza", "lotus")]
    features, probabilities = embedder.embed_batch(images)
    single = embedder.embed(images[1])
    np.testing.assert_allclose(features[1], single.features, atol=1e-5)
    np.testing.assert_allclose(probabilities[1], single.probabilities, atol=1e-6)


def test_a_long_strip_costs_no_more_than_a_square(embedder, monkeypatch) -> None:
    """An 8 x 100,000 image (a few KB as PNG) must not be scaled to 260 x 3,250,000 before the
    crop: every resize stays within the model's input."""
    from PIL import Image

    requested: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording(self, size, *args, **kwargs):
        requested.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recording)
    strip = Image.new("RGB", (8, 100_000), (200, 40, 40))
    features = embedder.embed(strip).features
    side = embedder.spec.input_size
    assert requested and max(w * h for w, h in requested) <= side * side
    assert np.isfinite(features).all()


def test_an_inception_shaped_model_drops_in_by_configuration(tmp_path, vocabulary) -> None:
    settings = Settings(data_dir=tmp_path / "data", assets_dir=TINY.parent, model=TINY.name)
    service = ImageSearch(settings, vocabulary=vocabulary)
    assert service.parts.embedder.spec.input_size == 299
    assert service.parts.embedder.feature_dim == 2048
    ids = [service.add(f"{c}.jpg", demo_image(c)).image_id for c in ("pizza", "watch", "chair")]
    assert service.count() == 3
    assert service.parts.index.manifest.model == "tiny-inception-test"
    assert service.parts.index.manifest.dim == 2048
    similar = service.similar(ids[0], limit=2)
    assert {hit.image_id for hit in similar} == set(ids[1:])


def test_a_sidecar_naming_a_missing_output_is_refused(tmp_path) -> None:
    sidecar = json.loads(TINY.read_text())
    sidecar["features_output"] = "no_such_output"
    (tmp_path / "tiny_inception.tflite").write_bytes(TINY.with_suffix(".tflite").read_bytes())
    (tmp_path / "tiny_inception.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="no_such_output"):
        Embedder(ModelSpec.load(tmp_path / "tiny_inception.json"))


def test_an_index_refuses_vectors_of_another_model(tmp_path, embedder, vocabulary) -> None:
    data_dir = tmp_path / "data"
    ImageSearch(Settings(data_dir=data_dir), embedder=embedder).add("a.jpg", demo_image("pizza"))
    other = ImageSearch(
        Settings(data_dir=data_dir, assets_dir=TINY.parent, model=TINY.name), vocabulary=vocabulary
    )
    with pytest.raises(RuntimeError, match="efficientnet-lite2"):
        other.count()


def test_threads_embed_at_once_on_interpreters_of_their_own(monkeypatch) -> None:
    """Up to `interpreters` callers run at once, each on its own interpreter, and get what
    one interpreter gives alone; more callers wait for one instead of making more."""
    spec = ModelSpec.load(Settings().model_path)
    images = [decode_image(demo_image(c), LIMITS).image for c in ("elephant", "pizza", "watch")]
    alone = Embedder(spec, interpreters=1).embed_batch(images)[0]
    shared = Embedder(spec, interpreters=2)
    assert shared.runs_at_once == 2
    inside, most_inside, lock = 0, 0, threading.Lock()
    real_run = ModelRunner.run

    def counted(runner: ModelRunner, batch: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal inside, most_inside
        with lock:
            inside += 1
            most_inside = max(most_inside, inside)
        try:
            time.sleep(0.05)  # long enough for the other callers to arrive meanwhile
            return real_run(runner, batch)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(ModelRunner, "run", counted)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda i: shared.embed(images[i % 3]).features, range(12)))
    assert most_inside == 2  # two at once, never more
    assert len({id(runner) for runner in shared._idle}) == 2
    for i, features in enumerate(results):
        np.testing.assert_allclose(features, alone[i % 3], rtol=1e-5, atol=1e-6)


def test_a_phone_photo_decoded_at_the_ingest_draft_embeds_as_at_full_size(service) -> None:
    """Ingest decodes a 12-megapixel JPEG at 1/8 (the model's 260 px centre square and the
    thumbnail's 384 px kept): its features point as those of the full decode do."""
    with Image.open(io.BytesIO(demo_image("elephant", 2))) as small:
        large = small.convert("RGB").resize((4240, 2832), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 6, (2832, 4240, 3))
    noisy = np.clip(np.asarray(large, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()

    drafted = service.parts.ingestor.decode(data)
    assert drafted.image.size == (530, 354) and (drafted.width, drafted.height) == (4240, 2832)
    embedder = service.parts.embedder
    draft = embedder.embed(drafted.image).features
    full = embedder.embed(decode_image(data, LIMITS).image).features
    cosine = float(draft @ full / np.linalg.norm(draft) / np.linalg.norm(full))
    assert cosine > 0.99, cosine
