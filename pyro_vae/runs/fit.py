"""Train a model end to end: data, model, trainer, run folder, one row of metrics per epoch.

Every model (``--model``, :func:`pyro_vae.models.model_class`) goes through the same loop: it is
built by its ``from_config``, trained by the trainer ``--algo`` names, evaluated by the metrics
and drawn by the figures it lists, and saved in one checkpoint format.

data, vae, trainer = setup(config)
run = Run.create(out)                  # or, with --resume, restore the run's checkpoint
for epoch in 1..E:
    train_loss = trainer.train_epoch(training data for this epoch)   # SVI or EM
    test = evaluate_elbo(vae, test data)          # ELBO, recon, KL per datum
    every --eval-every epochs: test IWAE, active units, MI (pyro_vae.evaluation.metrics)
    run.log(row); every --checkpoint-every epochs: run.save_checkpoint(state)
    a new best validation ELBO: best.pt; --early-stopping P epochs without one: stop
write_figures(...)

Under torchrun every rank runs this (pyro_vae.distributed): the trainers shard each minibatch of
--batch-size x ranks images, evaluation is sharded, and only rank 0 writes the run folder.
"""

import copy
import datetime
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from torch import nn
from tqdm.auto import tqdm

from pyro_vae import distributed
from pyro_vae.data.files import is_data_file, load_file_data
from pyro_vae.data.images import ImageData, load_data, recorded_data_dir
from pyro_vae.devices import check_device, forked_rng
from pyro_vae.errors import (
    Stopped,
    TrainingDiverged,
    TrainingInterrupted,
    UserError,
    stop_on_signals,
)
from pyro_vae.evaluation.elbo import evaluate_elbo
from pyro_vae.evaluation.figures import write_figures
from pyro_vae.evaluation.metrics import heldout_metrics, log_likelihood_mean_sem
from pyro_vae.evaluation.mutual_info import mutual_information
from pyro_vae.infer.compiled import AUTO_COMPILE_STEPS
from pyro_vae.infer.em import EMTrainer
from pyro_vae.infer.mcem import MCEMTrainer
from pyro_vae.infer.objectives import make_objective
from pyro_vae.infer.posterior_sampling import ChainSettings, PosteriorEncoder
from pyro_vae.infer.schedules import EpochSchedule
from pyro_vae.infer.svi import KLWarmup, SVITrainer
from pyro_vae.models import LatentModel, model_class
from pyro_vae.plugins import from_run_folder, trusting
from pyro_vae.runs.config import TrainConfig
from pyro_vae.runs.early_stopping import BestEpoch
from pyro_vae.runs.files import FolderLock, WriteFailed
from pyro_vae.runs.folder import CHECKPOINTS, Run, default_run_dir
from pyro_vae.runs.limits import allocating
from pyro_vae.runs.resume import restore, rng_states, saved_settings
from pyro_vae.runs.tensorboard import Board

Trainer = SVITrainer | EMTrainer | MCEMTrainer

__all__ = [
    "fit",
    "setup",
    "make_trainer",
    "load_vae",
    "load_run",
    "run_data",
    "summary_table",
    "heldout_columns",
    "prepare_model",
    "check_run_data",
    "settle_compile",
]


