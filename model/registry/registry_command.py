"""``llmctv models register | list | show | promote | rollback`` over the models folder.

::

    llmctv models register runs/site/best --name site-breast --report REPORT/ \\
        --structure-map site-map.toml --side-form _Lt/_Rt
    llmctv models list
    llmctv models show site-breast-v1
    llmctv models promote site-breast-v1                       # needs a PASS report
    llmctv models promote site-breast-v2 --override-reason "..."  # audited
    llmctv models rollback

The folder is ``--models-dir`` or the setting ``models_dir`` (``LLMCTV_MODELS_DIR``). Who acts
is ``--by`` or the login name. Every change goes to the registry's history and, through the
``events`` sink the ``llmctv`` entry point hands in, to the audit trail; that is why the
command is registered with a sink (:func:`register`), never without one.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.errors import ConfigurationError
from model.registry.registry import EventSink, ModelRegistry, RegistryEvent

#: Builds the audit sink when a command runs (reads the storage settings then, not before).
SinkFactory = Callable[[], EventSink]


def _registry(args: argparse.Namespace) -> ModelRegistry:
    folder: Path | None = args.models_dir
    if folder is None:
        from model.settings import get_settings

        folder = get_settings().models_dir
    if folder is None:
        raise ConfigurationError("no models folder: set LLMCTV_MODELS_DIR or --models-dir")
    events: SinkFactory = args.events
    return ModelRegistry(folder, on_event=events())


def _who(args: argparse.Namespace) -> str:
    return str(args.by) if args.by else getpass.getuser()


def cmd_register(args: argparse.Namespace) -> int:
    """Copy a checkpoint in as a new version with its card."""
    card = _registry(args).register(
        args.checkpoint,
        args.name,
        who=_who(args),
        report=args.report,
        structure_map=args.structure_map,
        roi_names=args.roi_name,
        side_form=args.side_form,
    )
    verdict = card.commissioning.verdict if card.commissioning else "no report"
    print(f"registered {card.version}: {card.label} (commissioning: {verdict})")
    problems = card.promotion_problems()
    if problems:
        print(f"  promotion needs an override: {'; '.join(problems)}")
    for structure, (left, right) in card.output_names.rois().items():
        print(f"  {structure}: {left} / {right}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every version, the promoted one marked."""
    registry = _registry(args)
    state = registry.promoted()
    rows: list[dict[str, Any]] = []
    for card in registry.versions():
        rows.append(
            {
                **card.summary(),
                "promoted": card.version == state.version,
                "promotable": not card.promotion_problems(),
            }
        )
    if args.json:
        print(
            json.dumps(
                {"promoted": state.version, "previous": list(state.previous), "versions": rows},
                indent=2,
            )
        )
        return 0
    if not rows:
        print("no model versions registered")
    for row in rows:
        mark = "*" if row["promoted"] else " "
        print(f"{mark} {row['version']:<30} {row['label']:<50} verdict {row['verdict'] or '-'}")
    if state.version:
        print(f"promoted: {state.version} (by {state.changed_by} at {state.changed_at})")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """One version's card (Markdown, or its JSON)."""
    from model.registry.model_card import render_markdown

    registry = _registry(args)
    card = registry.card(args.version)
    if args.json:
        print(card.model_dump_json(indent=2))
    else:
        print(render_markdown(card, registry.history(args.version)))
    return 0


def _print_event(event: RegistryEvent | None, what: str) -> None:
    if event is None:
        print(f"{what}: already the promoted version; nothing changed")
        return
    override = " (override, audited)" if event.override_reason else ""
    print(f"{event.action.replace('_', ' ')} {event.version}{override}: {event.label}")
    if event.replaced:
        print(
            f"  replaces {event.replaced}; workers pick it up for their next job (Celery: restart)"
        )


def cmd_promote(args: argparse.Namespace) -> int:
    """Promote a version (PASS report, or an override reason)."""
    registry = _registry(args)
    event = registry.promote(args.version, who=_who(args), override_reason=args.override_reason)
    _print_event(event, args.version)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Return to the version promoted before the current one."""
    _print_event(_registry(args).rollback(who=_who(args)), "rollback")
    return 0


def register(
    subparsers: argparse._SubParsersAction[Any], *, events: SinkFactory
) -> argparse.ArgumentParser:
    """Add ``models`` and its sub-commands; ``events`` builds the audit sink when one runs."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "models", help="model versions: register, list, show, promote, rollback"
    )
    parser.set_defaults(events=events)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--models-dir", type=Path, default=None, help="default: LLMCTV_MODELS_DIR")
    common.add_argument("--by", default=None, help="who acts (default: the login name)")
    sub = parser.add_subparsers(dest="models_command", required=True)

    p = sub.add_parser("register", parents=[common], help="copy a checkpoint in as a new version")
    p.add_argument(
        "checkpoint", type=Path, help="checkpoint folder (model.safetensors + config.json)"
    )
    p.add_argument("--name", required=True, help="model name; versions are NAME-v1, NAME-v2, ...")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        help="commissioning report folder (llmctv commission --out)",
    )
    p.add_argument(
        "--structure-map",
        type=Path,
        default=None,
        help="the site's structure map (default: the checkpoint's)",
    )
    p.add_argument(
        "--roi-name",
        action="append",
        default=[],
        metavar="STRUCTURE=BASE",
        help="output name without its side, e.g. imn=CTVn_IMN (repeatable)",
    )
    p.add_argument(
        "--side-form",
        default=None,
        metavar="LEFT/RIGHT",
        help="how the side is written: _L/_R, _Lt/_Rt, ' Left/ Right', Lt_/Rt_ (prefix); "
        "default: the structure map's first side form",
    )
    p.set_defaults(func=cmd_register)

    p = sub.add_parser(
        "list", parents=[common], help="registered versions; * marks the promoted one"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common], help="one version's model card")
    p.add_argument("version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "promote", parents=[common], help="serve this version (PASS report or override)"
    )
    p.add_argument("version")
    p.add_argument(
        "--override-reason",
        default=None,
        help="promote without a PASS report; the reason is audited (no patient data)",
    )
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", parents=[common], help="serve the previously promoted version")
    p.set_defaults(func=cmd_rollback)
    return parser
