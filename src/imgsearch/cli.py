"""The `imgsearch` command: serve the API and page, ingest folders, evaluate, bulk tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar, get_args

from imgsearch.config import FeedbackMethod, Settings
from imgsearch.results import IndexFormatError, ModelMismatch, NotUnderstood, UnusableFile
from imgsearch.service import ImageSearch

if TYPE_CHECKING:
    from tqdm import tqdm

    from imgsearch.repair import Finding

T = TypeVar("T")

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
FEEDBACK_METHODS: tuple[FeedbackMethod, ...] = get_args(FeedbackMethod)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.run(args)  # the command's cmd_* function
        return code
    except KeyboardInterrupt:
        return 130
    except (CommandError, IndexFormatError, ModelMismatch, UnusableFile) as error:
        print(f"imgsearch: {error}", file=sys.stderr)
        return 2


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _settings(args: argparse.Namespace, *, bulk: bool = False) -> Settings:
    """The settings (config.Settings, from the environment) with what the arguments override.
    `bulk` commands decode the owner's files in their own threads (no worker processes to
    start; the same header checks bound each decode)."""
    overrides: dict[str, object] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "backend", None):
        overrides["backend"] = args.backend
    if bulk:
        overrides["decode_workers"] = 0
    return Settings(**overrides)  # type: ignore[arg-type]  # validated by pydantic


def _service(args: argparse.Namespace, *, bulk: bool = False) -> ImageSearch:
    """The engine on the collection the arguments name."""
    settings = _settings(args, bulk=bulk)
    if settings.backend == "local":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return ImageSearch(settings)


def cmd_serve(args: argparse.Namespace) -> int:
    from imgsearch.api.server import run_workers, serve

    service = _service(args)
    if service.settings.auth == "api_key":
        key, created = service.api_key()  # here, once, before any worker process starts
        if created:
            print(
                f"imgsearch: uploads and deletions need this API key (shown once; it is kept in "
                f"{service.settings.data_dir}): {key}",
                file=sys.stderr,
            )
    service.check_at_start()  # loads the index, verified, before the first request
    settings = service.settings
    workers = args.workers or settings.http_workers
    web_dir = Path(args.web) if args.web else WEB_DIR
    web = web_dir if web_dir.is_dir() else None
    if workers == 1:
        service.recover_in_background()  # what a crash left: finished while serving
    where = settings.data_dir if settings.backend == "local" else "AWS"
    print(f"imgsearch: {service.count()} images from {where}", file=sys.stderr)
    processes = f" ({workers} processes)" if workers > 1 else ""
    print(f"imgsearch: serving on http://{args.host}:{args.port}/{processes}", file=sys.stderr)
    if workers == 1:
        serve(service, host=args.host, port=args.port, web_dir=web)
    else:
        service.close()  # each worker loads its own
        run_workers(settings, host=args.host, port=args.port, web_dir=web, workers=workers)
    return 0


def cmd_init_aws(args: argparse.Namespace) -> int:
    if not os.environ.get("AWS_ENDPOINT_URL"):
        raise CommandError(
            "init-aws creates the bucket and tables in an AWS emulator such as a moto server "
            "(set AWS_ENDPOINT_URL); on AWS they come from infra/template.yaml (docs/deploy.md)"
        )
    settings = _settings(args)
    created = ImageSearch.create_cloud_resources(settings)
    print(f"created {', '.join(created)}" if created else "all resources exist already")
    return 0


def _folder(args: argparse.Namespace) -> tuple[Path, int]:
    """The command's image folder and how many files are under it (for the progress bar)."""
    from imgsearch.bulk import files_under

    root = Path(args.directory)
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory")
    return root, sum(1 for _ in files_under(root))


def _progress(args: argparse.Namespace, total: int) -> tqdm[NoReturn]:
    from tqdm import tqdm

    return tqdm(total=total, unit="file", disable=args.quiet or None, file=sys.stderr)