def setup(
    config: TrainConfig, prior: nn.Module | None = None, new_run: bool = False
) -> tuple[ImageData, LatentModel, Trainer, torch.Generator]:
    """Seed every generator, load the data and build the model and its trainer.

    ``prior``: a prior module of the user's own (see :mod:`pyro_vae.models.priors` for the protocol)
    used instead of ``config.prior``, which is then recorded as ``"custom"``. ``new_run`` (what
    :func:`fit` passes for a run that is not resumed): check that the folder the run will write
    is free before the data are loaded, and set ``config.out`` to it.
    """
    if prior is not None:
        config.prior = "custom"
    implied_val = config.algo == "em" and config.e_rule == "aggressive" and config.val_size == 0
    config.validate()
    distributed.init_from_env(config.device)  # joins torchrun's process group, if launched
    if new_run and not config.resume:  # a taken --out: refused before the data load
        config.out = distributed.on_main(lambda: _new_run_dir(config))
    if implied_val and not config.quiet and distributed.is_main():
        print(
            f"--e-rule aggressive: holding out {config.val_size} training images for validation "
            "(--val-size N to choose)",
            flush=True,
        )
    pyro.set_rng_seed(config.seed)  # torch, numpy and random
    data_rng = torch.Generator().manual_seed(config.seed)  # shuffling and binarization
    data = run_data(config)
    settle_compile(config, data.train.shape[0])
    if data.test_split is not None:  # a data file's held-out test set: config.json says so
        config.test_split = data.test_split
    # a resumed run's parts are named by its config.json
    with trusting(config.trust_plugins), from_run_folder(config.resume), allocating("the model"):
        vae = _build(config, data.data_dim, prior, data.image_shape)
    prepare_model(vae, data, config)
    check_run_data(vae, data)
    vae.to(config.device)
    distributed.broadcast_module(vae)
    if distributed.rank() > 0:  # model noise differs per rank; the data order (data_rng) does not
        torch.manual_seed(config.seed + distributed.rank())
    return data, vae, make_trainer(config, vae, data), data_rng


def _new_run_dir(config: TrainConfig) -> str:
    """The folder a new run will write (``--out``, else a dated one), checked to be free."""
    path = config.out or default_run_dir(config.algo)
    Run.check_free(path, config.overwrite)
    return str(path)


def run_data(config: TrainConfig, data_dir: str | None = None) -> ImageData:
    """The data a run's settings describe (``data_dir`` overrides the run's folder): training,
    evaluation and every command on a finished run read the same splits. A data file
    (``--dataset path.npy``) is read by :func:`pyro_vae.data.files.load_file_data`."""
    if is_data_file(config.dataset):
        return load_file_data(
            config.dataset,
            config.test_dataset,
            config.binarize,
            config.val_size,
            config.limit_train,
            config.limit_test,
            config.seed,
            config.image_shape,
            config.test_split,
        )
    return load_data(
        config.dataset,
        data_dir or config.data_dir,
        config.binarize,
        config.val_size,
        config.limit_train,
        config.limit_test,
        config.seed,
        config.seq_len,
    )


def make_trainer(config: TrainConfig, vae: LatentModel, data: ImageData) -> Trainer:
    """The trainer ``--algo`` names, with the objective, learning rates and KL schedule."""
    steps_per_epoch = math.ceil(data.train.shape[0] / global_batch_size(config))
    objective = make_objective(config.elbo, config.num_particles)
    kl_weight = KLWarmup(config.beta, round(config.kl_warmup * steps_per_epoch))
    if config.algo == "mcem":
        chain = chain_settings(config, config.mc_warmup, config.mc_samples)
        return MCEMTrainer(vae, data.train.shape[0], chain, config.lr, config.clip_norm)
    if config.algo == "svi":
        return SVITrainer(
            vae,
            objective,
            lr=config.lr,
            kl_weight=kl_weight,
            clip_norm=config.clip_norm,
            compile=config.compile == "on",
            report=_compile_report(config),
        )
    return EMTrainer(
        vae,
        objective,
        e_rule=config.e_rule,
        e_steps=config.e_steps,
        e_check=config.e_check,
        e_max=config.e_max,
        patience=config.patience,
        e_lr=config.e_lr or config.lr,
        m_lr=config.m_lr or config.lr,
        kl_weight=kl_weight,
        mutual_info=_validation_mutual_info(vae, data.val, config.device),
        clip_norm=config.clip_norm,
        compile=config.compile == "on",
        report=_compile_report(config),
    )


