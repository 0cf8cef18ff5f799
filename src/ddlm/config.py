"""What defines a run: the typed configuration saved as RUN/config.json, and the rules it obeys.

`RunConfig.from_flags` turns `ddlm train`'s flags into a configuration and `with_data` completes it
once the data has given the tokenizer and the training length; each ends in `validate`, the one
place where combinations are checked: the generic rule (an objective's own flags only with that
objective) here, each objective's refusals in its class (`Objective.refuse`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UserError
from .networks import PRESETS, NetConfig
from .objectives import OBJECTIVES, Objective
from .processes import PROCESSES
from .rundir import CONFIG, read_json, require_run_dir, write_json
from .schedules import schedule_from_config

CONFIG_VERSION = 1


@dataclass
class TrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 200
    lr_schedule: str = "constant"  # lr_schedules.py
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    log_every: int = 25
    eval_every: int = 250
    eval_sequences: int = 256
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    precision: str = "auto"
    compile: bool = False  # torch.compile the training forward and backward (a session's choice, like precision)
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    keep_best: bool = False  # keep the EMA weights of the best validation bound (checkpoints/best.*)
    patience: int | None = None  # stop after this many evaluations without a better validation bound

    # flags that change how a run is operated, not what it computes: they apply on --resume too (the
    # held-out evaluation and the checkpoints draw no random numbers of the run's)
    OPERATIONAL = (
        "log_every", "max_bad_steps", "keep_checkpoints", "eval_every", "checkpoint_every", "keep_best", "patience"
    )  # fmt: skip
    # flags that override a default above when given
    FLAGS = ("batch_size", "lr", "warmup", "lr_schedule", "ema", "weight_decay")
    FLAGS += OPERATIONAL

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> TrainConfig:
        return cls(**{**record, "betas": tuple(record.get("betas", cls.betas))})


DEFAULT_LABEL_DROPOUT = 0.1


def label_config(args, data: dict) -> dict | None:
    """The labels part of a new run's configuration ({"dropout": p_drop}; the names come with the data),
    or None for a run without `--labels`; `--label-dropout` alone is refused."""
    dropout = getattr(args, "label_dropout", None)
    if not data.get("labels"):
        if dropout is not None:
            raise UserError("--label-dropout applies with --labels only")
        return None
    return {"dropout": DEFAULT_LABEL_DROPOUT if dropout is None else dropout}


def option_owners() -> dict[str, list[type[Objective]]]:
    """Every objective-specific flag and the objectives that take it."""
    owners: dict[str, list[type[Objective]]] = {}
    for cls in OBJECTIVES.values():
        for option in cls.options:
            owners.setdefault(option.flag, []).append(cls)
    return owners


def option_dest(flag: str) -> str:
    """The argparse attribute of a flag: --train-form -> train_form."""
    return flag.lstrip("-").replace("-", "_")


DEFAULT_SAMPLING_STEPS = 128


@dataclass
class RunConfig:
    """Everything that defines a run. Fields the data decides (tokenizer, vocab_size, net) stay None
    until `with_data`; `schedule` None means the objective's default for the process."""

    data: dict
    objective: str = "sedd"
    process: str = "absorbing"
    schedule: dict | None = None
    objective_options: dict = field(default_factory=dict)
    time_conditioning: bool | None = None  # None: the objective's default for the process
    preset: str = "small"
    dropout: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)
    tokenizer: dict | None = None
    vocab_size: int | None = None
    support: int | None = None  # tokens the process moves (a record's residues); None: all of them
    net: NetConfig | None = None
    # a distilled student's origin (`ddlm distill`): teacher, its steps, the student's steps, the rounds
    lineage: dict | None = None
    # a labelled run (`--labels`): {"names": the label vocabulary, "dropout": p_drop}; None without labels
    labels: dict | None = None
    # objective-specific flags the user gave, of any objective (not saved: a saved run has only its own)
    flags_given: dict[str, Any] = field(default_factory=dict)

    @property
    def objective_class(self) -> type[Objective]:
        return OBJECTIVES[self.objective]

    @property
    def length(self) -> int | None:
        """Positions per training sequence, once the data is known."""
        return None if self.net is None else self.net.max_len

    @property
    def label_names(self) -> list[str] | None:
        """The labels a labelled run knows, in the order of their indices (the null label is the next)."""
        return self.labels["names"] if self.labels else None

    @property
    def sampling_steps(self) -> int:
        """The reverse-process steps `ddlm sample` takes unless told: a distilled student's own count."""
        return self.lineage["steps"] if self.lineage else DEFAULT_SAMPLING_STEPS

    def validate(self) -> RunConfig:
        """Raise a UserError naming the flags for the first rule this configuration breaks."""
        owners = option_owners()
        foreign = [flag for flag in self.flags_given if self.objective_class not in owners[flag]]
        if foreign:
            takers = sorted({cls.name for flag in foreign for cls in owners[flag]})
            verb = "applies" if len(foreign) == 1 else "apply"
            raise UserError(f"{' and '.join(foreign)} {verb} to --objective {' or '.join(takers)} only")
        reason = self.objective_class.refuse(self)
        if reason is not None:
            raise UserError(reason)
        return self

    # --- from flags, from data ---------------------------------------------------------------------
    @classmethod
    def from_flags(cls, args, data: dict) -> RunConfig:
        """The configuration `ddlm train`'s flags describe (argparse namespace `args`), data not yet read."""
        objective = OBJECTIVES[args.objective]
        owners = option_owners()
        given = {f: v for f in owners if (v := getattr(args, option_dest(f))) is not None}
        options = {o.keyword: given.get(o.flag, o.default) for o in objective.options}
        options = objective.settle_options(options, args.process)
        train = TrainConfig(seed=args.seed, precision=args.precision, compile=args.compile)
        train = replace(train, **{k: getattr(args, k) for k in TrainConfig.FLAGS if getattr(args, k) is not None})
        config = cls(
            data=data,
            objective=args.objective,
            process=args.process,
            schedule={"name": args.schedule} if args.schedule else None,
            objective_options=options,
            time_conditioning=args.time_conditioning,
            preset=args.preset,
            dropout=args.dropout,
            train=train,
            flags_given=given,
            labels=label_config(args, data),
        )
        return config.validate()

    def with_data(self, domain, tokenizer) -> RunConfig:
        """The whole configuration, once the data (a `Domain`) and its tokenizer are known."""
        name = self.schedule["name"] if self.schedule else None
        complete = replace(
            self,
            tokenizer=tokenizer.config(),
            vocab_size=tokenizer.vocab_size,
            schedule=self.objective_class.schedule_config(self.process, name),
        )
        layout = domain.record_layout(tokenizer) if self.objective_class.models_length else None
        if layout is not None:  # p(x) = p(n) p(residues | n): the markers and padding are context
            complete.support = layout["support"]
        if self.labels is not None:
            names = domain.label_names()
            complete.labels = {"names": names, **self.labels}
        objective = complete.build_objective()
        vocab_in, vocab_out = objective.net_vocab
        time_conditioning = self.time_conditioning
        if time_conditioning is None:
            time_conditioning = self.objective_class.time_conditioning_default(self.process)
        complete.net = NetConfig(
            vocab_in=vocab_in,
            vocab_out=vocab_out,
            max_len=domain.length,
            time_conditioning=time_conditioning and not objective.causal,
            causal=objective.causal,
            dropout=self.dropout,
            layout=domain.layout,
            positions=domain.positions,
            pad_id=layout and layout["pad_id"],
            length_classes=layout["length_classes"] if layout else 0,
            self_conditioning=bool(self.objective_options.get("self_conditioning")),
            label_classes=len(complete.label_names or ()),
            **PRESETS[self.preset],
        )
        return complete.validate()

    def build_objective(self) -> Objective:
        process = PROCESSES[self.process](self.vocab_size, self.support)
        return self.objective_class(process, schedule_from_config(self.schedule), **self.objective_options)

    # --- RUN/config.json ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "ddlm_config_version": CONFIG_VERSION,
            "data": self.data,
            "tokenizer": self.tokenizer,
            "vocab_size": self.vocab_size,
            "support": self.support,
            "objective": self.objective,
            "process": self.process,
            "schedule": self.schedule,
            "objective_options": self.objective_options,
            "preset": self.preset,
            "net": self.net.to_dict(),
            "train": self.train.to_dict(),
            **({"lineage": self.lineage} if self.lineage else {}),
            **({"labels": self.labels} if self.labels else {}),
        }

    @classmethod
    def from_dict(cls, record: dict) -> RunConfig:
        net = NetConfig(**record["net"])
        return cls(
            data=record["data"],
            objective=record["objective"],
            process=record["process"],
            schedule=record["schedule"],
            objective_options=record.get("objective_options", {}),
            time_conditioning=net.time_conditioning,
            preset=record.get("preset", "small"),
            dropout=net.dropout,
            train=TrainConfig.from_dict(record["train"]),
            tokenizer=record["tokenizer"],
            vocab_size=record["vocab_size"],
            support=record.get("support"),  # runs before length-aware modelling have none
            net=net,
            lineage=record.get("lineage"),
            labels=record.get("labels"),  # runs without labels have none
        )

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / CONFIG, self.to_dict())

    @classmethod
    def read(cls, run_dir: str | Path) -> RunConfig:
        run_dir = require_run_dir(run_dir)
        record = read_json(run_dir / CONFIG)
        try:
            return cls.from_dict(record)
        except (KeyError, TypeError) as e:
            raise UserError(f"{run_dir / CONFIG}: not a ddlm run configuration ({type(e).__name__}: {e})") from None
