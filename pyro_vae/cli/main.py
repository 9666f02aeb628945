"""The `pyro-vae` command (also `python -m pyro_vae`) and the parser the examples share.

Mistakes a user can make end in one line on stderr and exit code 2, never a traceback.
"""

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pyro_vae.data.files import is_data_file
from pyro_vae.data.images import BINARIZATIONS, DATASETS
from pyro_vae.devices import DEVICES
from pyro_vae.errors import Stopped, TrainingInterrupted, UserError, stop_on_signals
from pyro_vae.infer.compiled import AUTO_COMPILE_STEPS, COMPILE_CHOICES
from pyro_vae.infer.em import E_RULES
from pyro_vae.infer.objectives import OBJECTIVES
from pyro_vae.infer.posterior_sampling import KERNELS
from pyro_vae.infer.schedules import FIXED_SCHEDULES, SCHEDULES
from pyro_vae.memory import keep_freed_memory
from pyro_vae.models import model_class
from pyro_vae.models.code_priors import CODE_PRIOR_HELP, check_code_prior_spec
from pyro_vae.models.codebook import CODEBOOK_UPDATES
from pyro_vae.models.corruption import CORRUPT_HELP, parse_corruption
from pyro_vae.models.likelihoods import (
    GAUSSIAN_SCALE_HELP,
    LIKELIHOOD_HELP,
    check_likelihood_spec,
    parse_gaussian_scale,
)
from pyro_vae.models.networks import ACTIVATIONS, ARCHS, check_network_spec
from pyro_vae.models.priors import PRIOR_HELP, check_prior_spec
from pyro_vae.plugins import from_run_folder, trusting
from pyro_vae.runs.code_prior import TRAIN_CODES
from pyro_vae.runs.config import ALGOS, PART_FIELDS, SEEDS, TrainConfig, check_parts
from pyro_vae.runs.config_file import read_config_file
from pyro_vae.runs.folder import CHECKPOINTS
from pyro_vae.runs.limits import is_out_of_memory, memory_detail