def cmd_ingest(args: argparse.Namespace) -> int:
    from imgsearch.bulk import ingest_tree

    root, total = _folder(args)
    service = _service(args, bulk=True)
    started = time.perf_counter()
    with _progress(args, total) as bar:
        summary = ingest_tree(service, root, prefix=args.prefix, on_result=lambda _: bar.update())
    service.close(finish_merges=True)  # the layout a query will meet, not a pile of shards
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
    if replaced := summary.replaced:
        print(
            f"{len(replaced)} keys now hold another image than before, e.g. {replaced[0].key} "
            "(to keep both folders' images, ingest each under its own --prefix)"
        )
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    service = _service(args)
    started = time.perf_counter()
    report = service.reindex()
    service.close(finish_merges=True)
    print(
        f"index rebuilt in {time.perf_counter() - started:.1f} s: {report.added} images in "
        f"{service.index_info().shards} shards"
    )
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Index what a bucket holds already; resumable from a checkpoint file."""
    bucket, prefix = _bucket_prefix(args.url)
    settings = _settings(args).with_changes(backend="aws", bucket=bucket)
    service = ImageSearch(settings)
    checkpoint = args.checkpoint or Path(f"imgsearch-backfill-{bucket}.json")
    start_after = None if args.restart else _resume_from(checkpoint, args.url, args.reembed)
    if start_after:
        print(f"resuming after {start_after} ({checkpoint})", file=sys.stderr)
    started = time.perf_counter()
    for progress in service.backfill(
        prefix, start_after=start_after, reembed=args.reembed, batch_size=args.batch
    ):
        _save_checkpoint(checkpoint, args.url, args.reembed, progress.last_key, progress.done)
        elapsed = time.perf_counter() - started
        counts = ", ".join(f"{n} {status}" for status, n in sorted(progress.counts.items()))
        print(
            f"{progress.listed} objects in {elapsed:.1f} s "
            f"({progress.listed / elapsed if elapsed else 0:.1f}/s): {counts or 'none'}; "
            f"{progress.indexed} indexed; last {progress.last_key}"
            + ("; done" if progress.done else ""),
            file=sys.stderr if not progress.done else sys.stdout,
        )
    return 0


def _bucket_prefix(url: str) -> tuple[str, str]:
    """s3://BUCKET/images/PREFIX -> (BUCKET, PREFIX); only images/ is indexed."""
    bucket, _, path = url.removeprefix("s3://").partition("/")
    if not url.startswith("s3://") or not bucket:
        raise CommandError(f"{url!r}: expected s3://BUCKET/images/PREFIX")
    path = path or "images/"
    if not (path + "/").startswith("images/"):
        raise CommandError(f"{url!r}: only objects under images/ are indexed")
    return bucket, path.removeprefix("images").removeprefix("/")


def _resume_from(checkpoint: Path, url: str, reembed: bool) -> str | None:
    """The key to resume after, from a checkpoint of the same backfill, if unfinished."""
    import json

    if not checkpoint.is_file():
        return None
    saved = json.loads(checkpoint.read_text())
    if saved.get("url") != url or saved.get("reembed") != reembed:
        raise CommandError(f"{checkpoint} is another backfill's; --restart to start over")
    if saved.get("done"):
        raise CommandError(f"{checkpoint}: this backfill is done; --restart to run it again")
    last: str | None = saved.get("last_key")
    return last


def _save_checkpoint(
    checkpoint: Path, url: str, reembed: bool, last_key: str | None, done: bool
) -> None:
    import json

    state = {"url": url, "reembed": reembed, "last_key": last_key, "done": done}
    partial = checkpoint.with_name(checkpoint.name + ".tmp")
    partial.write_text(json.dumps(state))
    partial.replace(checkpoint)  # never half a checkpoint


def _print_findings(findings: list[Finding]) -> None:
    for finding in findings:
        print(f"{finding}" + ("" if finding.fix else " (cannot be repaired from what is stored)"))


