"""Training an amortized protector (``decontext.methods.amortized.Protector``) through the editor seam.

Each step draws a batch of training images at the working size, adds the protector's perturbation, and
climbs the method's own loss through the editor (``method.loss``, exactly what PGD climbs; nothing is
re-implemented), so the gradient reaches the protector's weights through the frozen editor. Any
registered method or composition works; methods that take per-image draws (``Method.batched``) see the
whole batch in one forward, the others one image at a time.

Every random draw of step ``s`` (which images, crops, the method's prompts, noise levels and noise, EOT)
comes from generators seeded by (seed, s), so a run killed and resumed from its last checkpoint makes
the same weights as one that was never stopped (bit-identical on the CPU). Checkpoints are written
atomically every ``checkpoint_every`` steps; held-out images are scored with the method's own measure
every ``validate_every`` steps.

    python -m decontext amortize --model toy --method decontext --eps 16 --images toy-train --steps 3000 \\
        --out runs/protectors/toy-decontext

Attackers in the loop (``--attackers``): each step's protected batch goes through one, drawn uniformly; the
learned remover (``remover``) is trained here, in turn with the protector (``AdaptiveRemover``: adversarial
training, its weights and Adam state checkpointed with the protector's).

Images: ``toy-train`` (the toy world's training identities, rendered on the fly; never the held-out
ones, which validation uses) or a folder of photos (random square crops resized to the working size;
every tenth file, in sorted order, is held out for validation).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

TOY_TRAIN = "toy-train"  # the toy world's training identities (v1); "toy-train:v3" = another world's


def toy_world_of(spec: str):
    """The toy world module an --images value names (``toy-train`` = v1, ``toy-train:v3``), else None."""
    if spec == TOY_TRAIN or spec.startswith(TOY_TRAIN + ":"):
        from .toy.worlds import get_world

        return get_world(spec.partition(":")[2] or None)
    return None


STATE_FILE, OPTIMIZER_FILE, LOG_FILE = "state.json", "optimizer.pt", "validation.json"


@dataclass
class TrainConfig:
    """Everything the trained weights depend on (its digest guards resume)."""

    model: str = "toy"
    family: str = "flux_kontext"
    method: str = "decontext"
    method_options: dict = field(default_factory=dict)
    eps: float = 16.0
    images: str = TOY_TRAIN
    size: int = 64  # working size (square) the protector trains at
    batch_size: int = 8  # per process (under accelerate launch, each of N processes takes its share of N x this)
    steps: int = 3000
    lr: float = 3e-4
    seed: int = 0
    eot: tuple = ()
    architecture: dict | None = None
    # attackers in the loop (decontext.attackers specs, e.g. none, regen:t=0.3, jpeg): each step's batch goes
    # through one, drawn like EOT's breakers; differentiable where the attacker is, straight-through where not
    attackers: tuple = ()
    # an ensemble: more editors ("family:model") trained against at once, each term's gradient balanced
    ensemble: tuple = ()
    # the learned remover in the loop (``remover`` among the attackers, ``AdaptiveRemover``): every
    # ``remover_every`` protector steps it takes ``remover_steps`` Adam steps on that step's training batch
    remover_every: int = 1
    remover_steps: int = 2

    def digest(self) -> str:
        fields = asdict(self)
        for name in ADDED_FIELDS:  # left out at their defaults: the recipes trained before them keep their digests
            if not fields[name]:
                del fields[name]
        if not any(is_remover(spec) for spec in self.attackers):  # they change nothing without a remover to train
            for name in REMOVER_FIELDS:
                del fields[name]
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


ADDED_FIELDS = ("attackers", "ensemble")
# in the digest only when the recipe trains a remover (then always, defaults included: a recipe that trains one
# names its schedule); without one they are left out, so every recipe without a remover keeps its digest
REMOVER_FIELDS = ("remover_every", "remover_steps")


def is_remover(spec: str) -> bool:
    """Whether an ``--attackers`` spec is the learned remover (``remover`` or ``remover:width=...``)."""
    return str(spec).partition(":")[0] == "remover"


@dataclass
class RunOptions:
    """How the training runs, not what it learns (not part of the digest)."""

    checkpoint_every: int = 200
    validate_every: int = 500
    val_count: int = 8
    val_draws: int = 2
    device: str = "auto"
    dtype: str = "auto"
    checkpointing: bool = False
    progress: bool = True
    stop_after: int | None = None  # end (after a checkpoint) once this many steps are done: a planned interruption


# ---------------------------------------------------------------------------------------------- data
class ImageSource:
    """Training batches and validation images at the working size, drawn reproducibly from (seed, step)."""

    def __init__(self, spec: str, size: int, seed: int):
        self.spec, self.size, self.seed = spec, int(size), int(seed)
        self.world = toy_world_of(spec)
        if self.world is not None:
            self.identities = self.world.train_identities()
            self.files = []
        else:
            from .images import list_images

            files = sorted(list_images(spec))
            if len(files) < 2:
                raise ValueError(
                    f"--images {spec}: need at least 2 images (every tenth is held out for validation), "
                    f"found {len(files)}"
                )
            self.val_files = files[::10]
            self.files = [f for f in files if f not in set(self.val_files)]

    def digest(self) -> str:
        """What was trained on: the toy's training identities, or the SHA-256 of every training file."""
        h = hashlib.sha256()
        if self.world is not None:
            h.update(
                repr([asdict(i) if hasattr(i, "__dataclass_fields__") else repr(i) for i in self.identities]).encode()
            )
        else:
            for f in self.files:
                h.update(f.name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest()

    def _sized(self, rgb: np.ndarray) -> torch.Tensor:
        """A toy render (square) at the working size, as a (3, S, S) tensor in [0, 1]."""
        if rgb.shape[0] != self.size:
            from PIL import Image

            rgb = np.asarray(Image.fromarray(rgb).resize((self.size, self.size), Image.BICUBIC))
        return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)

    def _square(self, rgb: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        from PIL import Image

        height, width = rgb.shape[:2]
        side = int(min(height, width) * rng.uniform(0.7, 1.0))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(rgb[top : top + side, left : left + side]).resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def scenes(self, step: int, count: int) -> list:
        """The toy scenes of step ``step``'s batch (what ``batch`` renders), each of a training identity."""
        rng = np.random.default_rng([self.seed, step, 1])
        return [self._scene(rng) for _ in range(count)]

    def _scene(self, rng: np.random.Generator):
        identity = self.identities[int(rng.integers(len(self.identities)))]
        if self.world.is_held_out(identity):  # train_identities never holds one: checked on every draw all the same
            raise AssertionError(f"a held-out identity among the training draws: {identity}")
        return self.world.sample_scene(identity, seed=int(rng.integers(2**31)))

    def batch(self, step: int, count: int) -> torch.Tensor:
        """Step ``step``'s training images: the protector's batch, and the only images the learned remover in
        the loop trains on (never a held-out identity or a validation file)."""
        if self.world is not None:
            return torch.stack([self._sized(self.world.render(scene)) for scene in self.scenes(step, count)])
        from .images import load_image

        rng = np.random.default_rng([self.seed, step, 1])
        picks = rng.integers(len(self.files), size=count)
        return torch.stack([self._square(load_image(self.files[int(i)]).rgb8, rng) for i in picks])

    def validation(self, count: int) -> torch.Tensor:
        if self.world is not None:
            world = self.world
            held_out = world.eval_identities()[:count]
            return torch.stack(
                [self._sized(world.render(world.sample_scene(i, seed=10_000 + k))) for k, i in enumerate(held_out)]
            )
        from .images import load_image

        rng = np.random.default_rng([self.seed, 0, 2])
        return torch.stack([self._square(load_image(f).rgb8, rng) for f in self.val_files[:count]])


# ---------------------------------------------------------------------------------------------- the loop
def _generators(seed: int, step: int, count: int, member: int = 0) -> list[torch.Generator]:
    """The draws of one training step's images: of the run's editor (``member`` 0), or of ensemble member
    ``member`` >= 1 (its own stream, so no two editors share a draw)."""
    key = [seed, step, 3] if member == 0 else [seed, step, 5, member]
    return [
        torch.Generator().manual_seed(int(np.random.SeedSequence([*key, i]).generate_state(1)[0])) for i in range(count)
    ]


def objective(method, editor, x: torch.Tensor, size, step: int, generators: list[torch.Generator]) -> torch.Tensor:
    """The method's loss (to maximise) of a batch, averaged over its images: one forward for a method that
    takes per-image draws, else one image at a time."""
    if method.batched:
        loss, _ = method.loss(editor, x, size, step, generators)
        return loss.mean()
    return torch.stack(
        [method.loss(editor, x[i : i + 1], size, step, [generators[i]])[0].reshape(()) for i in range(len(x))]
    ).mean()


def ensemble_objective(members, x: torch.Tensor, size, step: int, generators: list) -> torch.Tensor:
    """The mean of each (method, editor, generators) member's ``objective``; with gradient, each member's gradient
    through ``x`` scaled to unit mean |g| first (``composite.unit_gradient``), so no editor decides the step alone
    because its loss has a larger scale. One member: its ``objective`` unchanged."""
    from .methods.composite import unit_gradient, with_gradient

    if len(members) == 1:
        method, editor = members[0]
        return objective(method, editor, x, size, step, generators[0])
    values = [objective(m, e, x, size, step, g) for (m, e), g in zip(members, generators, strict=True)]
    if not x.requires_grad:
        return torch.stack(values).mean()
    direction = sum(unit_gradient(value, x, retain_graph=False) for value in values) / len(values)
    return with_gradient(torch.stack([v.detach() for v in values]).mean(), x, direction)


def parse_member(spec: str) -> tuple[str, str]:
    """``family:model`` (``flux_kontext:toy-v2``, ``instruct_pix2pix:toy-ip2p``) of ``--ensemble``."""
    family, sep, model = str(spec).partition(":")
    if not sep or not family or not model:
        raise ValueError(f"--ensemble {spec!r}: write FAMILY:MODEL, e.g. flux_kontext:toy-v2")
    return family, model


class StraightThrough:
    """An attacker without a differentiable version, shaped like a breaker for ``purify.EOT``: the real attack
    forward (8-bit, seeded from the step's generator), the identity backward."""

    def __init__(self, attacker, state=None, world=None):
        self.attacker, self.state, self.world = attacker, state, world

    @property
    def label(self) -> str:
        return self.attacker.label + "_st"

    def differentiable(self, editor=None):
        from .attackers import AttackContext

        def attack(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            seed = int(torch.randint(2**31, (), generator=generator))
            images = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            out = self.attacker.apply(images, seed, self.state, AttackContext(editor=editor, world=self.world))
            real = torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
            return x + (real - x).detach()

        return attack


REMOVER_FILE, REMOVER_OPTIMIZER_FILE = "remover.safetensors", "remover_optimizer.pt"


class AdaptiveRemover:
    """The learned remover in the loop (``--attackers remover``): adversarial training. The trainer keeps its own
    small image-to-image net R (``attackers.small_unet``, the benchmark remover's width and learning rate, from
    the spec's parameters) and trains it in turn with the protector: on a step it is due (every ``every`` steps,
    from step 0) R takes ``steps`` Adam steps on MSE(R(protected), clean), the protector's current output on that
    step's batch detached; then, when the step's draw picks the remover, the protected batch goes through R (its
    weights frozen; the gradient flows through R to the protector). Shaped like a breaker for ``purify.EOT``.

    Its only data is what ``update`` is given: in ``train``, the batch of ``ImageSource.batch`` (training
    identities or training files; never a held-out one). Its initial weights come from the run's seed; its
    updates draw nothing (full-batch steps), so its weights and Adam state in the checkpoint resume it exactly."""

    label = "remover_adaptive"

    def __init__(self, attacker, seed: int, every: int = 1, steps: int = 2, device="cpu"):
        from .attackers import NetState, small_unet

        self.attacker, self.every, self.steps = attacker, int(every), int(steps)
        with torch.random.fork_rng(devices=[]):  # its own stream: the trainer's global RNG is left as it was
            torch.manual_seed(int(np.random.SeedSequence([seed, 7]).generate_state(1)[0]))
            self.net = small_unet(3, int(attacker.params["width"])).to(device)
        self.net.requires_grad_(False)  # frozen except in its own update
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=float(attacker.params["lr"]))
        self.state = NetState(self.net, {"kind": "learned remover in the loop", "width": attacker.params["width"]})

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def update(self, clean: torch.Tensor, protected: torch.Tensor) -> float:
        """``steps`` Adam steps on MSE(R(protected), clean) (images in [0, 1], scored in [-1, 1] as the benchmark's
        remover); nothing flows back to the protector. Returns the MSE before the last step."""
        inputs, target = protected.detach().float() * 2 - 1, clean.detach().float() * 2 - 1
        self.net.requires_grad_(True)
        try:
            for _ in range(self.steps):
                loss = torch.nn.functional.mse_loss(self.net(inputs), target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            self.net.requires_grad_(False)
        return float(loss.detach())

    def differentiable(self, editor=None):
        """R as an EOT case: the benchmark remover's differentiable twin (``Attacker.differentiable``) on R."""
        twin = self.attacker.differentiable(self.state, editor)
        return lambda x, generator: twin(x.float(), generator).to(x.dtype)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}, folder / REMOVER_FILE)
        torch.save(self.optimizer.state_dict(), folder / REMOVER_OPTIMIZER_FILE)

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self.net.load_state_dict(load_file(str(folder / REMOVER_FILE)))
        self.optimizer.load_state_dict(torch.load(folder / REMOVER_OPTIMIZER_FILE, weights_only=True))


