"""Build the Lambda layers and function bundles for python3.12 on x86_64, without Docker.

    .venv/bin/python layers/build.py [--out build/lambda]      (or: make bundles)

Layers hold what changes rarely, function bundles what changes often:

    layers/deps/python/         numpy, pillow, pydantic, fastapi, mangum, boto3, powertools, ...
    layers/inference/python/    ai-edge-litert and annoy (annoy-mm's manylinux wheel), minus
                                whatever `deps` already holds (numpy)
    layers/model/assets/        the TFLite model and its sidecar      -> /opt/assets
    layers/vocabulary/assets/   the keyword-search vocabulary         -> /opt/assets/vocabulary
    functions/<name>/           app.py + the imgsearch package (without its assets and the
                                modules only the CLI runs); the search function also carries
                                the web page

Only manylinux wheels from the package index are installed (`pip install --platform
... --only-binary=:all:`), so nothing is compiled here and the binaries match Lambda's
Amazon Linux 2023 (glibc 2.34), not this machine. Versions come from constraints.txt, the same
ones the tests run. Tests, type stubs, headers, scripts and install records are trimmed; every
module is compiled to .pyc by a real python3.12 with unchecked-hash invalidation: Lambda's code
directory is read-only, and zip archives do not keep the source timestamps a default .pyc
is checked against, so timestamp .pyc files would be recompiled in memory at every cold start.

Sizes of each layer and of each function with its layers are printed and written to
`<out>/manifest.json`. A Python layer is rebuilt only when its inputs change (its requirements,
constraints.txt, how it is installed and trimmed); data layers and function bundles are copied
every time.

    .venv/bin/python layers/build.py --python-layers      (make test runs this first)

installs only the Python layers (about a minute of pip the first time, nothing while they are
current), so that the bundle tests' build takes seconds; without a python3.12 it says so and
does nothing: those tests skip then.
"""

from __future__ import annotations

import argparse
import ast
import fcntl
import glob
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "imgsearch"
ASSETS = SRC / "assets"
DEFAULT_OUT = REPO / "build" / "lambda"

PYTHON_VERSION = "3.12"
ARCHITECTURE = "x86_64"  # Lambda's name; manylinux tags say the same
# Amazon Linux 2023 (the python3.12 runtime) has glibc 2.34: any manylinux_2_x wheel up to it
# runs. pip 23 does not expand a newer tag to the older ones, so all are listed.
PLATFORMS = [f"manylinux2014_{ARCHITECTURE}"] + [
    f"manylinux_2_{minor}_{ARCHITECTURE}" for minor in range(17, 35)
]
# Lambda's limit on a function's code plus all its layers, unzipped.
LAMBDA_UNZIPPED_LIMIT = 262_144_000

# Core dependencies that only embedding and vector search need; the rest go to `deps`.
INFERENCE_PROJECTS = {"ai-edge-litert", "annoy-mm"}

# Trimmed from installed packages: nothing at run time reads these.
TRIM_DIRS = ("tests", "__pycache__")
TRIM_SUFFIXES = (".pyi", ".pxd", ".h", ".c", ".cpp")
TRIM_DIST_INFO = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")
# Parts of packages that nothing here loads, removed to keep the functions well inside the limit
# (tests/cloud/test_bundles.py runs every handler on the trimmed bundles). LiteRT ships GPU (WebGPU)
# and NPU accelerators and model tools beside the CPU interpreter: Lambda has neither GPU nor NPU.
UNUSED_PARTS = {
    "ai_edge_litert": ("libLiteRtWebGpuAccelerator.so", "vendors", "tools", "aot"),
}
# botocore describes every AWS service (28 MB); the functions talk to these only.
BOTOCORE_SERVICES = ("s3", "dynamodb", "ssm")

# The model's files are a layer of their own, the vocabulary another: the embed function needs
# only the model, the feedback function only the vocabulary.
MODEL_FILES = ("efficientnet_lite2.tflite", "efficientnet_lite2.json")
VOCABULARY_DIR = ASSETS / "vocabulary"