def settle_compile(config: TrainConfig, train_size: int) -> None:
    """Settle ``--compile auto`` as ``on`` or ``off``, once, when the run is created, and say
    which in one line: on for SVI or variational EM on the CPU when the run has at least
    :data:`~pyro_vae.infer.compiled.AUTO_COMPILE_STEPS` minibatches (``--epochs`` x minibatches
    of ``train_size`` images), where the compile pays for itself. config.json and every
    checkpoint record the outcome, so a resumed run steps as it began, whatever ``--epochs`` it
    is given; a run resumed from Python with ``auto`` takes its recorded setting."""
    if config.compile != "auto":
        return
    if config.resume:
        config.compile = saved_settings(config.resume).compile
        return
    steps = config.epochs * math.ceil(train_size / global_batch_size(config))
    pays = steps >= AUTO_COMPILE_STEPS
    why = f"{steps:,} minibatch steps, {'at least' if pays else 'under'} the "
    why += f"{AUTO_COMPILE_STEPS:,} that pay for compiling"
    if config.algo == "mcem":
        pays, why = False, "--algo mcem steps eagerly"
    elif config.device != "cpu":
        pays, why = False, f"the compiled step is untested on {config.device}"
    config.compile = "on" if pays else "off"
    _compile_report(config)(f"--compile auto: {'compiled' if pays else 'eager'} steps ({why})")


def _compile_report(config: TrainConfig) -> Callable[[str], None]:
    """Where the compiled step's lines go: printed by rank 0 unless ``--quiet``, above the
    progress bar."""
    if config.quiet or not distributed.is_main():
        return lambda line: None
    return lambda line: tqdm.write(f"pyro-vae: {line}", file=sys.stdout)


def _validation_mutual_info(vae: LatentModel, val: torch.Tensor | None, device: str):
    """The ``aggressive`` E-step rule's measure: I_q(x; z) on the validation images."""
    if val is None:
        return None
    val = val.to(device)
    return lambda: mutual_information(vae, val)


def chain_settings(config: TrainConfig, warmup: int, samples: int) -> ChainSettings:
    """MCMC settings from ``--mc-*``: training E-steps and evaluation chains differ only in
    their warm-up and sample counts."""
    return ChainSettings(
        config.mc_kernel, warmup, samples, config.mc_leapfrog, config.mc_target_accept
    )


def global_batch_size(config: TrainConfig) -> int:
    """The minibatch of one update: ``--batch-size`` per rank times the number of ranks."""
    return config.batch_size * distributed.world_size()


def update_counts(trainer: Trainer) -> dict:
    """Encoder and decoder updates so far and this epoch's E-step steps (none for SVI)."""
    if isinstance(trainer, EMTrainer | MCEMTrainer):
        return trainer.epoch_record()
    n = trainer.step_count
    return {"encoder_updates": n, "decoder_updates": n, "inner_steps": 0, "val_mi": None}


def _build(
    config: TrainConfig, data_dim: int, prior: nn.Module | None, image_shape=(28, 28)
) -> LatentModel:
    """The model ``config`` describes (``--model``). Under Monte Carlo EM (VAE only), which
    trains no guide, its encoder is a :class:`PosteriorEncoder`: Gaussians fitted to HMC samples
    of p(z|x), so every evaluation written against ``vae.guide`` (ELBO, IWAE, active units,
    figures) applies."""
    if image_shape is None and config.arch == "conv":
        raise UserError(f"--arch conv needs images; {config.dataset} holds vectors (--image-shape)")
    vae = model_class(config.model).from_config(config, data_dim, image_shape, prior)
    if config.algo == "mcem":
        settings = chain_settings(config, config.mc_eval_warmup, config.mc_eval_samples)
        vae.encoder = PosteriorEncoder(vae.model, settings, config.z_dim)
    return vae