def remover_attacker(config: TrainConfig):
    """The ``remover`` attacker of a recipe's ``--attackers`` (None without one), its settings checked: one at
    most, its width and lr as parameters (pairs and steps are the benchmark's fit; in the loop, the schedule is
    ``--remover-every`` / ``--remover-steps``), a working size it can run at."""
    from .attackers import KINDS, parse_attacker

    specs = [spec for spec in config.attackers if is_remover(spec)]
    if not specs:
        for name in REMOVER_FIELDS:
            if getattr(config, name) != TrainConfig.__dataclass_fields__[name].default:
                raise ValueError(
                    f"--{name.replace('_', '-')} {getattr(config, name)}: no remover to train "
                    "(add remover to --attackers)"
                )
        return None
    if len(specs) > 1:
        raise ValueError(f"--attackers {' '.join(specs)}: one remover at most")
    attacker = parse_attacker(specs[0])
    defaults = KINDS["remover"].defaults
    fixed = [key for key in ("pairs", "steps", "draw") if attacker.params[key] != defaults[key]]
    if fixed:
        raise ValueError(
            f"--attackers {specs[0]}: {' and '.join(fixed)} set the benchmark's remover; the trainer's remover learns "
            "from each step's batch (--remover-steps N Adam steps every --remover-every K steps; width and lr apply)"
        )
    for name in REMOVER_FIELDS:
        if int(getattr(config, name)) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.size % 4:
        raise ValueError(f"--attackers {specs[0]}: the remover net needs --size a multiple of 4, got {config.size}")
    return attacker