def cmd_check(args: argparse.Namespace) -> int:
    from imgsearch.results import DamagedFile

    repaired = False
    try:
        service = _service(args)
    except DamagedFile as error:  # an SQLite file (catalog or votes) cannot be opened
        if not args.repair:
            raise
        print(f"{error.name}: {error.problem}; replacing it")
        service, repaired = ImageSearch.replace_damaged_file(_settings(args), error.name), True
    findings = service.check()
    _print_findings(findings)
    if findings and args.repair:
        # A damaged SQLite file hides the other checks (repair.check stops at it): once it
        # is mended, what they find is printed and repaired too.
        hid = any(finding.fix in ("reset_feedback", "rebuild_catalog") for finding in findings)
        service, repaired = service.repair(findings), True
        findings = service.check()
        if findings and hid:
            _print_findings(findings)
            service = service.repair(findings)
            findings = service.check()
        for finding in findings:
            print(f"still: {finding}")
    if repaired and not findings:
        print("repaired")
    if not findings:
        print(f"ok: {service.count()} images, every stored file verified")
    return 1 if findings else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from imgsearch.bulk import embed_tree

    root, total = _folder(args)
    service = _service(args, bulk=True)
    started = time.perf_counter()
    with _progress(args, total) as bar:
        embedded = embed_tree(service, root, on_file=lambda _: bar.update())
    embedded.save(Path(args.out))
    elapsed = time.perf_counter() - started
    print(
        f"{len(embedded.keys)} images embedded with {embedded.model} in {elapsed:.1f} s "
        f"({len(embedded.keys) / elapsed if elapsed else 0:.1f}/s) -> {args.out}; "
        f"{len(embedded.refused)} refused"
    )
    for key, reason in embedded.refused.items():
        print(f"  refused {key}: {reason}")
    return 0


def cmd_neighbours(args: argparse.Namespace) -> int:
    import numpy as np

    from imgsearch.bulk import EmbeddedTree

    source = Path(args.file)
    if not source.is_file():
        raise CommandError(f"{source} is not a file (make one with `imgsearch embed`)")
    embedded = EmbeddedTree.load(source)
    started = time.perf_counter()
    indices, distances = ImageSearch.exact_neighbours(
        embedded.features, args.k, metric=args.metric, jobs=args.jobs
    )
    elapsed = time.perf_counter() - started
    out = Path(args.out) if args.out else source.with_suffix(f".{args.metric}.neighbours.npz")
    np.savez(
        out,
        keys=np.array(embedded.keys, dtype=str),
        indices=indices,
        distances=distances,
        metric=np.array(args.metric),
    )
    print(
        f"{len(embedded.keys)} images x {indices.shape[1]} nearest ({args.metric}) in "
        f"{elapsed:.1f} s with {args.jobs} jobs -> {out}"
    )
    return 0