def prepare_model(vae: LatentModel, data: ImageData, config: TrainConfig) -> None:
    """Show a model that needs data to know itself (a model of your own: its sites and
    parameter groups) a batch of training data as training sees it
    (:meth:`~pyro_vae.models.base.LatentModel.prepare`)."""
    if vae.needs_example:
        batch = data.train_sample(config.batch_size)
        if data.binarize == "dynamic":
            batch = batch.ceil()  # binary, as every epoch's draw is
        vae.prepare(batch, data.shape_per_point, data.image_shape)


def check_run_data(vae: LatentModel, data: ImageData) -> None:
    """Reject data outside the likelihood's support once, before the run folder is made.

    Under dynamic binarization the stored training set holds intensities and every epoch draws
    binary pixels from them, so it is checked as one such draw would be.
    """
    train = data.train.ceil() if data.binarize == "dynamic" else data.train
    for x in (train, data.test, data.val):
        if x is not None:
            vae.check_data(x)


def fit(config: TrainConfig, prior: nn.Module | None = None) -> Run:
    """Train as ``config`` says, writing the run folder; returns the :class:`Run`.

    ``prior``: optionally a prior module of the user's own (see :func:`setup`).
    ``config.resume``: continue that run folder from its checkpoint (see
    :mod:`pyro_vae.runs.resume`). A checkpoint is written every ``config.checkpoint_every`` epochs
    and after the last; with a validation set, ``best.pt`` holds the epoch with the best
    validation ELBO, and ``config.early_stopping`` epochs without a better one end the run
    (:mod:`pyro_vae.runs.early_stopping`). On Ctrl-C, SIGTERM or SIGUSR1 the last completed
    epoch is saved (:class:`TrainingInterrupted`); a NaN or infinite loss stops the run and
    keeps the last checkpoint untouched (:class:`TrainingDiverged`).
    """
    with stop_on_signals():  # SIGTERM and SIGUSR1 stop a run as Ctrl-C does
        return _fit(config, prior)