# The page's settings in the cloud (web/config.js): the API is the page's own origin, and
# files go straight to the bucket with presigned forms (API Gateway caps bodies at 10 MB).
CLOUD_PAGE_CONFIG = """// Written by layers/build.py for the cloud deployment (docs/deploy.md).
window.IMGSEARCH_CONFIG = { api: "", upload: "presigned" };
"""

# Parts of the package only the `imgsearch` command runs (on a machine, never in Lambda): left
# out of the bundles. The build checks that no bundled module imports them when it is loaded;
# the facade may import one inside a method only the CLI calls (create_cloud_resources).
CLI_ONLY = (
    "cli.py",
    "bulk.py",
    "evaluation",
    "api/server.py",
    "storage/aws_resources.py",
    "index/exact.py",
)

LAYERS = ("deps", "inference", "model", "vocabulary")
# What each function imports or reads; infra/template.yaml attaches the same layers
# (tests/cloud/test_bundles.py checks that the two agree).
FUNCTION_LAYERS = {
    "authorizer": ("deps",),
    "change": ("deps", "inference", "model"),
    "embed": ("deps", "inference", "model"),
    "feedback": ("deps", "vocabulary"),
    "search": ("deps", "inference", "model", "vocabulary"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--python-layers",
        action="store_true",
        help="install only the Python layers, and only if a python3.12 is found",
    )
    args = parser.parse_args(argv)
    if args.python_layers:
        try:
            python = find_python312()
        except SystemExit as missing:
            print(f"layers: not installed: {missing}")
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        with locked(args.out, fcntl.LOCK_EX):
            build_python_layers(args.out, python)
        return 0
    manifest = build(args.out)
    print_report(manifest)
    return 0


def build(out: Path) -> dict:
    """Build every layer and function bundle under `out`; returns the size manifest."""
    python = find_python312()
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, fcntl.LOCK_EX):
        return _build(out, python)


