"""`ddlm train-predictor`: a run -> its records with labels -> a predictor of the label from noisy
inputs (guidance/predictor.py) -> PRED_DIR, and the sampling flags that steer with it.

Named as a verb like `train` and `distill`: it trains, and what it makes is not a run (no checkpoints,
no sampler of its own), only a folder that `ddlm sample --predictor PRED_DIR` reads.

Labels come from a table (`--labels FILE.tsv`, record id <TAB> label, for FASTA runs whose records have
ids) or from a property of each record with a threshold (`--property charge>=5`, any reward of
guidance/rewards.py: its value compared with the number gives the labels "yes" and "no").
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.labels import read_label_table
from ..data.proteins import load_heldout
from ..device import pick_device
from ..domains import Domain, domain_from_config
from ..errors import UserError
from ..guidance.predictor import (
    META,
    PREDICTOR_PRESETS,
    SHIFTS,
    Budget,
    NoisyInputs,
    Predictor,
    PredictorConfig,
    fit,
    guidance_refusal,
    held_out_quality,
    save_predictor,
)
from ..guidance.rewards import REWARDS, parse_reward, reward_forms
from ..run import LoadedRun, load_run
from ..rundir import PROTEIN_SPLIT
from .args import SEED, log, number, positive_int

YES, NO = "yes", "no"  # the labels a property with a threshold gives


@dataclass
class Labelled:
    """Training and held-out records (ids [n, L]) with their label indices into `names`."""

    names: list[str]
    train_x: torch.Tensor
    train_y: torch.Tensor
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor
    default_target: str | None
    source: dict


OPERATORS = {">=": torch.ge, "<=": torch.le, ">": torch.gt, "<": torch.lt}


def parse_property(spec: str, domain: Domain):
    """(reward, operator, threshold) of `PROPERTY>=NUMBER` (or <=, >, <); PROPERTY is a reward spec."""
    match = re.fullmatch(r"(.+)(>=|<=|>|<)([^<>=]*)", spec.strip())
    if match is None:
        raise UserError(f"--property {spec}: write PROPERTY>=NUMBER (or <=, >, <), e.g. charge>=5 or gravy>=0")
    name, op, number_text = match.groups()
    try:
        threshold = float(number_text)
    except ValueError:
        raise UserError(f"--property {spec}: threshold {number_text.strip()!r} is not a number") from None
    if name.partition(":")[0].strip() not in REWARDS:
        raise UserError(f"--property {spec}: unknown property {name!r}; use one of {', '.join(reward_forms())}")
    try:
        reward = parse_reward(name.strip())
    except UserError as e:  # the reward module names its own flag; this command's is --property
        raise UserError(str(e).replace("--reward", "--property", 1)) from None
    refusal = reward.refusal(domain.name)
    if refusal is not None:
        raise UserError(refusal.replace("--reward", "--property", 1))
    return reward, op, threshold


def property_labels(spec: str, domain: Domain) -> Labelled:
    """Each record labelled "yes" where its property passes the threshold, "no" elsewhere."""
    reward, op, threshold = parse_property(spec, domain)
    train, heldout = records_of(domain, "--property")
    labels = []
    for ids in (train, heldout):
        values = reward(domain.decode(ids)[0])
        labels.append(OPERATORS[op](values, threshold).long())  # index 1 = "yes" in sorted ["no", "yes"]
    for where, y in (("training", labels[0]), ("held-out", labels[1])):
        if y.min() == y.max():
            label = YES if y[0] else NO
            raise UserError(
                f"--property {spec}: every {where} record is '{label}'; choose a threshold that splits them"
            )
    return Labelled([NO, YES], train, labels[0], heldout, labels[1], YES, {"property": spec})


def table_labels(path: str, domain: Domain, run_dir: Path) -> Labelled:
    """Labels from `record id <TAB> label` lines; records the table does not name are left out."""
    if not (run_dir / PROTEIN_SPLIT).is_file():
        raise UserError(f"--labels {path}: records have ids in FASTA runs only; {run_dir} is a {domain.name} run")
    if not Path(path).is_file():
        raise UserError(f"--labels {path}: no such file")
    table = read_label_table(path)
    train, heldout = records_of(domain, "--labels")
    train_ids = json.loads((run_dir / PROTEIN_SPLIT).read_text())["train_ids"]
    heldout_ids, _ = load_heldout(run_dir, domain.max_residues)
    names = sorted({label for label, _ in table.values()})
    if len(names) < 2:
        raise UserError(f"--labels {path}: a predictor needs at least two labels; the table has {names}")
    parts = []
    for ids, x in ((train_ids, train), (heldout_ids, heldout)):
        keep = [k for k, name in enumerate(ids) if name in table]
        y = torch.tensor([names.index(table[ids[k]][0]) for k in keep], dtype=torch.long)
        parts.append((x[keep], y))
    for where, (x, _) in zip(("training", "held-out"), parts, strict=True):
        if len(x) == 0:
            raise UserError(f"--labels {path}: names none of {run_dir}'s {where} records")
    (tx, ty), (hx, hy) = parts
    return Labelled(names, tx, ty, hx, hy, None, {"labels": str(Path(path).resolve())})


def records_of(domain: Domain, flag: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's training and held-out records (ids), checked against the data the split was made from."""
    train, heldout, _ = domain.reload()
    if not isinstance(train, torch.Tensor):
        raise UserError(f"{flag}: this run trains on a generated stream; a predictor needs a fixed set of records")
    return train, heldout