def _fit(config: TrainConfig, prior: nn.Module | None) -> Run:
    data, vae, trainer, data_rng = setup(config, prior, new_run=True)
    schedule = EpochSchedule(config.lr_schedule, trainer.optimizers(), config.epochs)
    best = BestEpoch()
    main = distributed.is_main()  # under torchrun, only rank 0 writes the run folder
    if config.resume:
        run = Run(config.resume)
    else:
        path = config.out or default_run_dir(config.algo)
        run = Run(distributed.on_main(lambda: Run.create(path, config.overwrite).path))
    config.out = str(run.path)
    if main:
        run.refuse_links()  # before any work: a folder from elsewhere may point one outside
    lock = FolderLock(run.path).acquire() if main else None  # one writer per run folder
    saved = done = epoch = 0  # the last checkpointed epoch, the last started
    unsaved, board = None, None  # a completed epoch's state not yet saved; TensorBoard
    try:
        if config.resume:
            state = distributed.on_main(run.load_checkpoint)
            saved = done = epoch = restore(state, vae, trainer, data_rng, config.epochs)
            schedule.load_state_dict(state.get("schedule", []))
            best.load_state_dict(state.get("best", {}))
            _check_not_stopped(best, config.early_stopping)
        if main:
            _prepare_folder(run, done, config, type(vae))
        if config.tensorboard and main:
            board = Board(run.tensorboard_dir, done, data.image_shape)
        clock = EpochClock(done, config.epochs)
        for epoch in range(done + 1, config.epochs + 1):
            row = train_one_epoch(config, data, vae, trainer, data_rng, epoch)
            if schedule.schedulers:  # the rate this epoch trained with, then the next one's
                row["lr"] = schedule.lr()
            schedule.step(row["val_elbo"])
            improved = best.update(epoch, row["val_elbo"])
            stop = best.stale(config.early_stopping)
            if main:
                run.log(row)
                _report(config, row, clock.tick())
                if board:
                    board.log(row, vae, data.test, evaluation_due(config, epoch))
            state = checkpoint_state(config, data, vae, trainer, epoch, data_rng)
            state |= {"schedule": schedule.state_dict(), "best": best.state_dict()}
            if improved and main:
                run.save_checkpoint(state, "best")
            if epoch % config.checkpoint_every == 0 or epoch == config.epochs or stop:
                if main:
                    run.save_checkpoint(state)
                saved, unsaved = epoch, None
            else:
                unsaved = copy.deepcopy(state)
            if stop:
                if main:  # even with --quiet: the run ends before --epochs
                    print(_stopped_line(best, config.early_stopping), flush=True)
                break
        if main:
            write_figures(
                vae,
                data.test,
                run.read_metrics(),
                run.figures_dir,
                data.image_shape,
                data.test_labels,
            )
            hint = vae.end_of_run_hint(data.test[: config.eval_limit])
            if hint and not config.quiet:
                print(hint, flush=True)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGUSR1 (Stopped)
        if unsaved is not None:
            if main:
                run.save_checkpoint(unsaved)
            saved = unsaved["epoch"]
        stopped = isinstance(exc, Stopped)
        then = (
            f"epoch {saved} is saved in {run.path}; continue with: pyro-vae train --resume "
            f"{run.path}"
            if saved > 0
            else f"no epoch had completed, so nothing is saved; start again with: pyro-vae "
            f"train --config {run.config_path} --out {run.path} --overwrite"
        )
        raise TrainingInterrupted(
            f"{f'stopped by {exc.name}' if stopped else 'interrupted'} in epoch {epoch}; {then}",
            exc.exit_code if stopped else 130,
        ) from None
    except TrainingDiverged as exc:
        kept = (
            f"the checkpoint of epoch {saved} in {run.path} is kept"
            if saved > 0
            else f"no epoch had completed, so {run.path} holds no checkpoint"
        )
        raise TrainingDiverged(
            f"{exc} in epoch {epoch} (update {trainer.step_count + 1}); {kept}; "
            "try a lower --lr or --clip-norm"
        ) from None
    except WriteFailed as exc:
        raise exc.explained(_what_is_safe(exc, run, saved)) from None
    finally:
        if board:
            board.close()
        if lock:
            lock.release()
    distributed.barrier()
    return run


def _prepare_folder(run: Run, done: int, config: TrainConfig, model: type) -> None:
    """A new run's folder forgets an overwritten run; a resumed run's metrics.csv keeps the
    rows up to its checkpoint (and loses damaged lines, which it says). Then config.json, with
    the settings ``model`` reads."""
    if not done:
        run.clear()
    dropped = run.repair_metrics(done)
    if dropped:
        print(
            f"{run.metrics_path}: repaired for the checkpoint of epoch {done} "
            f"({'; '.join(dropped)})",
            flush=True,
        )
    run.write_config(config.record(model))


def _what_is_safe(exc: WriteFailed, run: Run, saved: int) -> str:
    """The rest of a failed write's line: what is intact and how to go on."""
    fix = "free space" if exc.no_space else f"make {run.path} writable"
    if exc.path.parent == run.figures_dir:  # figures come after the last checkpoint
        intact = f"training finished and the checkpoint of epoch {saved} is intact"
        return f"{intact}; {fix} and run pyro-vae plot {run.path}"
    if saved == 0:
        return f"no checkpoint has been written yet; {fix} and start the run again"
    intact = f"the checkpoint of epoch {saved} is intact"
    return f"{intact}; {fix} and run pyro-vae train --resume {run.path}"


def _stopped_line(best: BestEpoch, patience: int) -> str:
    return (
        f"early stopping: the validation ELBO has not improved for {patience} epochs; stopped "
        f"after epoch {best.last_epoch} (best: epoch {best.best_epoch}, "
        f"{best.best_elbo:.2f}, kept as best.pt)"
    )


