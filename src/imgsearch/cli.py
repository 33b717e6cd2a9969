"""The `imgsearch` command: serve the API and page, ingest folders, evaluate, bulk tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from imgsearch.config import Settings

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except CommandError as error:
        print(f"imgsearch: {error}", file=sys.stderr)
        return 2


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "backend", None):
        overrides["backend"] = args.backend
    return Settings(**overrides)


def _service(args: argparse.Namespace):
    from imgsearch.service import ImageSearch

    settings = _settings(args)
    if settings.backend == "local":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return ImageSearch(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from imgsearch.api.app import create_app
    from imgsearch.api.auth import local_api_key

    service = _service(args)
    service.index  # noqa: B018 - load the index before the first request, not during it
    if service.settings.auth == "api_key":
        key, created = local_api_key(service.settings)
        if created:
            print(
                f"imgsearch: uploads and deletions need this API key (shown once; it is kept in "
                f"{service.settings.data_dir}): {key}",
                file=sys.stderr,
            )
    web_dir = Path(args.web) if args.web else WEB_DIR
    app = create_app(service, web_dir=web_dir if web_dir.is_dir() else None)
    where = service.settings.data_dir if service.settings.backend == "local" else "AWS"
    print(f"imgsearch: {service.count()} images from {where}", file=sys.stderr)
    print(f"imgsearch: serving on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imgsearch.bulk import files_under, ingest_tree

    root = Path(args.directory)
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory")
    service = _service(args)
    total = sum(1 for _ in files_under(root))
    started = time.perf_counter()
    with tqdm(total=total, unit="file", disable=args.quiet or None, file=sys.stderr) as bar:
        summary = ingest_tree(service, root, on_result=lambda _: bar.update())
    elapsed = time.perf_counter() - started
    counts = summary.counts
    print(
        f"{total} files in {elapsed:.1f} s ({total / elapsed if elapsed else 0:.1f}/s): "
        f"{counts['added']} added, {counts['duplicate']} duplicate, "
        f"{counts['unchanged']} unchanged, {counts['refused']} refused; "
        f"{service.count()} images in the collection"
    )
    for result in summary.refused:
        print(f"  refused {result.key}: {result.reason}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def data_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--data-dir",
            type=Path,
            default=os.environ.get("IMGSEARCH_DATA"),
            help="local data directory (default: $IMGSEARCH_DATA or ~/.local/share/imgsearch)",
        )
        command.add_argument(
            "--backend",
            choices=["local", "aws"],
            help="storage: local files or AWS (S3 + DynamoDB)",
        )

    serve = commands.add_parser("serve", help="serve the HTTP API and the web page")
    data_options(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--web", help="directory of the web page (default: the project's web/)")
    serve.set_defaults(run=cmd_serve)

    ingest = commands.add_parser("ingest", help="add every image under a directory")
    data_options(ingest)
    ingest.add_argument("directory", help="keys are paths relative to it")
    ingest.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ingest.set_defaults(run=cmd_ingest)
    return parser


if __name__ == "__main__":
    sys.exit(main())