@contextmanager
def locked(out: Path, mode: int) -> Iterator[None]:
    """Hold `out`'s lock: exclusively to build, shared to use what was built (tests do), so
    that runs in one checkout never see a bundle half rebuilt by another."""
    with (out / ".lock").open("a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(out: Path, python: str) -> dict:
    build_python_layers(out, python)
    build_data_layer(out / "layers" / "model", {f"assets/{f}": ASSETS / f for f in MODEL_FILES})
    build_data_layer(out / "layers" / "vocabulary", {"assets/vocabulary": VOCABULARY_DIR})
    for function in FUNCTION_LAYERS:
        build_function(out / "functions" / function, function, python)
    manifest = size_manifest(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    build_static_page(out / "page")
    return manifest


def build_static_page(into: Path) -> None:
    """The page as CloudFront serves it from the bucket's web/ (docs/deploy.md, step 4):
    web/ built as for a static host (one bundled script, hashed file names, nothing inline,
    which the distribution's Content-Security-Policy would refuse), with the cloud config."""
    from imgsearch.api.page import build_page, write_page  # the package this script bundles

    shutil.rmtree(into, ignore_errors=True)
    write_page(build_page(REPO / "web", inline=False, config_js=CLOUD_PAGE_CONFIG), into)
    print(f"page: built into {into}")


# Python layers ---------------------------------------------------------------------------


def build_python_layers(out: Path, python: str) -> None:
    deps, inference = split_requirements()
    build_python_layer(out / "layers" / "deps", deps, python)
    build_python_layer(out / "layers" / "inference", inference, python, shared=out / "layers/deps")


def split_requirements() -> tuple[list[str], list[str]]:
    """The project's core dependencies, split into the `deps` and `inference` layers."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = pyproject["project"]["dependencies"]
    inference = [r for r in requirements if project_name(r) in INFERENCE_PROJECTS]
    missing = INFERENCE_PROJECTS - {project_name(r) for r in inference}
    if missing:
        raise SystemExit(f"pyproject.toml no longer depends on {sorted(missing)}")
    return [r for r in requirements if r not in inference], inference


def project_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group()).lower()


def build_python_layer(
    layer: Path, requirements: list[str], python: str, *, shared: Path | None = None
) -> None:
    """pip-install manylinux wheels into `layer`/python, trimmed and compiled.

    Distributions already in the `shared` layer are removed again: Lambda puts every layer on
    sys.path, and a second copy of numpy would only take space (or, worse, shadow the first).
    """
    inputs = fingerprint(requirements, shared)
    if is_current(layer, inputs):
        print(f"layer {layer.name}: up to date")
        return
    print(f"layer {layer.name}: installing {' '.join(requirements)}")
    shutil.rmtree(layer, ignore_errors=True)
    target = layer / "python"
    pip_install(target, requirements)
    if shared is not None:
        provided = distributions(path=[str(shared / "python")])
        remove_distributions(target, {d.metadata["Name"] for d in provided})
    trim(target)
    compile_tree(target, python)
    (layer / ".inputs").write_text(inputs)


def pip_install(target: Path, requirements: list[str]) -> None:
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--target", str(target), *platforms,
        "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", "cp312",
        "--only-binary=:all:", "--no-compile",
        "-c", str(REPO / "constraints.txt"), *requirements,
    ]  # fmt: skip
    subprocess.run(command, check=True)


def remove_distributions(target: Path, names: set[str]) -> None:
    wanted = {project_name(n) for n in names}
    for dist in distributions(path=[str(target)]):
        if project_name(dist.metadata["Name"]) not in wanted:
            continue
        for file in dist.files or ():
            path = target / file
            if path.is_file():
                path.unlink()
        shutil.rmtree(Path(dist._path), ignore_errors=True)  # its .dist-info directory
    remove_empty_dirs(target)


def trim(root: Path) -> None:
    """Remove what no import reads: tests, stubs, C sources and headers, scripts, records,
    and the unused parts of some packages."""
    shutil.rmtree(root / "bin", ignore_errors=True)
    for package, parts in UNUSED_PARTS.items():
        for part in parts:
            path = root / package / part
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    services = root / "botocore" / "data"
    if services.is_dir():
        for service in services.iterdir():
            if service.is_dir() and service.name not in BOTOCORE_SERVICES:
                shutil.rmtree(service)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and path.name in TRIM_DIRS:
            shutil.rmtree(path)
        elif path.is_file() and (
            path.suffix in TRIM_SUFFIXES
            or (path.parent.name.endswith(".dist-info") and path.name in TRIM_DIST_INFO)
        ):
            path.unlink()
    remove_empty_dirs(root)


def remove_empty_dirs(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def compile_tree(root: Path, python: str) -> None:
    command = [python, "-m", "compileall", "-q", "-j", "0"]
    command += ["--invalidation-mode", "unchecked-hash", str(root)]
    subprocess.run(command, check=True)


# Data layers and function bundles ----------------------------------------------------------


def build_data_layer(layer: Path, files: dict[str, Path]) -> None:
    """Copy files (or directories) into `layer` under the given relative paths."""
    for source in files.values():
        if not source.exists():
            raise SystemExit(f"{source} is missing: run `make setup` first")
    shutil.rmtree(layer, ignore_errors=True)
    for relative, source in files.items():
        destination = layer / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns(".*"))
        else:
            shutil.copy2(source, destination)
    print(f"layer {layer.name}: copied {', '.join(files)}")


def build_function(bundle: Path, function: str, python: str) -> None:
    """The handler plus the core package; its assets arrive as layers."""
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(REPO / "functions" / function, bundle, ignore=_ignore_caches)
    shutil.copytree(
        SRC, bundle / "imgsearch", ignore=shutil.ignore_patterns("assets", "__pycache__")
    )
    for part in CLI_ONLY:
        path = bundle / "imgsearch" / part
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    check_no_cli_imports(bundle / "imgsearch")
    if function == "search":  # the search function serves the web page (docs/deploy.md)
        shutil.copytree(REPO / "web", bundle / "web", ignore=_ignore_caches)
        (bundle / "web" / "config.js").write_text(CLOUD_PAGE_CONFIG)
    compile_tree(bundle, python)
    print(f"function {function}: bundled")


def check_no_cli_imports(package: Path) -> None:
    """Refuse a bundle in which loading a module would import one left out of it."""
    left_out = {"imgsearch." + part.removesuffix(".py").replace("/", ".") for part in CLI_ONLY}
    for path in sorted(package.rglob("*.py")):
        for node in _load_time_imports(ast.parse(path.read_text(encoding="utf-8")).body):
            if isinstance(node, ast.ImportFrom):
                names = [_absolute(node, path.relative_to(package.parent))]
                names += [f"{names[0]}.{alias.name}" for alias in node.names]
            else:
                names = [alias.name for alias in node.names]
            for name in names:
                if any(name == out or name.startswith(out + ".") for out in left_out):
                    raise SystemExit(f"{path} imports {name}, which the bundles leave out")


def _load_time_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when a module is loaded: not those in functions, nor the ones
    under `if TYPE_CHECKING:`."""
    for statement in body:
        if isinstance(statement, ast.Import | ast.ImportFrom):
            yield statement
        elif isinstance(statement, ast.If) and ast.unparse(statement.test) == "TYPE_CHECKING":
            yield from _load_time_imports(statement.orelse)
        elif not isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for inner in getattr(statement, field, []):
                    nested = inner.body if isinstance(inner, ast.ExceptHandler) else [inner]
                    yield from _load_time_imports(nested)


def _absolute(node: ast.ImportFrom, relative_path: Path) -> str:
    """The module an import-from names, with a relative one (from .x, from ..x) resolved."""
    if not node.level:
        return node.module or ""
    package = list(relative_path.parent.parts)[: len(relative_path.parent.parts) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _ignore_caches(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.startswith(".")}


# Sizes -----------------------------------------------------------------------------------


def tree_size(root: Path) -> int:
    """Bytes of all regular files under `root`, as Lambda counts an unzipped package."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def size_manifest(out: Path) -> dict:
    layers = {name: tree_size(out / "layers" / name) for name in LAYERS}
    functions = {}
    for name, layer_names in FUNCTION_LAYERS.items():
        code = tree_size(out / "functions" / name)
        total = code + sum(layers[layer] for layer in layer_names)
        functions[name] = {"code": code, "layers": list(layer_names), "total": total}
    return {
        "python": PYTHON_VERSION,
        "architecture": ARCHITECTURE,
        "limit": LAMBDA_UNZIPPED_LIMIT,
        "layers": layers,
        "functions": functions,
    }


def print_report(manifest: dict) -> None:
    mib = 1024 * 1024
    print(f"\nunzipped sizes (MiB), python{manifest['python']} {manifest['architecture']}:")
    for name, size in manifest["layers"].items():
        print(f"  layer {name:<12} {size / mib:7.1f}")
    limit = manifest["limit"]
    for name, entry in manifest["functions"].items():
        print(
            f"  function {name:<10} {entry['total'] / mib:7.1f}  = code {entry['code'] / mib:.1f}"
            f" + {' + '.join(entry['layers'])} ({entry['total'] / limit:.0%} of Lambda's limit)"
        )


# Helpers ---------------------------------------------------------------------------------


def find_python312() -> str:
    """A real python3.12 to compile with (.pyc files are specific to the minor version)."""
    candidates = [os.environ.get("PYTHON312"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    raise SystemExit("python3.12 is needed to compile the bundles: install it or set PYTHON312")


def fingerprint(requirements: list[str], shared: Path | None) -> str:
    """What a Python layer is built from: its requirements, the pinned versions, the code and
    settings below that install and trim it, and the layer it shares distributions with.
    (Not this whole script: changing how functions are bundled must not reinstall layers.)"""
    digest = hashlib.sha256("\n".join(requirements).encode())
    digest.update((REPO / "constraints.txt").read_bytes())
    for step in (build_python_layer, pip_install, remove_distributions, trim, compile_tree):
        digest.update(inspect.getsource(step).encode())
    settings = (PYTHON_VERSION, PLATFORMS, TRIM_DIRS, TRIM_SUFFIXES, TRIM_DIST_INFO)
    digest.update(repr((settings, UNUSED_PARTS, BOTOCORE_SERVICES)).encode())
    if shared is not None:
        digest.update((shared / ".inputs").read_bytes())
    return digest.hexdigest()


def is_current(layer: Path, inputs: str) -> bool:
    marker = layer / ".inputs"
    return marker.is_file() and marker.read_text() == inputs


if __name__ == "__main__":
    sys.exit(main())
