"""Every setting of a training run, in one dataclass that is saved as ``config.json``.

Defaults follow the literature: z_dim = 50 and one hidden layer of 400 units are the
architecture of Pyro's VAE example and the 50-unit stochastic layer of Burda et al. (2016);
dynamically binarized MNIST with a Bernoulli likelihood is the standard setting for reporting
log-likelihoods; Adam with lr 1e-3 and batch 128 are the usual choices for this network size.
"""

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pyro_vae.data.files import is_data_file
from pyro_vae.data.images import BINARIZATIONS, DATASETS, SEQUENCE_DATASETS
from pyro_vae.devices import DEVICES, check_device
from pyro_vae.errors import UserError
from pyro_vae.infer.compiled import COMPILE_CHOICES
from pyro_vae.infer.em import E_RULES
from pyro_vae.infer.objectives import OBJECTIVES
from pyro_vae.infer.posterior_sampling import KERNELS
from pyro_vae.infer.schedules import SCHEDULES
from pyro_vae.models import MODELS, PyroProgramModel, model_class
from pyro_vae.models.autoencoders import SPARSITY_WEIGHT
from pyro_vae.models.codebook import CODEBOOK_UPDATES
from pyro_vae.models.corruption import parse_corruption
from pyro_vae.models.likelihoods import check_likelihood_spec, parse_gaussian_scale
from pyro_vae.models.networks import ACTIVATIONS, ARCHS, check_network_spec
from pyro_vae.models.priors import check_prior_spec
from pyro_vae.models.vae import VAE
from pyro_vae.plugins import absolute_file_spec, from_run_folder, trusting
from pyro_vae.runs.config_file import COMMAND_LINE_ONLY, checked_setting
from pyro_vae.runs.limits import check_memory
from pyro_vae.runs.tensorboard import check_available as check_tensorboard

__all__ = [
    "TrainConfig",
    "ALGOS",
    "AGGRESSIVE_VAL_SIZE",
    "PART_FIELDS",
    "RECORD_DEFAULTS",
    "SEEDS",
    "check_parts",
    "unread_settings",
]

ALGOS = ("svi", "em", "mcem")
#: Training images held out for validation when ``--e-rule aggressive`` is asked for without
#: ``--val-size`` (the rule watches the mutual information on them).
AGGRESSIVE_VAL_SIZE = 1000
#: The settings that name a part by a spec (a built-in name or a plugin; pyro_vae/plugins.py).
PART_FIELDS = ("model", "likelihood", "prior", "encoder", "decoder")
#: Settings whose default changed, with what a run's record (config.json, a checkpoint) that
#: lacks them meant: a run from before ``--compile`` existed stepped eagerly.
RECORD_DEFAULTS = {"compile": "off"}
#: The seeds numpy accepts (``--seed``).
SEEDS = range(2**32)


def check_parts(specs: Mapping[str, str | None]) -> None:
    """Resolve the part specs among ``specs`` (a :data:`PART_FIELDS` name to its spec; others
    are ignored): an unknown name, a missing module or a plugin that an opened folder may not
    import is a :class:`UserError` here, before any data is read."""
    for name, spec in specs.items():
        if spec is None or name not in PART_FIELDS:
            continue
        if name == "model":
            model_class(spec)
        elif name == "likelihood":
            check_likelihood_spec(spec)
        elif name == "prior":
            check_prior_spec(spec)
        else:
            check_network_spec(spec, name)