def cmd_train_predictor(args) -> int:
    device = pick_device(args.device)
    loaded = load_run(args.run, device="cpu")
    refusal = guidance_refusal(loaded.objective)
    if refusal is not None:
        raise UserError(f"{args.run}: {refusal}")
    out = Path(args.out)
    if (out / META).exists():
        raise UserError(f"--out {out}: a predictor is already there; choose another --out")
    domain = domain_from_config(loaded.config.data, loaded.run_dir)
    labelled = (
        property_labels(args.property, domain)
        if args.property is not None
        else table_labels(args.labels, domain, loaded.run_dir)
    )
    predictor = Predictor(predictor_config(loaded, labelled, args.preset)).to(device)
    process, schedule = loaded.objective.process, loaded.objective.schedule
    train = NoisyInputs(labelled.train_x.to(device), labelled.train_y.to(device), process, schedule)
    heldout = NoisyInputs(labelled.heldout_x.to(device), labelled.heldout_y.to(device), process, schedule)
    seconds = None if args.time_budget is None else args.time_budget * 60
    log(f"training a predictor of {describe_source(labelled)} on {len(train.x0)} records of {args.run}")
    with tqdm(total=None if seconds else args.steps, disable=args.quiet, file=sys.stderr, unit="step") as bar:
        training = fit(
            predictor, train, Budget(args.steps, seconds), batch_size=args.batch_size, lr=args.lr, seed=args.seed,
            progress=bar,
        )  # fmt: skip
    frequencies = torch.bincount(labelled.train_y, minlength=len(labelled.names)).double() / len(labelled.train_y)
    quality = held_out_quality(predictor, heldout, frequencies, seed=args.seed)
    meta = {
        "run": str(loaded.run_dir.resolve()),
        "labels": labelled.names,
        "default_target": labelled.default_target,
        "source": labelled.source,
        "records": {
            "train": label_counts(labelled, labelled.train_y),
            "heldout": label_counts(labelled, heldout.labels),
        },
        "training": {**training, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr},
        "heldout": quality,
    }
    save_predictor(predictor.cpu(), out, meta)
    print(json.dumps({"predictor": str(out), **meta}) if args.json else summary_text(out, meta))
    return 0


