"""The trainer: one linear loop, read top to bottom (big_vision style).

State is a plain dict of arrays: {'step', 'params', 'opt_state', 'ema_params', 'rng',
'nonfinite_steps'}. The per-step key is fold_in(rng, step), so the random stream depends only on the
step, never on how many times the run was restarted or how it is sharded.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from rin_diffusion import (
    checkpointing,
    config_lib,
    diffusion,
    exit_status,
    fileio,
    generate,
    learned_variance,
    networks,
    optim,
    schedules,
    self_conditioning,
    sharding,
)
from rin_diffusion.data import pipeline
from rin_diffusion.evaluation import evaluate


class NonFiniteLossError(exit_status.Diverged):
  pass


class Conditioning(NamedTuple):
  """A stage's extra network inputs, built from its batch (a cascade's super-resolution stages).

  Each function returns {'extra_channels': (B, H, W, C') concatenated to the normalised x_t,
  'extra_gammas': (B, k) for the extra latent tokens}, either key optional. The trainer only wires
  them; rin_diffusion.cascade.stage builds them from config.cascade (nothing here imports it).
  """
  train: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]  # (batch, key)
  grid: Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]  # (batch, key)


class _PreemptionFlag:
  """Set by SIGTERM; the loop saves at the next step boundary and raises exit_status.Preempted."""

  def __init__(self):
    self.requested = False
    self._previous = None  # The SIGTERM handler that install() replaced, restored by uninstall().

  def install(self) -> None:
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # Not the main thread (e.g. a notebook worker): rely on Orbax's check.
      pass

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _handler(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint at the next step boundary.", signum)
    self.requested = True


def make_loss_fn(model: nn.Module, config: ml_collections.ConfigDict,
                 conditioning: Conditioning | None = None):
  """loss_fn(params, batch, key) -> the scalar training loss of one global batch."""
  dcfg = config.diffusion
  gamma_train = schedules.gamma_fn(dcfg.train_schedule)
  input_scale = float(dcfg.input_scale)
  num_classes = int(config.model.num_classes)
  timesteps = int(dcfg.timesteps)
  tables = (learned_variance.process(dcfg.train_schedule) if dcfg.learned_variance else None)
  accum_steps = int(config.grad_accum_steps)

  def apply_model(params, inputs, dropout_key):
    """The network on the whole batch, or over config.grad_accum_steps microbatches in turn."""
    if accum_steps == 1:
      return model.apply({"params": params}, *inputs, train=True, rngs={"dropout": dropout_key})

    # Microbatch i holds rows i, i + k, i + 2k, ...: each device's contiguous block of the batch
    # contributes equally to every microbatch, so the batch sharding carries over unchanged.
    def to_micro(a):
      return jnp.swapaxes(a.reshape((a.shape[0] // accum_steps, accum_steps) + a.shape[1:]), 0, 1)

    def from_micro(a):
      return jnp.swapaxes(a, 0, 1).reshape((-1,) + a.shape[2:])

    # Checkpointed: the backward pass keeps only each microbatch's inputs and recomputes its
    # activations, so activation memory is one microbatch's (at the cost of one more forward).
    @jax.checkpoint
    def one_microbatch(index, micro_inputs):
      return model.apply({"params": params}, *micro_inputs, train=True,
                         rngs={"dropout": jax.random.fold_in(dropout_key, index)})

    outputs = jax.lax.map(lambda args: one_microbatch(*args),
                          (jnp.arange(accum_steps), jax.tree.map(to_micro, inputs)))
    return jax.tree.map(from_micro, outputs)

  def loss_fn(params, batch, key):
    x0 = batch["image"]
    size = x0.shape[0]
    time_key, noise_key, pass_key = jax.random.split(key, 3)
    if timesteps:  # The discrete process: step i in {1, ..., T}, t = i / T.
      step = jax.random.randint(time_key, (size,), 1, timesteps + 1)
      t = step.astype(jnp.float32) / timesteps
      gamma = tables.alpha_bar[step] if tables is not None else gamma_train(t)
    else:
      t = jax.random.uniform(time_key, (size,), jnp.float32)
      gamma = gamma_train(t)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = diffusion.add_noise(x0, gamma, noise, input_scale)
    x_in = diffusion.normalize_input(x_t, gamma, input_scale, dcfg.normalize_input)
    extra_gammas = None
    if conditioning is not None:
      # Its own key (folded, not split) so that unconditional runs keep their random stream.
      extras = conditioning.train(batch, jax.random.fold_in(key, 1))
      if "extra_channels" in extras:
        x_in = jnp.concatenate([x_in, extras["extra_channels"]], axis=-1)
      extra_gammas = extras.get("extra_gammas")
    onehot = jax.nn.one_hot(batch["label"], num_classes) if num_classes > 0 else None

    def apply_fn(hidden, key):
      dropout_key, label_key = jax.random.split(key)
      class_onehot = (self_conditioning.label_dropout(onehot, label_key, dcfg.label_dropout)
                      if onehot is not None else None)
      return apply_model(params, (x_in, gamma, class_onehot, hidden, extra_gammas), dropout_key)

    # With rate 0 the first pass is dead code that XLA removes.
    pred, _ = self_conditioning.self_conditioned_apply(
        apply_fn, networks.zero_hidden(config, size), pass_key, float(dcfg.self_cond_rate))
    loss, per_example = diffusion.diffusion_loss(
        pred[..., :x0.shape[-1]], x0=x0, noise=noise, x_t=x_t, gamma=gamma,
        pred_type=dcfg.pred_type, loss_target=dcfg.loss_target, input_scale=input_scale,
        weighting=dcfg.loss_weighting, min_snr_gamma=float(dcfg.min_snr_gamma))
    if tables is not None:  # Improved DDPM's hybrid loss: + lambda T L_i, the mean stopped.
      loss = jnp.mean(per_example + learned_variance.hybrid_vlb(
          tables, step, x0=x0, x_t=x_t, pred=pred, vlb_weight=float(dcfg.vlb_weight)))
    return loss

  return loss_fn


SKIP_BY = ("select", "branch")


def make_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs,
                    config: ml_collections.ConfigDict, conditioning: Conditioning | None = None,
                    skip_by: str = "select"):
  """train_step(state, batch) -> (state, metrics); `tx` from optim.make_optimizer(config).

  `skip_by` is how a non-finite step leaves the state alone: "select" (jnp.where of new against
  old state) or "branch" (lax.cond around the update). Both give the same state, bit for bit.
  With "select" XLA:CPU copies every donated parameter and moment buffer first (the update
  reads them after the select has written them: 265 MB a step at the matched benchmark config,
  2.6 GB at imagenet64); "branch" updates them in place. Yet neither was faster beyond the noise
  of 2 CPU cores (benchmarks/train_step.py --compare_skip_by), and for the branch the TPU
  compiler needs 0.7 GiB more temporaries per chip at imagenet64, so the trainer selects.
  """
  if skip_by not in SKIP_BY:
    raise ValueError(f"skip_by={skip_by!r}: allowed: {', '.join(SKIP_BY)}.")
  loss_fn = make_loss_fn(model, config, conditioning)
  lr_schedule = optim.learning_rate_schedule(config)
  ema_decay = float(config.optimizer.ema_decay)
  ema_warmup = bool(config.optimizer.ema_warmup)

  def train_step(state, batch):
    step = state["step"]
    # The state keeps raw key data, so that checkpoints hold plain integer arrays.
    key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), step)
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], batch, key)
    # The step counter alone sets the rate (as it sets the data and the EMA warm-up), so it stays
    # in step after skipped updates; the optimizer state keeps only what applied updates changed.
    learning_rate = lr_schedule(step)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply_update(operands):
      params, opt_state, ema_params = operands
      updates, opt_state = tx.update(grads, opt_state, params, learning_rate=learning_rate)
      params = optax.apply_updates(params, updates)
      ema_params = optim.update_ema(
          ema_params, params, optim.ema_decay_at(step, ema_decay, ema_warmup))
      return params, opt_state, ema_params

    # A non-finite step never reaches the state: the last good parameters stay in place, and the
    # host decides (config.nonfinite_loss) whether to stop or to carry on counting.
    old = (state["params"], state["opt_state"], state["ema_params"])
    if skip_by == "branch":
      params, opt_state, ema_params = jax.lax.cond(finite, apply_update, lambda old: old, old)
    else:
      params, opt_state, ema_params = jax.tree.map(
          lambda new, old: jnp.where(finite, new, old), apply_update(old), old)
    new_state = {
        "step": step + 1,
        "params": params,
        "opt_state": opt_state,
        "ema_params": ema_params,
        "rng": state["rng"],
        "nonfinite_steps": state["nonfinite_steps"] + jnp.where(finite, 0, 1).astype(jnp.int32),
    }
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate}
    return new_state, metrics

  return train_step


def jit_train_step(model: nn.Module, tx: optax.GradientTransformationExtraArgs,
                   config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   state_shardings: Any, conditioning: Conditioning | None = None,
                   skip_by: str = "select"):
  """make_train_step jitted for the mesh: state sharded and donated, batch split, metrics replicated.

  The trainer, the benchmarks and tools/plan compile this one program.
  """
  return jax.jit(make_train_step(model, tx, config, conditioning, skip_by),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


def batch_spec(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
               ) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and shardings of one global training batch (with a stage's low_res)."""
  batch_size, size = int(config.batch_size), int(config.model.image_size)
  channels, low = int(config.model.channels), int(config.cascade.low_resolution)
  split = sharding.batch_sharding(mesh)
  spec = {"image": jax.ShapeDtypeStruct((batch_size, size, size, channels), jnp.float32,
                                        sharding=split),
          "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=split)}
  if low:
    spec["low_res"] = jax.ShapeDtypeStruct((batch_size, low, low, channels), jnp.float32,
                                           sharding=split)
  return spec


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """Model, optimizer, state shardings and a jitted state initialiser."""
  model = networks.from_config(config)
  tx = optim.make_optimizer(config)
  mcfg = config.model
  rules = tuple(tuple(rule) for rule in config.sharding_rules)
  example_x = jnp.zeros((1, mcfg.image_size, mcfg.image_size,
                         mcfg.channels + mcfg.extra_in_channels), jnp.float32)
  example_gamma = jnp.ones((1,), jnp.float32)
  example_class = (jnp.zeros((1, mcfg.num_classes), jnp.float32) if mcfg.num_classes > 0
                   else None)
  example_extra = (jnp.zeros((1, mcfg.num_extra_tokens), jnp.float32)
                   if mcfg.num_extra_tokens > 0 else None)

  def init_variables(key):
    return model.init(key, example_x, example_gamma, example_class, None, example_extra,
                      train=False)

  boxed = jax.eval_shape(init_variables, jax.random.key(0))
  param_shardings = sharding.logical_shardings(boxed["params"], mesh, rules)
  replicated = sharding.replicated(mesh)

  def init_state(seed):
    rng = jax.random.key(seed)
    init_key, state_key = jax.random.split(rng)
    params = nn.meta.unbox(init_variables(init_key)["params"])
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        # A copy, not the same buffers: the state is donated (spec A15: EMA starts at the params).
        "ema_params": jax.tree.map(jnp.copy, params),
        "rng": jax.random.key_data(state_key),
        "nonfinite_steps": jnp.zeros((), jnp.int32),
    }

  abstract = jax.eval_shape(init_state, 0)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract["opt_state"], param_shardings,
      transform_non_params=lambda _: replicated)
  state_shardings = {
      "step": replicated,
      "params": param_shardings,
      "opt_state": opt_shardings,
      "ema_params": param_shardings,
      "rng": replicated,
      "nonfinite_steps": replicated,
  }
  init_fn = jax.jit(init_state, static_argnums=0, out_shardings=state_shardings)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings)
  return model, tx, init_fn, abstract_state, state_shardings


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list[jax.Device] | None = None,
                       conditioning: Conditioning | None = None) -> dict[str, Any]:
  """Trains (or resumes) in `workdir` on `devices` (default: all); returns the final state.

  Returns only when the run is complete: step == config.total_steps and, with in-loop evaluation,
  the final step's evaluation recorded (a restart after a preemption at the last step runs it).
  On SIGTERM it saves a durable checkpoint and raises exit_status.Preempted; a non-finite loss
  with config.nonfinite_loss='stop' raises NonFiniteLossError.

  A super-resolution stage (config.cascade.low_resolution > 0) needs `conditioning`
  (rin_diffusion.cascade.stage.conditioning(config); python -m rin_diffusion.main passes it).
  """
  config_lib.validate(config)
  if (conditioning is None) != (int(config.cascade.low_resolution) == 0):
    raise ValueError(
        f"config.cascade.low_resolution={config.cascade.low_resolution}: train_and_evaluate needs "
        "conditioning=rin_diffusion.cascade.stage.conditioning(config) exactly for a "
        "super-resolution stage (low_resolution > 0).")
  mesh = sharding.make_mesh(config.mesh, devices)
  # Every process holds the same number of mesh devices, so this also splits it over processes.
  sharding.check_batch_divisible(int(config.batch_size), mesh, int(config.grad_accum_steps))
  is_chief = jax.process_index() == 0
  _check_workdir(workdir)
  source = _make_source_chief_first(config.dataset)  # Fails early and clearly if data is missing.
  if int(config.eval_every_steps):
    evaluate.check_inception_weights(config)  # Now, not after the training it would measure.
  metrics_path = os.path.join(workdir, "metrics.jsonl")

  model, tx, init_fn, abstract_state, state_shardings = build(config, mesh)
  # Read-only until here: a checkpoint that does not fit this config (IncompatibleCheckpointError)
  # or a bad init_from stops the run before the workdir is created, cleaned or written.
  restored = init_params = None
  reader = checkpointing.open_reader(workdir)
  if reader is not None:
    with reader:
      restored = checkpointing.restore_latest(reader, abstract_state, config)
  if restored is None and config.init_from.workdir:
    init_params = checkpointing.restore_params_from(
        config.init_from.workdir, config.init_from.params, abstract_state["params"], config)
  if jax.process_count() > 1:
    # No process may create the checkpoint directory before every process has looked for it, or
    # they would disagree on whether a reader exists and on the collective barriers that follow.
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices("rin_diffusion_checkpoints_checked")
  _make_workdir(workdir)
  manager = checkpointing.make_manager(workdir, config)
  writer = _make_writer(workdir, is_chief)
  if restored is not None:
    state, position = restored
    logging.info("Resumed from %s at step %d.", manager.directory, int(state["step"]))
  else:
    state, position = init_fn(int(config.seed)), 0
    if config.init_from.workdir:
      copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree),
                     out_shardings=state_shardings["params"])
      state = {**state, "params": copy(init_params), "ema_params": copy(init_params)}
  start_step = int(jax.device_get(state["step"]))
  if position != start_step:
    raise RuntimeError(f"Checkpoint inconsistency: data position {position} != step {start_step}.")
  if is_chief and start_step == 0:
    writer.write_hparams({k: str(v) for k, v in config_lib.flatten(config.to_dict()).items()})
    logging.info("Parameters: %d", sum(x.size for x in jax.tree.leaves(state["params"])))

  batches = pipeline.make_iterator(config, source=source, start_step=start_step,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count())
  logging.info("Batches: %r", batches)
  train_step = jit_train_step(model, tx, config, mesh, state_shardings, conditioning)
  sample_fn = None
  loop_eval = None
  last_eval = None  # The latest in-loop evaluation's record, summarised on stdout at the end.

  total = int(config.total_steps)
  pending: list[dict[str, jax.Array]] = []
  last_log_time, last_log_step = time.time(), start_step
  start_time = time.time()
  step = start_step
  preempted = False
  preemption = _PreemptionFlag()
  preemption.install()
  try:
    while step < total:
      local_batch = next(batches)
      _check_batch(local_batch, config.dataset, batches.local_batch_size, batches.low_resolution)
      batch = sharding.global_batch(local_batch, mesh)
      state, metrics = train_step(state, batch)
      step += 1
      pending.append(metrics)

      preempted = preemption.requested or manager.reached_preemption(step)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        preempted = bool(np.any(multihost_utils.process_allgather(np.asarray(preempted))))
      is_log_step = step % int(config.log_every_steps) == 0 or step == total or preempted
      is_checkpoint_step = (step % int(config.checkpoint_every_steps) == 0 or step == total
                            or preempted)

      if is_log_step or is_checkpoint_step:
        # Checked before anything is saved, so a checkpoint never follows a bad step unnoticed.
        nonfinite = int(jax.device_get(state["nonfinite_steps"]))
        if nonfinite and config.nonfinite_loss == "stop":
          manager.wait_until_finished()
          raise NonFiniteLossError(
              f"Non-finite loss or gradient within the last {len(pending)} steps (before step "
              f"{step}); the update was not applied. The last good checkpoint "
              f"(step {manager.latest_step()}) in {manager.directory} is intact. Lower the learning "
              "rate or set --config.nonfinite_loss=skip to skip such steps.")

      if is_log_step:
        fetched = jax.device_get(pending)
        now = time.time()
        steps_per_sec = (step - last_log_step) / max(now - last_log_time, 1e-9)
        record = {
            "step": step,
            "loss": float(np.mean([m["loss"] for m in fetched])),
            "learning_rate": float(fetched[-1]["learning_rate"]),
            "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
            "steps_per_sec": steps_per_sec,
            "nonfinite_steps": int(jax.device_get(state["nonfinite_steps"])),
            "step_losses": [float(m["loss"]) for m in fetched],
        }
        if is_chief:
          evaluate.append_jsonl(metrics_path, record)
        writer.write_scalars(step, {k: v for k, v in record.items() if k != "step_losses"})
        eta = (total - step) / max(steps_per_sec, 1e-9)
        logging.info("step %d/%d  loss %.4f  lr %.2e  %.2f steps/s  ETA %s", step, total,
                     record["loss"], record["learning_rate"], steps_per_sec, _format_eta(eta))
        pending.clear()
        last_log_time, last_log_step = now, step

      if is_checkpoint_step:
        checkpointing.save(manager, state, batches.position, config)

      if preempted:
        manager.wait_until_finished()
        logging.warning("Preemption: checkpoint at step %d is durable; exiting.", step)
        break

      sample_every = int(config.sample_every_steps)
      if sample_every and (step % sample_every == 0 or step == total):
        if sample_fn is None:
          sample_fn = generate.make_sample_fn(
              model, config, sampler=config.sampling.sampler, steps=int(config.sampling.steps),
              guidance=float(config.sampling.guidance))
        _write_sample_grid(sample_fn, state, config, workdir, step, conditioning, source)

      eval_every = int(config.eval_every_steps)
      if eval_every and (step % eval_every == 0 or step == total):
        if loop_eval is None:  # Loads Inception, reference statistics (and the CAS classifier).
          loop_eval = evaluate.LoopEvaluation(config, model, mesh, workdir, writer)
        last_eval = loop_eval(state, step, batches.position)  # metrics.jsonl, writer, best ckpt.

    # The final evaluation is part of a complete run: a preemption at the last step (after its
    # checkpoint, before the evaluation) or a crash inside it leaves it to the restart, which
    # finds step == total and no record for it.
    if (not preempted and step == total and int(config.eval_every_steps)
        and not _evaluated_at(metrics_path, total)):
      logging.info("Step %d has no evaluation record yet: running the final evaluation.", total)
      if loop_eval is None:
        loop_eval = evaluate.LoopEvaluation(config, model, mesh, workdir, writer)
      last_eval = loop_eval(state, step, batches.position)

  finally:
    # Also when the loop raises (NonFiniteLossError, a bad batch): in a process that carries on
    # (a notebook, a sweep) grain's workers and the SIGTERM handler must not outlive the run.
    preemption.uninstall()
    batches.close()  # Stops the decoding threads or grain's worker processes.
    if loop_eval is not None:
      loop_eval.close()
  manager.wait_until_finished()
  checkpointing.close(manager)
  writer.flush()
  if preempted:
    raise exit_status.Preempted(step, str(manager.directory))
  logging.info("Done at step %d in %.1f s.", step, time.time() - start_time)
  if is_chief and last_eval is not None:
    print(evaluate.summary(last_eval, config), flush=True)
  return state