def attackers_in_the_loop(specs, editor, world, remover: AdaptiveRemover | None = None):
    """The EOT cases of ``--attackers`` specs: each attacker's differentiable version (with its model: the regen
    denoiser, trained on the world's training renders only), else straight-through; a ``remover`` spec is
    ``remover``, the trainer's ``AdaptiveRemover`` (refused without one: it learns from the protection being
    trained, so only the trainer can keep it)."""
    from .attackers import AttackContext, parse_attacker

    cases = []
    for spec in specs:
        attacker = parse_attacker(spec)
        if attacker.kind == "remover":
            if remover is None:
                raise ValueError(
                    f"--attackers {spec}: the learned remover is trained beside the protector (amortize.train "
                    "keeps it); not an attacker the trainer can run in the loop without it"
                )
            cases.append(remover)
            continue
        if attacker.needs == "protection" or attacker.derived:
            raise ValueError(f"--attackers {spec}: not an attacker the trainer can run in the loop")
        state = attacker.fit(AttackContext(editor=editor, world=world))
        try:
            attacker.differentiable(state, editor)
            cases.append(attacker.bound(state))
        except ValueError:
            cases.append(StraightThrough(attacker, state, world))
    return cases


def _save_checkpoint(
    folder: Path, protector, optimizer, step: int, config: TrainConfig, log: list, remover=None, remover_mse=None
) -> None:
    """Atomically: weights, optimizer state and the step (and the remover in the loop's weights, Adam state and
    last loss), in a new folder renamed over the old one."""
    part = folder.with_name(folder.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    protector.save(part, {"checkpoint_of": config.digest()})
    torch.save(optimizer.state_dict(), part / OPTIMIZER_FILE)
    state = {"step": step, "config_digest": config.digest(), "validation": log}
    if remover is not None:
        remover.save(part)
        state["remover_mse"] = remover_mse
    (part / (STATE_FILE + ".tmp")).write_text(json.dumps(state))
    (part / (STATE_FILE + ".tmp")).replace(part / STATE_FILE)  # last, whole: it marks the folder complete
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)  # a kill during the last swap's clean-up can leave it behind
    if folder.exists():
        folder.rename(old)
    part.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _recover_checkpoint(folder: Path) -> None:
    """Finish a checkpoint swap a kill interrupted (``_save_checkpoint``): with ``folder`` gone, ``.part`` is the
    newer complete checkpoint (it is written in full before any rename), else ``.old`` the previous one."""
    if folder.exists():
        return
    for candidate in (folder.with_name(folder.name + ".part"), folder.with_name(folder.name + ".old")):
        if (candidate / STATE_FILE).is_file():
            candidate.rename(folder)
            return