__all__ = [
    "main",
    "command_parser",
    "train_parser",
    "parse_train_config",
    "run_cli",
    "add_train_arguments",
    "add_compare_arguments",
    "compare_parser",
    "run_compare",
]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` that ends every flag's text with its default, where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or not action.option_strings or default is None or default is False:
            return text
        if default is argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            return text
        while isinstance(default, (list, tuple)) and len(default) == 1:  # compare's [["vae"]]
            default = default[0]
        if isinstance(default, (list, tuple)):
            default = " ".join(map(str, default))
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error prints a single line (not the usage block) and exits 2, and
    ``--help`` shows every default.

    Flags must be spelled out (no abbreviations), so that ``--resume`` can tell exactly which
    flags a user gave.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, check: Callable[[float], bool], what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{what}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a{what}")
        return value

    return parse


positive_int = _number(int, lambda v: v > 0, " positive integer")
non_negative_int = _number(int, lambda v: v >= 0, " non-negative integer")
positive_float = _number(float, lambda v: v > 0, " positive number")
non_negative_float = _number(float, lambda v: v >= 0, " non-negative number")
open_unit_float = _number(float, lambda v: 0 < v < 1, " number in (0, 1)")
seed_int = _number(int, lambda v: v in SEEDS, f" seed (an integer in 0..{SEEDS[-1]})")
TRUST_HELP = (
    "import the plugins that the folder being opened names even when they lie inside it "
    "(its own Python files): only for a folder whose code you have read (docs/reliability.md)"
)


def spec_type(parse: Callable[[str], object]):
    """An argparse type that validates a spec string with ``parse`` and keeps the string."""

    def check(text: str) -> str:
        try:
            parse(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


def dataset_name(text: str) -> str:
    """A built-in data set's name or a data file's path (``--dataset``)."""
    if text in DATASETS or is_data_file(text):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(DATASETS)}, or give a .npy, .npz or "
        ".pt file)"
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a training run; defaults come from :class:`TrainConfig`, then from
    ``--config FILE``, then from the flags given."""
    d = TrainConfig()
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="settings from a TOML recipe (see recipes/) or a run's config.json; flags given "
        "on the command line override them",
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        type=dataset_name,
        default=d.dataset,
        metavar="NAME|FILE",
        help=f"{' | '.join(DATASETS)}, or your own data: path.npy|.npz|.pt holding an (N, ...) "
        "float array ('train' and 'test' arrays in a .npz/.pt), used as it is unless "
        "--binarize is given (docs/own-model.md)",
    )
    data.add_argument(
        "--test-dataset",
        default=None,
        metavar="FILE",
        help="the test set of --dataset FILE (default: the file's 'test', else a tenth of it)",
    )
    data.add_argument(
        "--image-shape",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="N",
        help="H W: the points of --dataset FILE are images (found alone for (N, H, W) data)",
    )
    data.add_argument(
        "--data-dir",
        default=None,
        help="folder holding MNIST/raw or FashionMNIST/raw "
        "(default: $PYRO_VAE_DATA_DIR, else a download cache)",
    )
    data.add_argument(
        "--binarize",
        choices=BINARIZATIONS,
        default=d.binarize,
        help="dynamic: resample pixels every epoch (default)",
    )
    data.add_argument(
        "--val-size",
        type=non_negative_int,
        default=d.val_size,
        help="training images held out for validation",
    )
    data.add_argument(
        "--seq-len",
        type=int,
        default=d.seq_len,
        metavar="T",
        help="frames per sequence of a sequence data set (moving-mnist)",
    )
    data.add_argument(
        "--limit-train",
        type=positive_int,
        default=None,
        metavar="N",
        help="train on N images (a subsample fixed by --seed; default: all), for quick runs",
    )
    data.add_argument(
        "--limit-test",
        type=positive_int,
        default=None,
        metavar="N",
        help="evaluate on N test images (a subsample fixed by --seed; default: all)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        type=spec_type(model_class),
        default=d.model,
        metavar="SPEC",
        help="vae: variational autoencoder; ae: autoencoder (point-mass guide, flat prior); "
        "vqvae: VQ-VAE (discrete codes); tdvae: TD-VAE (sequences, --dataset moving-mnist); "
        "or a model of your own, module:Class or path/to/file.py:Class: a LatentModel, or any "
        "nn.Module with model(x) and guide(x) methods ('file.py:VAE(z_dim=10)'; it reads none "
        "of the model flags below; docs/own-model.md)",
    )
    model.add_argument(
        "--z-dim", type=positive_int, default=d.z_dim, help="size of the latent code z"
    )
    model.add_argument(
        "--hidden-dims",
        type=positive_int,
        nargs="+",
        default=list(d.hidden_dims),
        metavar="H",
        help="encoder hidden widths; the decoder mirrors them",
    )
    model.add_argument(
        "--likelihood",
        type=spec_type(check_likelihood_spec),
        default=d.likelihood,
        metavar="SPEC",
        help=LIKELIHOOD_HELP,
    )
    model.add_argument(
        "--gaussian-scale",
        type=spec_type(parse_gaussian_scale),
        default=d.gaussian_scale,
        metavar="MODE",
        help=f"scale of the gaussian likelihood: {GAUSSIAN_SCALE_HELP}",
    )
    model.add_argument(
        "--prior",
        type=spec_type(check_prior_spec),
        default=d.prior,
        metavar="SPEC",
        help=PRIOR_HELP,
    )
    model.add_argument("--arch", choices=ARCHS, default=d.arch, help="encoder/decoder networks")
    model.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        default=d.activation,
        help="hidden nonlinearity of --arch mlp (Burda et al. 2016: tanh)",
    )
    for kind in ("encoder", "decoder"):
        model.add_argument(
            f"--{kind}",
            type=spec_type(lambda spec, kind=kind: check_network_spec(spec, kind)),
            default=None,
            metavar="SPEC",
            help=f"your own {kind} instead of --arch's: module:Class or "
            "path/to/file.py:Class, optionally with (key=value, ...)",
        )
    model.add_argument(
        "--sparsity",
        type=open_unit_float,
        default=None,
        metavar="RHO",
        help="sparse autoencoder (--model ae): sigmoid codes with target mean activation RHO",
    )
    model.add_argument(
        "--sparsity-weight",
        type=positive_float,
        default=d.sparsity_weight,
        metavar="BETA",
        help="weight of the sparsity penalty BETA * sum_j KL(RHO || rho_hat_j) per data point; "
        "the default was chosen by measurement on MNIST: every unit within 0.02 of RHO 0.05 "
        "after 5 epochs (docs/autoencoders.md)",
    )
    model.add_argument(
        "--corrupt",
        type=spec_type(parse_corruption),
        default=None,
        metavar="SPEC",
        help=f"denoising: corrupt what the encoder sees in training: {CORRUPT_HELP}",
    )
    td = parser.add_argument_group("TD-VAE (--model tdvae --dataset moving-mnist)")
    td.add_argument(
        "--max-jump",
        type=int,
        default=d.max_jump,
        metavar="J",
        help="train on time pairs t1 < t2 at most J frames apart",
    )
    td.add_argument(
        "--time-pairs",
        type=int,
        default=d.time_pairs,
        metavar="P",
        help="time pairs drawn per sequence in each step (the belief LSTM runs once for all)",
    )
    vq = parser.add_argument_group("VQ-VAE (--model vqvae; see docs/vqvae.md)")
    vq.add_argument(
        "--codebook-size", type=int, default=d.codebook_size, metavar="K", help="codes K"
    )
    vq.add_argument(
        "--code-dim", type=int, default=d.code_dim, metavar="D", help="size of each code vector"
    )
    vq.add_argument(
        "--commitment",
        type=non_negative_float,
        default=d.commitment,
        metavar="BETA",
        help="weight of the commitment loss",
    )
    vq.add_argument(
        "--codebook-update",
        choices=CODEBOOK_UPDATES,
        default=d.codebook_update,
        help="loss: codebook loss; ema: moving averages of the assigned encoder outputs",
    )
    vq.add_argument(
        "--restart-codes",
        action=argparse.BooleanOptionalAction,
        default=d.restart_codes,
        help="restart codes no encoder output chose for about 460 updates",
    )
    vq.add_argument(
        "--grid-halvings",
        type=positive_int,
        default=d.grid_halvings,
        metavar="N",
        help="--arch conv: stride-2 layers between the image and the code grid; 2: a 7x7 grid "
        "on 28x28 images, 3: 4x4, 4: 2x2 (fewer positions cost fewer nats under a prior)",
    )
    train = parser.add_argument_group("training")
    train.add_argument(
        "--elbo",
        choices=OBJECTIVES,
        default=d.elbo,
        help="trace: Trace_ELBO; meanfield: analytic KL; iwae: importance weighted",
    )
    train.add_argument(
        "--num-particles",
        type=positive_int,
        default=d.num_particles,
        help="samples of z per data point in the objective (iwae: its K)",
    )
    train.add_argument("--beta", type=positive_float, default=d.beta, help="KL weight")
    train.add_argument(
        "--kl-warmup",
        type=non_negative_float,
        default=d.kl_warmup,
        metavar="EPOCHS",
        help="ramp the KL weight linearly up to beta",
    )
    train.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help="passes over the training set"
    )
    train.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help="data points per gradient step (per process under torchrun)",
    )
    train.add_argument("--lr", type=positive_float, default=d.lr, help="Adam's learning rate")
    train.add_argument(
        "--lr-schedule",
        choices=SCHEDULES,
        default=d.lr_schedule,
        help="burda: 3^i epochs at lr * 10^(-i/7), i = 0..7 (3280 epochs); cosine: to 0 over "
        "--epochs; plateau: halve after 10 epochs without a better validation ELBO",
    )
    train.add_argument(
        "--early-stopping",
        type=positive_int,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a better validation ELBO (needs --val-size; "
        "best.pt keeps the best epoch whenever there is a validation set)",
    )
    train.add_argument(
        "--seed", type=seed_int, default=d.seed, help="seeds data order, binarization and draws"
    )
    train.add_argument("--device", choices=DEVICES, default=d.device, help="cuda: train on the GPU")
    train.add_argument(
        "--clip-norm", type=positive_float, default=None, help="clip the gradient's total norm"
    )
    train.add_argument(
        "--compile",
        choices=COMPILE_CHOICES,
        default=d.compile,
        help="on: SVI and EM steps by a graph of the loss and its gradients, traced once per "
        "minibatch shape and compiled (a few seconds, said once); off: eager steps; auto: on "
        f"for SVI or EM on the CPU with --epochs x minibatches >= {AUTO_COMPILE_STEPS:,} "
        "(where compiling pays), decided when the run starts and recorded",
    )
    train.add_argument(
        "--algo",
        choices=ALGOS,
        default=d.algo,
        help="svi: joint steps; em: variational EM; mcem: Monte Carlo EM (no encoder)",
    )
    em = parser.add_argument_group("variational EM (--algo em)")
    em.add_argument(
        "--e-rule",
        choices=E_RULES,
        default=d.e_rule,
        help="when an E-step stops: fixed K steps, converge (He et al. 2019), "
        "aggressive (converge until validation MI stops improving, then SVI); an epoch costs "
        "about 0.7 x (encoder steps per minibatch + 1) SVI epochs: converge took 20x SVI's "
        "time in docs/svi-vs-em.md, fixed --e-steps 2 about 2x",
    )
    em.add_argument(
        "--e-steps",
        type=positive_int,
        default=d.e_steps,
        metavar="K",
        help="fixed: encoder steps per decoder step",
    )
    em.add_argument(
        "--e-check", type=positive_int, default=d.e_check, help="converge: window of steps"
    )
    em.add_argument("--e-max", type=positive_int, default=d.e_max, help="converge: step cap")
    em.add_argument("--patience", type=positive_int, default=d.patience, help="aggressive: epochs")
    em.add_argument("--e-lr", type=positive_float, default=None, help="default: --lr")
    em.add_argument("--m-lr", type=positive_float, default=None, help="default: --lr")
    mc = parser.add_argument_group("Monte Carlo EM (--algo mcem; see docs/mcem.md)")
    mc.add_argument("--mc-kernel", choices=KERNELS, default=d.mc_kernel, help="MCMC kernel")
    mc.add_argument(
        "--mc-warmup", type=non_negative_int, default=d.mc_warmup, help="E-step warm-up iterations"
    )
    mc.add_argument(
        "--mc-samples", type=positive_int, default=d.mc_samples, help="E-step samples kept"
    )
    mc.add_argument(
        "--mc-leapfrog", type=positive_int, default=d.mc_leapfrog, help="HMC leapfrog steps"
    )
    mc.add_argument(
        "--mc-target-accept",
        type=positive_float,
        default=d.mc_target_accept,
        help="acceptance rate the step size is adapted to",
    )
    mc.add_argument(
        "--mc-eval-warmup",
        type=non_negative_int,
        default=d.mc_eval_warmup,
        help="evaluation chains' warm-up (they fit the proposal of the IWAE estimate)",
    )
    mc.add_argument(
        "--mc-eval-samples",
        type=positive_int,
        default=d.mc_eval_samples,
        help="evaluation chains' samples",
    )
    ev = parser.add_argument_group("held-out metrics during training (see docs/evaluation.md)")
    ev.add_argument(
        "--eval-every",
        type=non_negative_int,
        default=d.eval_every,
        metavar="EPOCHS",
        help="log test IWAE, active units and MI every EPOCHS epochs and at the end (0: never)",
    )
    ev.add_argument(
        "--eval-iw-samples",
        type=positive_int,
        default=d.eval_iw_samples,
        metavar="K",
        help="importance samples of the test IWAE logged during training",
    )
    ev.add_argument(
        "--eval-limit",
        type=positive_int,
        default=d.eval_limit,
        metavar="N",
        help="test images those metrics are estimated on",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="run folder (default: runs/<date>-<time>-<algo>)")
    out.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out folder")
    out.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    out.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=d.checkpoint_every,
        metavar="EPOCHS",
        help="save checkpoint.pt every EPOCHS epochs (and after the last, and on Ctrl-C)",
    )
    out.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log every metric, reconstructions and samples to RUN/tensorboard "
        "(pip install 'pyro-vae[tensorboard]')",
    )
    out.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a run from its checkpoint with its saved settings (--epochs may grow)",
    )
    out.add_argument("--trust-plugins", action="store_true", help=TRUST_HELP)


def train_parser(prog: str | None = None, description: str | None = None) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description)
    add_train_arguments(parser)
    return parser


def config_from_args(
    args: argparse.Namespace, argv: Sequence[str] | None = None, algo: str = "svi"
) -> TrainConfig:
    """The config the flags ask for: defaults, overridden by ``--config FILE``, overridden by
    the flags given in ``argv`` (default ``sys.argv``); with ``--resume``, the run's saved
    config, checked against the flags given."""
    given = given_fields(argv)
    apply_config_file(args, given)
    fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    fields["hidden_dims"] = tuple(fields["hidden_dims"])
    if fields.get("image_shape") is not None:
        fields["image_shape"] = tuple(fields["image_shape"])
    if is_data_file(fields["dataset"]) and "binarize" not in given and args.config is None:
        fields["binarize"] = "none"  # your own data are used as they are
    fields.setdefault("algo", algo)
    config = TrainConfig(**fields)
    if config.resume is None:
        return config
    from pyro_vae.runs.resume import resume_config

    return resume_config(config, given)


def given_fields(argv: Sequence[str] | None = None) -> set[str]:
    """The :class:`TrainConfig` fields whose flags appear in ``argv`` (default ``sys.argv``)."""
    argv = sys.argv[1:] if argv is None else argv
    flags = {a.split("=")[0].replace("--no-", "--", 1) for a in argv}  # --no-restart-codes
    return {name for name in TrainConfig.__dataclass_fields__ if _flag(name) in flags}


def apply_config_file(args: argparse.Namespace, given: set[str], skip: Sequence[str] = ()) -> None:
    """Fill ``args`` from ``args.config`` (a recipe or a run's config.json), except the
    settings ``given`` on the command line and those in ``skip``. The parts the file names are
    resolved as the folder of the file provides them: a plugin inside that folder is refused
    unless ``--trust-plugins`` (docs/reliability.md, threat model)."""
    if args.config is None:
        return
    if args.resume is not None:
        raise UserError("--config starts a new run; --resume continues one with its own settings")
    taken = {
        name: value
        for name, value in read_config_file(args.config).items()
        if name not in given and name not in skip
    }
    folder = Path(args.config).parent
    with trusting(args.trust_plugins), from_run_folder(folder, f"the folder of --config {folder}"):
        check_parts({name: spec for name, spec in taken.items() if name in PART_FIELDS})
    for name, value in taken.items():
        setattr(args, name, list(value) if name == "hidden_dims" else value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_train_config(
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
    algo: str = "svi",
) -> TrainConfig:
    """Parse training flags (as the examples do) into a :class:`TrainConfig`; ``algo`` is the
    default of ``--algo``. Like argparse on a bad flag, a configuration that cannot be resumed
    (``--resume`` of a folder that is no run, or a flag that conflicts with the saved run) ends
    the program with one line and exit code 2."""
    parser = train_parser(prog, description)
    parser.set_defaults(algo=algo)
    args = parser.parse_args(argv)
    try:
        return config_from_args(args, argv)
    except UserError as exc:
        parser.exit(exc.exit_code, f"{parser.prog}: error: {exc}\n")


def run_cli(job: Callable[[], object]) -> int:
    """Run ``job``; a :class:`UserError` becomes one line on stderr and its exit code (2 for
    bad input, 3 for a diverged run, 130 for Ctrl-C, 143 for SIGTERM and 138 for SIGUSR1,
    which stop a job as Ctrl-C does: :func:`pyro_vae.errors.stop_on_signals`). Freed memory is
    kept for reuse (:func:`pyro_vae.memory.keep_freed_memory`: evaluation's chunks take no page
    faults)."""
    keep_freed_memory()
    try:
        with stop_on_signals():
            job()
    except TrainingInterrupted as exc:  # asked for, not an error: what was saved, how to go on
        print(f"pyro-vae: {exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"pyro-vae: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Stopped as exc:  # outside a training loop: nothing to save
        print(f"pyro-vae: stopped by {exc.name}", file=sys.stderr)
        return exc.exit_code
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        print(
            f"pyro-vae: error: out of memory ({memory_detail(exc)}); choose smaller sizes "
            "(--batch-size, --num-particles, --z-dim, --hidden-dims, --iw-samples)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # outside a training loop: nothing to save
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130
    return 0


def _train(config: TrainConfig) -> None:
    from pyro_vae import distributed
    from pyro_vae.runs.fit import fit, summary_table

    run = fit(config)
    if distributed.is_main():  # under torchrun, one summary
        print(summary_table(run))


def algo_names(text: str) -> list[str]:
    """``svi,em,mcem`` -> ["svi", "em", "mcem"], each checked against ``--algo``'s choices."""
    names = [name for name in text.split(",") if name]
    for name in names:
        if name not in ALGOS:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {name!r} (choose from {', '.join(ALGOS)})"
            )
    return names


def model_names(text: str) -> list[str]:
    """``ae,vae`` -> ["ae", "vae"], each checked as a ``--model`` spec (commas inside a
    spec's parentheses, ``'file.py:VAE(z_dim=4, hidden_dim=32)'``, stay in it)."""
    names = [name.strip() for name in re.split(r",(?![^()]*\))", text) if name.strip()]
    check = spec_type(model_class)
    return [check(name) for name in names]


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """The training flags, with ``--model``, ``--algo`` and ``--e-rule`` taking lists: one run
    per model and algorithm, and one EM run per E-step rule. ``parser`` must be made with
    ``conflict_handler="resolve"`` (the list flags replace the single-valued ones)."""
    add_train_arguments(parser)
    parser.add_argument(
        "--model",
        "--models",
        type=model_names,
        nargs="+",
        default=[[TrainConfig().model]],
        metavar="MODEL",
        help="models to compare, space- or comma-separated: vae ae (default: vae)",
    )
    parser.add_argument(
        "--algo",
        "--algos",
        type=algo_names,
        nargs="+",
        default=[["svi", "em"]],
        metavar="ALGO",
        help="algorithms to compare, space- or comma-separated: svi em mcem (default: svi em)",
    )
    parser.add_argument(
        "--e-rule",
        choices=E_RULES,
        nargs="+",
        default=[TrainConfig().e_rule],
        help="one EM run per rule",
    )
    parser.add_argument(
        "--out", default=None, help="comparison folder (default: runs/<date>-<time>-compare)"
    )


def compare_parser(prog: str | None = None, description: str | None = None) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description, conflict_handler="resolve")
    add_compare_arguments(parser)
    return parser


def run_compare(args: argparse.Namespace, argv: Sequence[str] | None = None) -> None:
    """Train and compare the runs ``compare_parser``'s ``args`` describe; print the table.

    ``--config FILE`` fills the settings the flags in ``argv`` (default ``sys.argv``) leave
    out, except the lists compare takes itself (models, algorithms, E-step rules, folder)."""
    from pyro_vae.cli.compare import compare, compare_configs

    apply_config_file(args, given_fields(argv), skip=("model", "algo", "e_rule", "out"))
    result = compare(compare_configs(args), args.out)
    print(result.markdown)
    print(f"figure: {result.figure}")


def _evaluate(args: argparse.Namespace) -> None:
    from pyro_vae.cli.posthoc import eval_table, evaluate_run

    result = evaluate_run(
        args.run_dir,
        args.iw_samples,
        args.limit,
        args.data_dir,
        args.corrupt,
        args.checkpoint,
        progress=not args.quiet,
        out=args.out,
        device=args.device,
    )
    print(eval_table(result))
    if (Path(args.run_dir) / "priors").is_dir():  # a VQ-VAE with priors fitted to its codes
        from pyro_vae.runs.code_prior import prior_table

        print(
            f"\npriors fitted with pyro-vae fit-prior (full test set):\n{prior_table(args.run_dir)}"
        )


def _plot(args: argparse.Namespace) -> None:
    from pyro_vae.cli.posthoc import plot_run

    for path in plot_run(
        args.run_dir, args.data_dir, args.checkpoint, args.out, args.device, args.temperature
    ):
        print(path)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device cpu | cuda`` of a command on a finished run (any run, wherever it trained)."""
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the model runs (a run trained on either loads on either)",
    )


def add_posthoc_commands(commands) -> None:
    """``evaluate`` and ``plot``: commands on a finished run folder."""
    evaluate = commands.add_parser("evaluate", help="test log-likelihood and latent diagnostics")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument(
        "--iw-samples",
        type=positive_int,
        default=5000,
        metavar="K",
        help="importance samples per test image for log p(x) ~ L_K; 5000 is the literature's "
        "setting, and the time grows with K (the full MNIST test set: 11 s on an H200 GPU, "
        "5-10 minutes on 2 CPU cores); 100-1000 for a quick look",
    )
    evaluate.add_argument(
        "--limit", type=positive_int, default=None, metavar="N", help="first N test images only"
    )
    evaluate.add_argument(
        "--corrupt",
        type=spec_type(parse_corruption),
        default=None,
        metavar="SPEC",
        help=f"also reconstruct from corrupted test images: {CORRUPT_HELP}",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    plot = commands.add_parser("plot", help="regenerate a run's figures")
    plot.add_argument("run_dir", metavar="RUN_DIR")
    plot.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        metavar="T",
        help="a VQ-VAE's fitted code priors sampled with their logits divided by T "
        "(samples-NAME-tT.png; T < 1: sharper, less varied; default 1, the fitted prior)",
    )
    for sub in (evaluate, plot):
        sub.add_argument("--data-dir", default=None, help="override the run's data folder")
        add_device_argument(sub)
        sub.add_argument(
            "--checkpoint",
            choices=tuple(CHECKPOINTS),
            default="last",
            help="last: checkpoint.pt; best: best.pt, the best validation ELBO (--val-size runs)",
        )
        sub.add_argument(
            "--out",
            default=None,
            metavar="DIR",
            help="write the results here instead of into RUN_DIR (which is then only read)",
        )
        sub.add_argument("--trust-plugins", action="store_true", help=TRUST_HELP)


def add_fit_prior_command(commands) -> None:
    """``fit-prior``: stage 2 of a VQ-VAE run (:mod:`pyro_vae.cli.fit_prior`)."""
    fit_prior = commands.add_parser(
        "fit-prior", help="fit a prior over the codes of a trained VQ-VAE (stage 2)"
    )
    fit_prior.add_argument("run_dir", metavar="RUN_DIR")
    fit_prior.add_argument(
        "--prior",
        type=spec_type(check_code_prior_spec),
        nargs="+",
        default=["transformer"],
        metavar="SPEC",
        help=f"one or more of: {CODE_PRIOR_HELP}",
    )
    fit_prior.add_argument(
        "--epochs",
        type=positive_int,
        default=20,
        help="passes over the training codes (priors fitted by gradient steps; a fit "
        "checkpointed with fewer epochs continues from its checkpoint)",
    )
    fit_prior.add_argument(
        "--batch-size", type=positive_int, default=128, help="code grids per gradient step"
    )
    fit_prior.add_argument("--lr", type=positive_float, default=1e-3, help="Adam's learning rate")
    fit_prior.add_argument(
        "--lr-schedule",
        choices=FIXED_SCHEDULES,
        default="constant",
        help="the learning rate over the epochs: constant, cosine (to 0 at --epochs) or burda",
    )
    fit_prior.add_argument(
        "--train-codes",
        choices=TRAIN_CODES,
        default="binarized",
        help="fit to the codes of the training images as stage 1 saw them (binarized), or of "
        "their grey levels (codes without binarization noise; saved as NAME-grey)",
    )
    fit_prior.add_argument("--seed", type=seed_int, default=0, help="seeds the prior's training")
    fit_prior.add_argument("--data-dir", default=None, help="override the run's data folder")
    add_device_argument(fit_prior)
    fit_prior.add_argument(
        "--quiet", action="store_true", help="no per-epoch lines and no progress bars"
    )
    fit_prior.add_argument("--trust-plugins", action="store_true", help=TRUST_HELP)


def _fit_prior(args: argparse.Namespace) -> None:
    from pyro_vae.runs.code_prior import fit_code_priors, prior_table

    fit_code_priors(
        args.run_dir,
        args.prior,
        args.data_dir,
        args.device,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        quiet=args.quiet,
        lr_schedule=args.lr_schedule,
        train_codes=args.train_codes,
    )
    print(prior_table(args.run_dir))


def command_parser() -> OneLineParser:
    """The parser of the ``pyro-vae`` command and its subcommands."""
    parser = OneLineParser(prog="pyro-vae", description="Variational autoencoders in Pyro.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_arguments(
        commands.add_parser("train", help="train a model by SVI, variational EM or MCEM")
    )
    add_compare_arguments(
        commands.add_parser(
            "compare",
            help="train several algorithms or models on the same problem and compare them",
            conflict_handler="resolve",
        )
    )
    add_posthoc_commands(commands)
    add_fit_prior_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = command_parser().parse_args(argv)
    jobs = {
        "train": lambda: _train(config_from_args(args, argv)),
        "compare": lambda: run_compare(args, argv),
        "evaluate": lambda: _evaluate(args),
        "plot": lambda: _plot(args),
        "fit-prior": lambda: _fit_prior(args),
    }
    with trusting(args.trust_plugins):  # --trust-plugins: every command has it
        return run_cli(jobs[args.command])


if __name__ == "__main__":
    sys.exit(main())