def _check_workdir(workdir: str) -> None:
  """Rejects a workdir that can never hold a run, before any data is prepared or written."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise ValueError(f"--workdir={workdir}: is a file, not a directory; pass a directory (it is "
                     "created if missing).")


def _make_workdir(workdir: str) -> None:
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ValueError(f"--workdir={workdir}: cannot be created ({error.strerror or error}); pass "
                     "a directory that can be created and written.") from None
  if "://" not in str(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir={workdir}: is not writable; pass a directory that can be "
                     "written.")


class _LoggingOnlyWriter:
  """Stands in for clu's metric writer without TensorFlow: metrics.jsonl and the log have it all."""

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    del step, scalars

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    del hparams

  def flush(self) -> None:
    pass


def _make_writer(workdir: str, is_chief: bool):
  """clu's writer (TensorBoard events on the chief) where TensorFlow imports, else logging only."""
  try:
    from clu import metric_writers  # noqa: PLC0415 -- imports TensorFlow; keep it off import paths.
  except ImportError as error:
    logging.warning(
        "No TensorBoard events (%s): metrics go to metrics.jsonl and the log only. Install the "
        "'tf' extra (pip install -e '.[tf]') for TensorBoard.", error)
    return _LoggingOnlyWriter()
  return metric_writers.create_default_writer(workdir, just_logging=not is_chief)