def train(config: TrainConfig, out: str | Path, options: RunOptions | None = None, log=print) -> dict:
    """Train (or resume) a protector into ``out``: ``out/protector.{safetensors,json}`` when done,
    ``out/checkpoint/`` while running. Returns the final protector.json."""
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from .editors import load_editor
    from .methods import build_from_options
    from .methods.amortized import Protector
    from .protect import eot_transform

    options = options or RunOptions()
    remover_spec = remover_attacker(config)  # its settings refused before any model loads
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint"
    accelerator = Accelerator(
        cpu=options.device == "cpu", mixed_precision="bf16" if options.dtype == "bfloat16" else "no"
    )
    if remover_spec is not None and accelerator.num_processes > 1:
        raise ValueError(
            f"--attackers {remover_spec.spec}: the remover in the loop trains in one process "
            f"(not under accelerate launch with {accelerator.num_processes} processes)"
        )
    editor = load_editor(
        config.model, config.family, accelerator.device if options.device == "auto" else options.device, options.dtype
    )
    if options.checkpointing:
        editor.enable_gradient_checkpointing()
    method = build_from_options(config.method, dict(config.method_options))
    members = [(method, editor)]
    for spec in config.ensemble:
        member_family, member_model = parse_member(spec)
        member = load_editor(member_model, member_family, editor.device, options.dtype)
        if options.checkpointing:
            member.enable_gradient_checkpointing()
        members.append((build_from_options(config.method, dict(config.method_options)), member))
    for member_method, member in members:
        member_method.check_applies(member)
    source = ImageSource(config.images, config.size, config.seed)
    size = tuple(editor.working_size(config.size, config.size, "native"))
    for _, member in members:
        member_size = tuple(member.working_size(config.size, config.size, "native"))
        if member_size != (config.size, config.size):
            raise ValueError(
                f"--size {config.size} is not a working size of the {member.family} editor {member.name} "
                f"(nearest {member_size}); "
                "use a multiple of its patch size"
            )
    torch.manual_seed(config.seed)
    protector = Protector(config.architecture, config.eps)
    optimizer = torch.optim.Adam(protector.parameters(), lr=config.lr)
    remover = (
        None
        if remover_spec is None
        else AdaptiveRemover(remover_spec, config.seed, config.remover_every, config.remover_steps, editor.device)
    )
    remover_mse = None  # the remover's loss at its last update (validation entries carry it)
    step, history = 0, []
    _recover_checkpoint(checkpoint)
    if (checkpoint / STATE_FILE).is_file():
        state = json.loads((checkpoint / STATE_FILE).read_text())
        if state["config_digest"] != config.digest():
            raise ValueError(
                f"{checkpoint}: a checkpoint of another training recipe "
                f"(digest {state['config_digest']} vs {config.digest()}); "
                "train into another folder, or delete it to start over"
            )
        protector.net.load_state_dict(load_file(str(checkpoint / "protector.safetensors")))
        optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_FILE, weights_only=True))
        step, history = int(state["step"]), list(state["validation"])
        if remover is not None:
            remover.load(checkpoint)
            remover_mse = state.get("remover_mse")
        log(f"resuming {out} at step {step}")
    protector, optimizer = accelerator.prepare(protector, optimizer)
    attackers = attackers_in_the_loop(config.attackers, editor, source.world, remover) if config.attackers else ()
    transform = eot_transform(config.eot, editor, attackers)
    validation = source.validation(options.val_count).to(editor.device)
    model = accelerator.unwrap_model(protector)
    began = time.perf_counter()

    def validate(at: int) -> dict:
        model.eval()
        scores = []
        with torch.no_grad():
            protected = (validation + model(validation)).clamp(0, 1)
            for member_method, member in members:
                member_method.start(member, validation, size)  # methods that compare with the clean photo
                clean = member_method.measure(member, validation, size, options.val_draws)
                scores.append((clean, member_method.measure(member, protected, size, options.val_draws)))
        model.train()
        entry = {"step": at, "clean": scores[0][0], "protected": scores[0][1]}
        if remover_mse is not None:
            entry["remover_mse"] = remover_mse
        if len(members) > 1:
            entry["ensemble"] = [
                {"editor": f"{m.family}:{m.name}", "clean": c, "protected": p}
                for (_, m), (c, p) in zip(members[1:], scores[1:], strict=True)
            ]
        return entry

    with contextlib.ExitStack() as sessions:
        for member_method, member in members:
            sessions.enter_context(member_method.session(member))
        if step == 0:
            history.append(validate(0))  # the untrained protector: the yardstick of the log
        bar = tqdm(total=config.steps, initial=step, desc="protector", disable=not options.progress, dynamic_ncols=True)
        while step < config.steps:
            # Under `accelerate launch`, each process takes its share of one larger batch
            # (the same draws as one process).
            world, rank = accelerator.num_processes, accelerator.process_index
            x0 = source.batch(step, config.batch_size * world)[rank::world].to(editor.device)
            count = config.batch_size * world
            generators = [_generators(config.seed, step, count, k)[rank::world] for k in range(len(members))]
            for member_method, member in members:
                member_method.start(member, x0, size)
            x = (x0 + protector(x0)).clamp(0, 1)
            if remover is not None and remover.due(step):  # R first learns to undo this very batch, then faces it
                remover_mse = remover.update(x0, x)
            if transform is not None:
                x = transform(
                    x,
                    torch.Generator().manual_seed(
                        int(np.random.SeedSequence([config.seed, step, 4]).generate_state(1)[0])
                    ),
                )
            with accelerator.autocast():
                value = ensemble_objective(members, x, size, step, generators)
            if not torch.isfinite(value):
                raise FloatingPointError(f"non-finite loss at training step {step}")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(-value)  # climb the method's loss
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{float(value.detach()):.4f}")
            if step % options.validate_every == 0 or step == config.steps:
                history.append(validate(step))
                log(f"step {step}: held-out {history[-1]['clean']} -> {history[-1]['protected']}")
            if accelerator.is_main_process and (step % options.checkpoint_every == 0 or step == config.steps):
                _save_checkpoint(checkpoint, model, optimizer, step, config, history, remover, remover_mse)
            if options.stop_after is not None and step >= options.stop_after:
                if accelerator.is_main_process:
                    _save_checkpoint(checkpoint, model, optimizer, step, config, history, remover, remover_mse)
                bar.close()
                return {"stopped_at": step}
        bar.close()
    record = {
        "editor": {"family": config.family, "model": config.model},
        **({"ensemble": [{"family": m.family, "model": m.name} for _, m in members[1:]]} if config.ensemble else {}),
        "method": {"method": config.method, "options": config.method_options},
        "working_size": list(size),
        "recipe": {**asdict(config), "digest": config.digest()},
        "data_digest": source.digest(),
        "steps": step,
        "validation": history,
        "seconds": round(time.perf_counter() - began, 1),
        "command": "python -m decontext amortize " + " ".join(recipe_flags(config)),
    }
    if accelerator.is_main_process:
        model.save(out, record)
    return json.loads((out / "protector.json").read_text())