def _check_not_stopped(best: BestEpoch, patience: int | None) -> None:
    """A run that early stopping ended continues only with more patience."""
    if best.stale(patience):
        raise UserError(
            _stopped_line(best, patience).replace("; stopped", ": the run stopped")
            + f"; resume with --early-stopping N, N > {best.last_epoch - best.best_epoch}, "
            "to train further"
        )


class EpochClock:
    """Wall time per epoch so far, and the estimated time to the run's last epoch."""

    def __init__(self, done: int, epochs: int) -> None:
        self.start, self.done, self.epochs, self.ticks = time.perf_counter(), done, epochs, 0

    def tick(self) -> float:
        """Count a finished epoch; returns the estimated seconds left."""
        self.ticks += 1
        per_epoch = (time.perf_counter() - self.start) / self.ticks
        return per_epoch * (self.epochs - self.done - self.ticks)


def _report(config: TrainConfig, row: dict, seconds_left: float) -> None:
    """The epoch's line: training loss, the held-out numbers it has, and the time left."""
    if config.quiet:
        return
    if row["test_elbo"] is not None:
        shown = f"test ELBO {row['test_elbo']:8.2f}  KL {row['test_kl']:6.2f}"
    elif row["test_recon"] is not None:
        shown = f"test log p(x|z) {row['test_recon']:8.2f}"
    else:
        shown = "(held-out metrics every --eval-every epochs)"
    left = datetime.timedelta(seconds=round(seconds_left))  # 2:51:04, 1 day, 3:00:00
    print(
        f"epoch {row['epoch']:3d}/{config.epochs}  train loss {row['train_loss']:8.2f}  {shown}  "
        f"{row['seconds']:6.1f}s  left {left}",
        flush=True,
    )


def train_one_epoch(
    config: TrainConfig,
    data: ImageData,
    vae: LatentModel,
    trainer: Trainer,
    data_rng: torch.Generator,
    epoch: int,
) -> dict:
    """Train one epoch, evaluate on the held-out sets; returns the row for ``metrics.csv``."""
    device = torch.device(config.device)
    start = time.perf_counter()
    talk = not config.quiet and distributed.is_main()
    train_loss = trainer.train_epoch(
        data.train_epoch(data_rng).to(device),
        global_batch_size(config),
        data_rng,
        progress=talk,
        description=f"epoch {epoch}/{config.epochs}",
        check=False,  # checked once in setup(); dynamic binarization keeps it binary
    )
    seconds = time.perf_counter() - start
    train_sample = data.train_sample(config.eval_limit)
    if config.algo == "mcem" and not evaluation_due(config, epoch):
        # Without an encoder every held-out number needs MCMC chains: only every --eval-every.
        test = dict.fromkeys(("elbo", "recon", "kl"))  # blank cells, as for other metrics
        val = None
    else:
        test = evaluate_elbo(vae, data.test.to(device))
        val = evaluate_elbo(vae, data.val.to(device)) if data.val is not None else None
    if "elbo" not in vae.metrics:  # no bound to report (the autoencoder): reconstruction only
        test["elbo"] = test["kl"] = None
        val = dict(val, elbo=None) if val else None
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "test_elbo": test["elbo"],
        "test_recon": test["recon"],
        "test_kl": test["kl"],
        "val_elbo": val["elbo"] if val else None,
        "kl_weight": trainer.kl_weight(trainer.step_count - 1),
        "seconds": seconds,
        **update_counts(trainer),
        **heldout_columns(config, vae, data.test.to(device), epoch, train_sample.to(device)),
    }