def cmd_votes(args: argparse.Namespace) -> int:
    service = _service(args)
    try:
        if args.action == "show":
            report = service.learned(args.target)
            summary = report.summary
            print(
                f"{summary.term}: {summary.votes} votes from {summary.sessions} sessions and "
                f"{summary.clients} clients"
            )
            for image in report.images:  # in the facade's order, as the HTTP view lists them
                agreement = image.agreement
                print(
                    f"  {agreement.image_id}  up {agreement.up_clients} ({agreement.up:.2f})  "
                    f"down {agreement.down_clients} ({agreement.down:.2f})  "
                    f"weight {image.weight:+.2f}  {image.key or '(removed)'}"
                )
            for client, up, down in report.voters:
                print(f"  client {client}: {up} up, {down} down")
        elif args.action == "reset":
            term, removed = service.reset_term(args.target)
            print(f"{term}: reset, {removed} votes removed")
        else:
            client, removed = service.drop_client(args.target)
            print(f"client {client}: {removed} votes removed")
    except NotUnderstood as error:
        raise CommandError(str(error)) from None
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import importlib.util
    import json
    import tempfile

    from pydantic import ValidationError
    from tqdm import tqdm

    from imgsearch.bulk import files_under
    from imgsearch.evaluation import EvaluationError
    from imgsearch.evaluation.collection import ingest_labelled, read_labels
    from imgsearch.evaluation.methods import methods, parse_strategies
    from imgsearch.evaluation.plots import write_plots
    from imgsearch.evaluation.report import render, to_json
    from imgsearch.evaluation.run import evaluate

    started = time.perf_counter()
    root = Path(args.directory)
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory")
    if args.plots and importlib.util.find_spec("matplotlib") is None:
        raise CommandError("--plots needs matplotlib: pip install -e '.[local]'")
    quiet = args.quiet or None  # None: bars only on a terminal

    def track(items: Iterable[T], description: str) -> Iterable[T]:
        return tqdm(items, desc=description, disable=quiet, file=sys.stderr)

    # Never the user's own collection: a fresh directory unless one is named.
    with tempfile.TemporaryDirectory(prefix="imgsearch-eval-") as scratch:
        data_dir = Path(args.data_dir or scratch)
        data_dir.mkdir(parents=True, exist_ok=True)
        settings = Settings(data_dir=data_dir, backend="local", decode_workers=0)
        for search_k in args.search_k or ():  # refused before the ingest, not after it
            try:
                settings.with_changes(ann_search_k=search_k)
            except ValidationError as error:
                reason = error.errors()[0]["msg"].removeprefix("Value error, ")
                raise CommandError(f"--search-k {search_k}: {reason}") from None
        service = ImageSearch(settings)
        try:
            labels = read_labels(Path(args.labels))
            strategies = [parse_strategies(text) for text in args.strategies or []]
            wanted = methods(strategies or [None], args.feedback_method or [None])
            total = sum(1 for _ in files_under(root))
            with tqdm(
                total=total, desc="ingest", unit="file", disable=quiet, file=sys.stderr
            ) as bar:
                collection = ingest_labelled(
                    service, root, labels, on_result=lambda _: bar.update()
                )
            report = evaluate(
                service,
                collection,
                directory=root,
                methods=wanted,
                candidates=args.candidates or (),
                search_ks=args.search_k or (),
                track=track,
                started=started,
            )
        except EvaluationError as error:
            raise CommandError(str(error)) from error
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(report), indent=2) + "\n")
        print(f"numbers: {args.json}", file=sys.stderr)
    if args.plots:
        for path in write_plots(report, Path(args.plots)):
            print(f"chart: {path}", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of 1 or more")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def data_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--data-dir",
            type=Path,  # unset: Settings' data_dir (IMGSEARCH_DATA, else the XDG default)
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
    serve.add_argument(
        "--workers",
        type=_positive,
        help="server processes (default: $IMGSEARCH_HTTP_WORKERS, else 1; about one per core)",
    )
    serve.set_defaults(run=cmd_serve)

    init_aws = commands.add_parser(
        "init-aws", help="create the bucket and tables in an AWS emulator ($AWS_ENDPOINT_URL)"
    )
    init_aws.set_defaults(run=cmd_init_aws)

    ingest = commands.add_parser("ingest", help="add every image under a directory")
    data_options(ingest)
    ingest.add_argument("directory", help="keys are paths relative to it")
    ingest.add_argument(
        "--prefix", default="", help="put before every key, e.g. 2019/ (default: none)"
    )
    ingest.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ingest.set_defaults(run=cmd_ingest)

    evaluation = commands.add_parser(
        "eval", help="measure retrieval quality on a labelled folder (docs/evaluation.md)"
    )
    evaluation.add_argument("directory", help="images; the labels name paths relative to it")
    evaluation.add_argument("--labels", required=True, help="CSV file of path,label rows")
    evaluation.add_argument(
        "--data-dir",
        type=Path,
        help="ingest into this data directory, or reuse it (default: a fresh temporary one)",
    )
    evaluation.add_argument("--json", help="also write every number to this JSON file")
    evaluation.add_argument("--plots", help="write PNG charts into this directory")
    evaluation.add_argument(
        "--strategies",
        action="append",
        metavar="S[,S...]",
        help="vocabulary guessing strategies for keyword search and feedback "
        "(relations, glosses, vectors, or none); repeat to compare side by side",
    )
    evaluation.add_argument(
        "--feedback-method",
        action="append",
        choices=FEEDBACK_METHODS,
        metavar="NAME",
        help=f"feedback learning method (the feedback_method setting: "
        f"{', '.join(FEEDBACK_METHODS)}); repeat to compare side by side",
    )
    evaluation.add_argument(
        "--candidates",
        action="append",
        type=_positive,
        metavar="N",
        help="also measure the index with N Annoy candidates per query; repeat for more",
    )
    evaluation.add_argument(
        "--search-k",
        action="append",
        type=int,  # checked by the settings (`cmd_eval`)
        metavar="N",
        help="also measure the index with this Annoy search_k (with each --candidates)",
    )
    evaluation.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    evaluation.set_defaults(run=cmd_eval)

    reindex = commands.add_parser(
        "reindex", help="rebuild the index from the stored embeddings (after an upgrade)"
    )
    data_options(reindex)
    reindex.set_defaults(run=cmd_reindex)

    backfill = commands.add_parser(
        "backfill",
        help="index what a bucket already holds (s3://BUCKET/images/...), resumable",
        description="List the objects under the prefix, in key order, and apply each as the "
        "bucket's event would (what is indexed already stays as it is), building the index "
        "once per batch. Progress goes to a checkpoint file after each batch: run the same "
        "command again to resume. Uses the stack's catalog table (IMGSEARCH_CATALOG_TABLE).",
    )
    backfill.add_argument(
        "url", help="s3://BUCKET/images/PREFIX (PREFIX optional: s3://BUCKET is all of images/)"
    )
    backfill.add_argument(
        "--reembed",
        action="store_true",
        help="after a model change: embed every image again, then rebuild the index",
    )
    backfill.add_argument(
        "--checkpoint", type=Path, help="default: ./imgsearch-backfill-BUCKET.json"
    )
    backfill.add_argument("--restart", action="store_true", help="ignore the checkpoint")
    backfill.add_argument(
        "--batch", type=_positive, default=100, help="objects per index build (default 100)"
    )
    backfill.set_defaults(run=cmd_backfill)

    votes = commands.add_parser(
        "votes",
        help="what votes taught a word: show it, reset it, or drop one client's votes",
        description="show TERM: images voted on, clients agreeing and each image's weight for "
        "other visitors, and the voters' client ids. reset TERM: forget the word's votes. "
        "drop-client CLIENT: remove every vote of a client, named by its id or IP address.",
    )
    data_options(votes)
    votes.add_argument("action", choices=["show", "reset", "drop-client"])
    votes.add_argument("target", help="a word (show, reset) or a client id or address")
    votes.set_defaults(run=cmd_votes)

    check = commands.add_parser(
        "check",
        help="verify every stored file (checksums, the catalog, embeddings, lost images)",
    )
    data_options(check)
    check.add_argument(
        "--repair",
        action="store_true",
        help="rebuild what is damaged from what is stored (index from embeddings, embeddings "
        "from originals, a damaged catalog from the originals; votes, in a file of their own, "
        "stay); with no server running on the collection",
    )
    check.set_defaults(run=cmd_check)

    embed = commands.add_parser(
        "embed", help="features and class probabilities of every image under DIR, to a file"
    )
    data_options(embed)
    embed.add_argument("directory")
    embed.add_argument("--out", required=True, help="the .npz file to write")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    embed.set_defaults(run=cmd_embed)

    neighbours = commands.add_parser(
        "neighbours", help="exact k nearest neighbours of every image in an `embed` file"
    )
    neighbours.add_argument("file", help="a file written by `imgsearch embed`")
    neighbours.add_argument(
        "--metric", choices=["cosine", "euclidean", "manhattan"], default="cosine"
    )
    neighbours.add_argument("--k", type=_positive, default=50)
    neighbours.add_argument(
        "--jobs",
        type=_positive,
        default=os.cpu_count() or 1,
        help="threads (default: one per core)",
    )
    neighbours.add_argument("--out", help="default: FILE.<metric>.neighbours.npz")
    neighbours.set_defaults(run=cmd_neighbours)
    return parser


if __name__ == "__main__":
    sys.exit(main())