def recipe_flags(config: TrainConfig) -> list[str]:
    """The command-line flags that reproduce ``config``."""
    flags = [
        "--model",
        config.model,
        "--family",
        config.family,
        "--method",
        config.method,
        "--eps",
        f"{config.eps:g}",
        "--images",
        config.images,
        "--size",
        str(config.size),
        "--batch-size",
        str(config.batch_size),
        "--steps",
        str(config.steps),
        "--lr",
        f"{config.lr:g}",
        "--seed",
        str(config.seed),
    ]
    for key, value in config.method_options.items():
        flags += [
            f"--{key.replace('_', '-')}",
            *(str(v) for v in (value if isinstance(value, (list, tuple)) else [value])),
        ]
    if config.eot:
        flags += ["--eot", *config.eot]
    if config.attackers:
        flags += ["--attackers", *config.attackers]
    if any(is_remover(spec) for spec in config.attackers):
        flags += ["--remover-every", str(config.remover_every), "--remover-steps", str(config.remover_steps)]
    if config.ensemble:
        flags += ["--ensemble", *config.ensemble]
    if config.architecture is not None and config.architecture.get("fold"):
        flags += ["--architecture", f"fold{config.architecture['fold']}"]
    elif config.architecture is not None and config.architecture.get("add_attention") is False:
        flags += ["--architecture", "conv"]
    elif config.architecture is None and config.size > 256:
        flags += ["--architecture", "small"]
    return flags


def parameters_count(architecture: dict | None = None) -> int:
    from .methods.amortized import Protector

    return Protector(architecture).parameters_count()


__all__ = [
    "AdaptiveRemover",
    "RunOptions",
    "TOY_TRAIN",
    "TrainConfig",
    "ImageSource",
    "attackers_in_the_loop",
    "ensemble_objective",
    "objective",
    "recipe_flags",
    "train",
]