def evaluation_due(config: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` gets the held-out metrics: every ``eval_every`` epochs and the last."""
    return config.eval_every > 0 and (epoch % config.eval_every == 0 or epoch == config.epochs)


def heldout_columns(
    config: TrainConfig,
    vae: LatentModel,
    test: torch.Tensor,
    epoch: int,
    train: torch.Tensor | None = None,
) -> dict:
    """``test_iwae``, ``active_units``, ``mutual_info`` (a VQ-VAE's ``codes_used`` and
    ``perplexity`` instead of the latter two; a sequence model's ``rollout_bce``,
    ``rollout_direction`` and ``displacement_error``) on the first ``eval_limit`` test images
    (and ``train_iwae`` on ``train``, training images as evaluation sees them) every
    ``eval_every`` epochs and at the last epoch; None (a blank cell) in other epochs.

    The evaluation draws from a forked torch RNG, so turning it on does not change training.
    Metrics that do not apply to the model (``vae.metrics``) are blank cells.
    """
    columns = {
        "test_iwae": "iwae",
        "active_units": "active_units",
        "mutual_info": "mutual_info",
        "codes_used": "codes_used",
        "perplexity": "perplexity",
        "rollout_bce": "rollout_bce_mean",
        "rollout_direction": "rollout_direction",
        "displacement_error": "displacement_error_mean",
    }
    if not evaluation_due(config, epoch):
        return {**dict.fromkeys(columns), "train_iwae": None}
    with forked_rng(test.device):
        m = heldout_metrics(vae, test[: config.eval_limit], config.eval_iw_samples)
        train_iwae = (
            log_likelihood_mean_sem(vae, train[: config.eval_limit], config.eval_iw_samples)[0]
            if train is not None and "log_likelihood" in vae.metrics
            else None
        )
    return {**{column: m.get(key) for column, key in columns.items()}, "train_iwae": train_iwae}


def checkpoint_state(
    config: TrainConfig,
    data: ImageData,
    vae: LatentModel,
    trainer: Trainer,
    epoch: int,
    data_rng: torch.Generator,
) -> dict:
    """Everything needed to rebuild the model and continue training exactly.

    Under torchrun (a collective: every rank calls it) ``rng_ranks`` holds every rank's RNG
    states, gathered to each rank, and ``world_size`` the number of ranks.
    """
    rng = rng_states(data_rng)
    state = {
        "config": config.record(type(vae)),
        "data_dim": data.data_dim,
        "epoch": epoch,
        "vae": vae.state_dict(),
        "trainer": trainer.state_dict(),
        "rng": rng,
    }
    if distributed.active():
        state |= {"world_size": distributed.world_size(), "rng_ranks": distributed.all_gather(rng)}
    return state


def load_vae(
    run_dir: str,
    device: str = "cpu",
    prior: nn.Module | str | None = None,
    state: dict | None = None,
    checkpoint: str = "last",
    data: ImageData | None = None,
    trust_plugins: bool = False,
) -> tuple[LatentModel, TrainConfig]:
    """Rebuild the trained model of a run folder (any ``--model``) from its checkpoint.

    A run trained with a prior module of the user's own needs a fresh instance of it as
    ``prior``; its learned parameters are then loaded from the checkpoint. For a VQ-VAE,
    ``prior`` may instead name a prior fitted by ``pyro-vae fit-prior`` (``"transformer"``): the
    model comes with that prior in place of the uniform one. ``state``: the
    checkpoint's contents if already loaded (saves reading it twice); ``checkpoint``: ``"last"``
    (``checkpoint.pt``) or ``"best"`` (``best.pt``, the best validation ELBO); ``data``: the
    run's data if already loaded (a model of your own is prepared on it, else it is loaded).
    The checkpoint's settings are checked as flags are (:meth:`TrainConfig.validate`) before
    anything is built. A plugin that lies inside the run folder is imported only with
    ``trust_plugins=True`` (the ``--trust-plugins`` flag; :func:`pyro_vae.plugins.trusting`).
    """
    if isinstance(prior, str):  # a VQ-VAE's fitted code prior, by name
        from pyro_vae.runs.code_prior import with_fitted_prior

        vae, config = load_vae(run_dir, device, None, state, checkpoint, data)
        return with_fitted_prior(vae, run_dir, prior), config
    state = Run(run_dir).load_checkpoint(checkpoint) if state is None else state
    source = f"the settings in {Path(run_dir) / CHECKPOINTS[checkpoint]}"
    if "config" not in state:
        raise UserError(f"{source} are missing")
    config = TrainConfig.from_dict(state["config"], source)
    if config.prior == "custom" and prior is None:
        raise UserError(
            f"{run_dir} was trained with a prior module given in Python; pass "
            "load_vae(..., prior=...), or train with --prior module:Class so that every command "
            "can rebuild it"
        )
    try:
        with trusting(trust_plugins), from_run_folder(run_dir), allocating("the model"):
            config.validate(training=False)
            if data is None and is_data_file(config.dataset):  # its images' shape is there
                data = run_data(config)
            image_shape = data.image_shape if data is not None else (28, 28)
            vae = _build(config, int(state["data_dim"]), prior, image_shape)
            if vae.needs_example:
                prepare_model(vae, data or run_data(config), config)
    except UserError as exc:  # a plugin that no longer imports, a model this version lacks
        raise UserError(f"cannot rebuild the model of {run_dir}: {exc}") from None
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{run_dir}'s checkpoint does not say how large its data is") from None
    try:
        vae.load_state_dict(state["vae"])
    except RuntimeError:
        raise UserError(f"checkpoint in {run_dir} does not match its configuration") from None
    return vae.to(device).eval(), config


def load_run(
    run_dir: str | Path,
    data_dir: str | None = None,
    checkpoint: str = "last",
    device: str = "cpu",
) -> tuple[LatentModel, ImageData, int]:
    """The trained model on ``device``, its data (test set as in training, on the CPU) and the
    checkpoint's epoch; ``checkpoint``: ``"last"`` or ``"best"`` (see :func:`load_vae`)."""
    run = Run(run_dir)
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist")
    check_device(device)
    state = run.load_checkpoint(checkpoint)
    try:
        recorded = TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError, KeyError):
        raise UserError(f"the configuration in {run_dir}'s checkpoint is unreadable") from None
    recorded.data_dir = recorded_data_dir(recorded.data_dir)
    data = run_data(recorded, data_dir)
    vae, config = load_vae(str(run_dir), device=device, state=state, data=data)
    try:
        vae.codes(data.test[:1].to(device))
    except RuntimeError:
        raise UserError(
            f"checkpoint in {run_dir} does not fit its data ({config.dataset}, "
            f"{data.data_dim} pixels)"
        ) from None
    return vae, data, int(state["epoch"])


def summary_table(run: Run) -> str:
    """A few lines that sum up a finished run."""
    rows = run.read_metrics()
    if not rows:
        return f"run {run.path}: no epochs completed"
    last = rows[-1]
    seconds = sum(r["seconds"] for r in rows)
    lines = [
        ("run folder", str(run.path)),
        ("epochs", f"{int(last['epoch'])}  ({seconds:.0f} s training)"),
        ("train loss", f"{last['train_loss']:.2f} nats/datum"),
        ("test ELBO", f"{last['test_elbo']:.2f} nats/datum"),
        ("  recon", f"{last['test_recon']:.2f}"),
        ("  KL", f"{last['test_kl']:.2f}"),
    ]
    if not math.isfinite(last["test_elbo"]):  # a model without an ELBO (the autoencoder)
        lines[-3:] = [("test recon", f"{last['test_recon']:.2f} nats/datum (log p(x | f(x)))")]
    if run.best_path.is_file():
        top = max(rows, key=lambda r: r["val_elbo"] if math.isfinite(r["val_elbo"]) else -math.inf)
        shown = f"{int(top['epoch'])}  (validation ELBO {top['val_elbo']:.2f}; best.pt)"
        lines.append(("best epoch", shown))
    lines.append(("figures", str(run.figures_dir)))
    return "\n".join(f"{k:<12} {v}" for k, v in lines)