def predictor_config(loaded: LoadedRun, labelled: Labelled, preset: str) -> PredictorConfig:
    process = loaded.objective.process
    return PredictorConfig(
        states=process.num_states,
        classes=len(labelled.names),
        max_len=labelled.train_x.shape[1],
        mask_id=process.mask_id,
        support=process.support,
        pad_id=loaded.config.net.pad_id,
        **PREDICTOR_PRESETS[preset],
    )


def label_counts(labelled: Labelled, y: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(y.cpu(), minlength=len(labelled.names)).tolist()
    return dict(zip(labelled.names, counts, strict=True))


def describe_source(labelled: Labelled) -> str:
    if "property" in labelled.source:
        return f"the property {labelled.source['property']}"
    return f"the labels of {labelled.source['labels']} ({', '.join(labelled.names)})"


def summary_text(out: Path, meta: dict) -> str:
    """The held-out table: how well the predictor reads the label at each noise level."""
    counts = ", ".join(f"{name} {n}" for name, n in meta["records"]["heldout"].items())
    lines = [
        f"predictor: {out} ({meta['training']['steps']} steps, {meta['training']['seconds']:.0f} s)",
        f"held-out records: {counts}",
        "    t  masked  accuracy  log-loss (nats)  training labels' frequencies alone",
    ]
    for row in meta["heldout"]:
        lines.append(
            f"{row['t']:5.2f}  {row['masked']:6.1%}  {row['accuracy']:8.3f}  {row['log_loss']:15.4f}"
            f"  {row['prior_log_loss']:.4f}"
        )
    target = meta["default_target"] or meta["labels"][0]
    lines.append(f"sample with it: ddlm sample {meta['run']} --predictor {out} --target {target} --guidance 1")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train-predictor",
        help="train a predictor of a label from noisy inputs, for predictor guidance (ddlm sample --predictor)",
        description="Train p(label | x_t) on the run's records corrupted by its own forward process, so that "
        "`ddlm sample RUN --predictor OUT --target LABEL` steers sampling towards LABEL (Nisonoff et al. 2024).",
    )
    p.add_argument("run", help="run directory (sedd or mdlm, absorbing)")
    p.add_argument("--out", required=True, help="the predictor's folder (new): predictor.safetensors + predictor.json")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", metavar="FILE.tsv", help="record id <TAB> label, one per line (FASTA runs)")
    source.add_argument(
        "--property",
        metavar="SPEC",
        help="label each record yes/no by a property and a threshold, e.g. charge>=5, gravy>=0, 'regex:KR.G>=1'",
    )
    p.add_argument("--steps", type=positive_int, default=1000, help="optimiser steps (1000)")
    p.add_argument("--time-budget", type=number(float, 0, 1e7, low_open=True), metavar="MIN", help="minutes instead")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=number(float, 0, 10, low_open=True), default=1e-3)
    p.add_argument("--preset", choices=sorted(PREDICTOR_PRESETS), default="small", help="predictor size (small)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_predictor)


# --- the sampling flags (ddlm sample / infill) ------------------------------------------------------
def add_predictor_arguments(parser) -> None:
    """`--predictor DIR --target LABEL --guidance GAMMA --guide-approx exact|taylor` for a sampling command."""
    parser.add_argument("--predictor", metavar="DIR", help="steer with this predictor (ddlm train-predictor)")
    parser.add_argument("--target", metavar="LABEL", help="with --predictor: the label to steer towards")
    parser.add_argument(
        "--guidance",
        type=number(float, 0, 1e3),
        metavar="GAMMA",
        help="with --predictor: strength, each rate times (p(label | changed) / p(label | now))^GAMMA; "
        "0 unguided, 1 (default) the conditional law with an exact predictor",
    )
    parser.add_argument(
        "--guide-approx",
        choices=SHIFTS.names(),
        help="with --predictor: exact (default; every single-site change scored, masked x residues predictor "
        "rows per call) or taylor (one gradient per call)",
    )