def _check_batch(batch: dict[str, np.ndarray], dataset_config: ml_collections.ConfigDict,
                 local_batch_size: int, low_resolution: int = 0) -> None:
  """The pipeline's contract with the train step (host-side, a few comparisons per step)."""
  size, channels = int(dataset_config.image_size), int(dataset_config.channels)
  chex.assert_shape(batch["image"], (local_batch_size, size, size, channels))
  chex.assert_type(batch["image"], np.float32)
  chex.assert_shape(batch["label"], (local_batch_size,))
  chex.assert_type(batch["label"], int)
  if low_resolution:
    chex.assert_shape(batch["low_res"], (local_batch_size, low_resolution, low_resolution, channels))


def _make_source_chief_first(dataset_config: ml_collections.ConfigDict):
  """Process 0 prepares a dataset that needs preparing (Fashion-MNIST) before the others read it."""
  if jax.process_count() == 1:
    return pipeline.make_source(dataset_config)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  source = pipeline.make_source(dataset_config) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("rin_diffusion_dataset_prepared")
  return source if source is not None else pipeline.make_source(dataset_config)


def _write_sample_grid(sample_fn, state, config, workdir: str, step: int,
                       conditioning: Conditioning | None, source) -> None:
  """samples/step_<N>.png; a super-resolution stage's grid interleaves rows of its inputs.

  Such a stage is conditioned on the first examples of the training source (the same on every
  process), augmented at config.cascade.sample_level.
  """
  key = jax.random.fold_in(jax.random.key(int(config.seed) + 1), step)
  num_samples = int(config.sampling.num_samples)
  path = os.path.join(workdir, "samples", f"step_{step}.png")
  if conditioning is None:
    labels = generate.class_labels(config, num_samples, config.sampling.classes)
    images = np.asarray(jax.device_get(sample_fn(state["ema_params"], key, jnp.asarray(labels))))
    if jax.process_index() == 0:
      generate.save_grid(images, path, columns=int(np.sum(labels == labels[0])))
    return
  real = pipeline.first_examples(source, config.dataset, num_samples,
                                 int(config.cascade.low_resolution))
  num_samples = len(real["label"])
  extras = conditioning.grid({"low_res": jnp.asarray(real["low_res"])}, key)
  images = np.asarray(jax.device_get(
      sample_fn(state["ema_params"], key, jnp.asarray(real["label"]), extras)))
  if jax.process_index() == 0:
    size = images.shape[1]
    factor = size // real["low_res"].shape[1]
    inputs = np.repeat(np.repeat(real["low_res"], factor, axis=1), factor, axis=2)  # Nearest.
    columns = min(10, num_samples)
    rows = []  # Input row, sample row, input row, ...
    for start in range(0, num_samples, columns):
      rows += [inputs[start:start + columns] * 0.5 + 0.5, images[start:start + columns]]
    generate.save_grid(np.concatenate(rows), path, columns=columns)


def _evaluated_at(metrics_path: str, step: int) -> bool:
  """Whether metrics.jsonl holds an evaluation record of `step` (the same answer on every process,
  which the collective evaluation needs)."""
  found = jax.process_index() == 0 and fileio.has_eval_record(metrics_path, step)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    found = bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
  return found


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