@dataclass
class TrainConfig:
    """Settings of one training run; the command-line flags map one-to-one onto the fields."""

    algo: str = "svi"
    # data
    dataset: str = "mnist"  # mnist | fashion-mnist | moving-mnist | path.npy|.npz|.pt
    test_dataset: str | None = None  # a test set's file (a data file's own else a split of it)
    test_split: int | None = None  # points of a data file held out as its test set (recorded)
    image_shape: tuple[int, ...] | None = None  # H W (or 1 H W): a data file's points are images
    data_dir: str | None = None
    binarize: str = "dynamic"
    val_size: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    seq_len: int = 20  # frames per sequence of a sequence data set (moving-mnist)
    # model
    # model parts: a built-in name or a plugin spec (module:Class, file.py:Class, an installed
    # name; see pyro_vae/plugins.py)
    model: str = "vae"  # vae | ae | vqvae | tdvae | a LatentModel of your own
    z_dim: int = 50
    hidden_dims: tuple[int, ...] = (400,)
    likelihood: str = "bernoulli"  # bernoulli | gaussian | continuous-bernoulli | your own
    prior: str = "normal"  # normal | mog:K | vamp:K | flow:L | your own | custom (given to fit)
    arch: str = "mlp"  # mlp | conv
    activation: str = "relu"  # relu | tanh | softplus | elu: the MLPs' hidden nonlinearity
    encoder: str | None = None  # a network of your own instead of --arch's encoder
    decoder: str | None = None  # ... and decoder
    gaussian_scale: str = "pixel"  # fixed:S | global | pixel | decoder
    sparsity: float | None = None  # sparse autoencoder: target mean activation rho in (0, 1)
    sparsity_weight: float = SPARSITY_WEIGHT  # its penalty's weight beta (measured default)
    corrupt: str | None = None  # denoising: gaussian:SIGMA | salt-pepper:P | mask:P
    codebook_size: int = 512  # VQ-VAE: K codes (van den Oord et al. 2017's K and D)
    code_dim: int = 64  # D, the size of a code vector
    commitment: float = 0.25  # beta, the commitment loss's weight
    codebook_update: str = "loss"  # loss | ema (pyro_vae/models/codebook.py)
    restart_codes: bool = True  # restart dead codes at encoder outputs
    grid_halvings: int = 2  # stride-2 layers of the conv VQ-VAE: 2 -> 7x7 codes on MNIST, 3 -> 4x4
    max_jump: int = 4  # TD-VAE: largest t2 - t1 of a training time pair
    time_pairs: int = 8  # TD-VAE: time pairs per sequence in each step
    # objective and optimisation
    elbo: str = "trace"
    num_particles: int = 1
    beta: float = 1.0
    kl_warmup: float = 0.0
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | burda | cosine | plateau (pyro_vae/infer/schedules)
    early_stopping: int | None = None  # stop after this many epochs without a better val ELBO
    seed: int = 0
    device: str = "cpu"
    clip_norm: float | None = None
    # auto | on | off: SVI and EM steps by a compiled graph (infer/compiled.py); auto is
    # settled as on or off when a run is created (fit.setup) and recorded so
    compile: str = "auto"
    # variational EM (--algo em; see pyro_vae/infer/em.py)
    e_rule: str = "converge"
    e_steps: int = 5
    e_check: int = 10
    e_max: int = 100
    patience: int = 1
    e_lr: float | None = None
    m_lr: float | None = None
    # Monte Carlo EM (--algo mcem; see pyro_vae/infer/mcem.py): the E-step's MCMC chains, and the
    # chains that fit the Gaussian proposal used to evaluate a model trained without a guide
    mc_kernel: str = "hmc"
    mc_warmup: int = 10
    mc_samples: int = 5
    mc_leapfrog: int = 10
    mc_target_accept: float = 0.8
    mc_eval_warmup: int = 100
    mc_eval_samples: int = 50
    # held-out metrics during training (pyro_vae.evaluation.metrics): every eval_every epochs and
    # at the last epoch, on the first eval_limit test images with eval_iw_samples importance
    # samples
    eval_every: int = 5
    eval_iw_samples: int = 100
    eval_limit: int = 1000
    # run folder and output
    out: str | None = None
    overwrite: bool = False
    quiet: bool = False
    checkpoint_every: int = 1
    tensorboard: bool = False  # also log to RUN/tensorboard (pyro_vae/runs/tensorboard.py)
    resume: str | None = None  # a run folder to continue (see pyro_vae/runs/resume.py)
    # import the plugins that the resumed run folder names even from inside itself; given on
    # the command line only, never recorded (docs/reliability.md, threat model)
    trust_plugins: bool = False

    def validate(self, training: bool = True) -> "TrainConfig":
        """Reject inconsistent settings with a :class:`UserError`; returns self. Flags, recipes,
        a run's config.json and a checkpoint's settings all pass here before anything is
        built: types first, then values, then sizes that cannot fit in memory
        (:func:`~pyro_vae.runs.limits.check_memory`), then the parts' specs. ``training``:
        also check what only training needs (TensorBoard, CUDA, torchrun); ``False`` for a
        run that is only loaded.

        One setting is filled in rather than refused: ``--e-rule aggressive`` without
        ``--val-size`` holds out :data:`AGGRESSIVE_VAL_SIZE` training images for validation.
        """
        self._check_types()
        self._check_data_files()
        choices = {
            "dataset": DATASETS if not is_data_file(self.dataset) else (self.dataset,),
            "binarize": BINARIZATIONS,
            "elbo": OBJECTIVES,
            "algo": ALGOS,
            "e_rule": E_RULES,
            "mc_kernel": KERNELS,
            "arch": ARCHS,
            "device": DEVICES,
            "codebook_update": CODEBOOK_UPDATES,
            "activation": tuple(ACTIVATIONS),
            "lr_schedule": SCHEDULES,
            "compile": COMPILE_CHOICES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(
                    f"unknown {name} {getattr(self, name)!r}; choose from {', '.join(allowed)}"
                )
        positive = ["z_dim", "num_particles", "epochs", "batch_size", "lr", "beta"]
        positive += ["e_steps", "e_check", "e_max", "patience", "checkpoint_every"]
        positive += ["mc_samples", "mc_leapfrog", "mc_eval_samples"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive")
        if self.eval_every < 0:
            raise UserError("--eval-every must not be negative (0 turns evaluation off)")
        for name in ("eval_iw_samples", "eval_limit"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive")
        for name in ("limit_test", "eval_limit"):  # spreads over test images need two of them
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise UserError(f"--{name.replace('_', '-')} must be at least 2")
        for name in ("limit_train", "limit_test", "e_lr", "m_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive")
        if self.algo == "em" and self.e_rule == "aggressive" and self.val_size == 0:
            self.val_size = AGGRESSIVE_VAL_SIZE  # recorded in config.json; fit says so
        for flag, used in (
            ("--lr-schedule plateau", self.lr_schedule == "plateau"),
            ("--early-stopping", self.early_stopping is not None),
        ):
            if used and self.val_size == 0:
                raise UserError(
                    f"{flag} watches the validation ELBO: give --val-size N "
                    "(training images held out)"
                )
        if self.early_stopping is not None and not self.early_stopping > 0:
            raise UserError("--early-stopping must be a positive number of epochs")
        if self.tensorboard and training:
            check_tensorboard()
        if self.activation != "relu" and self.arch != "mlp":
            raise UserError(f"--activation applies to --arch mlp, not --arch {self.arch}")
        if self.mc_eval_samples < 2:
            raise UserError("--mc-eval-samples must be at least 2 (a proposal's spread needs two)")
        if min(self.mc_warmup, self.mc_eval_warmup) < 0 or not 0 < self.mc_target_accept < 1:
            raise UserError("--mc-warmup must be >= 0 and --mc-target-accept in (0, 1)")
        if self.seed not in SEEDS:
            raise UserError(f"--seed must lie in 0..{SEEDS[-1]}, got {self.seed}")
        if training and self.algo == "mcem" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("--algo mcem runs in one process; launch it without torchrun")
        if self.algo == "mcem" and self.prior.startswith("vamp"):
            raise UserError("--algo mcem trains no encoder, which the VampPrior is built from")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise UserError("--clip-norm must be positive")
        if self.compile == "on" and self.algo == "mcem":
            raise UserError("--compile on compiles SVI and EM steps; --algo mcem's run eagerly")
        if self.val_size < 0 or self.kl_warmup < 0:
            raise UserError("--val-size and --kl-warmup must not be negative")
        if not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise UserError("--hidden-dims needs one or more positive layer widths")
        check_memory(self, training)
        self._check_plugins(training)
        parse_gaussian_scale(self.gaussian_scale)
        if self.corrupt is not None:
            parse_corruption(self.corrupt)
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise UserError(f"--sparsity must lie in (0, 1), got {self.sparsity}")
        if not self.sparsity_weight > 0:
            raise UserError("--sparsity-weight must be positive")
        given_alone = self.sparsity is None and self.sparsity_weight != TrainConfig.sparsity_weight
        if given_alone and training and self.resume is None:  # a new run's flags
            raise UserError("--sparsity-weight weighs the penalty of --sparsity RHO; give both")
        self._check_model_fields()
        sequences = self.dataset in SEQUENCE_DATASETS
        if not sequences and self.seq_len != TrainConfig.seq_len:
            raise UserError(
                f"--seq-len applies to a sequence data set ({', '.join(SEQUENCE_DATASETS)})"
            )
        if sequences and self.seq_len < 2:
            raise UserError(f"--seq-len must be at least 2 frames, got {self.seq_len}")
        if sequences != model_class(self.model).sequences:
            kind = "sequences" if sequences else "images"
            fits = [name for name, m in MODELS.items() if m.sequences == sequences]
            raise UserError(
                f"--model {self.model} does not model {kind} (--dataset {self.dataset}); "
                f"use --model {' | '.join(fits) or '(none installed)'}"
            )
        model_class(self.model).check_config(self)
        if self.algo == "mcem" and not issubclass(model_class(self.model), VAE):
            raise UserError(f"--algo mcem trains a VAE (HMC on its latent 'z'), not {self.model}")
        reads_likelihood = not issubclass(model_class(self.model), PyroProgramModel)
        if reads_likelihood and self.likelihood == "bernoulli" and self.binarize == "none":
            raise UserError(
                "a Bernoulli likelihood needs binary data: use --binarize dynamic|static, "
                "or --likelihood gaussian for intensities in [0, 1]"
            )
        if training:
            check_device(self.device)
        return self

    def _check_data_files(self) -> None:
        """A data file is named by its absolute path (so every command finds it); the settings
        of data files apply to them only. The file is read when the run loads its data."""
        files = ("dataset", "test_dataset")
        if not is_data_file(self.dataset):
            for name in ("test_dataset", "image_shape", "test_split"):
                if getattr(self, name) is not None:
                    flag = "--" + name.replace("_", "-")
                    raise UserError(f"{flag} applies to a data file (--dataset path.npy|.npz|.pt)")
            return
        if self.test_dataset is not None and not is_data_file(self.test_dataset):
            raise UserError(f"--test-dataset {self.test_dataset}: not a .npy, .npz or .pt file")
        for name in files:
            if getattr(self, name) is not None and self.resume is None:
                setattr(self, name, str(Path(getattr(self, name)).expanduser().resolve()))
        if self.image_shape is not None:
            self.image_shape = tuple(self.image_shape)
            if not 2 <= len(self.image_shape) <= 3 or min(self.image_shape) <= 0:
                raise UserError("--image-shape takes H W or 1 H W, positive")

    def _check_plugins(self, training: bool) -> None:
        """Check every part's spec (imports plugins: a missing module fails here, before any
        data is read). A new run's file paths are made absolute so that the run reloads from
        anywhere. The specs of a resumed run are those of its config.json, checked as such
        (:func:`~pyro_vae.plugins.from_run_folder`); those of a run being loaded
        (``training=False``) are checked in the folder its loader opened, never in one its
        settings name."""
        parts = {name: getattr(self, name) for name in PART_FIELDS}
        if not training:
            check_parts(parts)
            return
        if self.resume is None:
            parts = {name: spec and absolute_file_spec(spec) for name, spec in parts.items()}
            for name, spec in parts.items():
                setattr(self, name, spec)
        # a resumed run's specs come from its config.json
        with trusting(self.trust_plugins), from_run_folder(self.resume):
            check_parts(parts)

    def _check_types(self) -> None:
        """Every field holds a value of its type (a number where a number belongs, ...);
        integers become floats where a float belongs, a list of widths a tuple."""
        hints = typing.get_type_hints(TrainConfig)
        for name in hints:
            setattr(self, name, checked_setting("", name, getattr(self, name), hints[name]))

    def _check_model_fields(self) -> None:
        """A setting that only another model reads (its ``own_fields``) is refused."""
        for name, model in MODELS.items():
            for field in model.own_fields if name != self.model else ():
                if getattr(self, field) != getattr(TrainConfig, field):
                    flag = "--" + field.replace("_", "-")
                    raise UserError(f"{flag} applies to --model {name}, not --model {self.model}")

    def to_dict(self) -> dict:
        """The settings as config.json and checkpoints record them (what only the command line
        gives, such as ``trust_plugins``, left out)."""
        d = dataclasses.asdict(self)
        d["hidden_dims"] = list(self.hidden_dims)
        if self.image_shape is not None:
            d["image_shape"] = list(self.image_shape)
        for name in COMMAND_LINE_ONLY:
            del d[name]
        return d

    def record(self, model: type) -> dict:
        """:meth:`to_dict` without the settings ``model`` (the run's model class) does not read:
        the other models' own settings and its ``unread_fields``, so that config.json holds
        only what the run used (reading it back gives them their defaults)."""
        unread = unread_settings(self.model) | set(model.unread_fields)
        return {k: v for k, v in self.to_dict().items() if k not in unread}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "the saved settings") -> "TrainConfig":
        """Settings as :meth:`to_dict` wrote them (a run's config.json, a checkpoint's), each
        checked against its field's type: a wrong type is a :class:`UserError` naming the
        setting and ``source``. Unknown keys and command-line-only settings are ignored; a
        setting in :data:`RECORD_DEFAULTS` that ``d`` lacks takes its value there (an older
        run's record). :meth:`validate` checks the values."""
        if not isinstance(d, Mapping):
            raise UserError(f"{source} does not hold a table of settings")
        hints = typing.get_type_hints(cls)
        kwargs = {
            key: checked_setting(source, key, value, hints[key])
            for key, value in {**RECORD_DEFAULTS, **d}.items()
            if key in hints and key not in COMMAND_LINE_ONLY
        }
        for name in unread_settings(kwargs.get("model", cls.model)):  # an older run's record
            kwargs.pop(name, None)
        return cls(**kwargs)


def unread_settings(model: str) -> set[str]:
    """The library models' own settings that a run of ``model`` (a built-in name, or any other
    spec) does not read. config.json leaves them out (:meth:`TrainConfig.record`); a config.json
    or checkpoint written before it did, which recorded every setting at the default of its
    day, is read without them."""
    own = set(MODELS[model].own_fields) if model in MODELS else set()
    return {name for m in MODELS.values() for name in m.own_fields} - own
