"""What every command line shares: picking the editor family, the model flags, the checks that need no
model, the exit codes (0 done, 1 some inputs failed, 2 bad arguments before anything was written), and
the environment a command runs in (quiet libraries, the attention backend of attacks).

Nothing here imports torch at module level: parsers and flag errors answer in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from ..editors import DEFAULT_FAMILY, FAMILIES, Family, family, family_of_model

# the commands and benches take these from here
from ..runtime import avoid_cudnn_attention, quiet_libraries  # noqa: F401


class ArgumentProblem(ValueError):
    """A flag's value that cannot work; the message names the flag."""


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def resolution_arg(value: str):
    if value in ("auto", "native"):
        return value
    try:
        side = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"resolution must be 'auto', 'native' or a number of pixels, got {value!r}"
        ) from None
    if side <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {side}")
    return side


# ---------------------------------------------------------------------------------------------- which family
def choose_family(argv: list[str] | None, given: str | None) -> Family:
    """The family a command runs: the one the script names (``given``), else ``--family``, else the
    family of ``--model`` (a toy's, a folder's model_index.json, a known hub id), else FLUX.1-Kontext.
    Read before the parser is built, so ``--help`` lists that family's own flags."""
    if given is not None:
        return family(given)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--family", "--editor", dest="family", default=None)
    pre.add_argument("--model", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.family:
        try:
            return family(known.family)
        except ValueError:
            return FAMILIES[DEFAULT_FAMILY]  # the full parser reports the bad value
    return FAMILIES[family_of_model(known.model) or DEFAULT_FAMILY]


def family_arg(value: str) -> str:
    try:
        return family(value).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_arguments(parser: argparse.ArgumentParser, spec: Family, role: str, fixed: bool) -> None:
    """--family (unless the script fixes it), --model, --device, --dtype, --max-megapixels and the family's own
    flags."""
    if not fixed:
        parser.add_argument(
            "--family",
            "--editor",
            dest="family",
            type=family_arg,
            default=spec.name,
            help=f"editor family: {', '.join(FAMILIES)} "
            f"(default: the --model's own, else {DEFAULT_FAMILY}; now {spec.name})",
        )
    parser.add_argument("--model", default="tiny", help=spec.model_help + _toy_note(spec))
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=None,
        help="refuse input images that declare more pixels than this (default: Pillow's bomb guard, ~89 MP)",
    )
    options = spec.options_for(role)
    if options:
        group = parser.add_argument_group(f"{spec.title} options")
        for option in options:
            option.flag.add_to(group)


def _toy_note(spec: Family) -> str:
    from ..toy.names import TOY_DEFAULTS, toy_versions

    versions = toy_versions(spec.name)
    if not versions:
        return ""
    return f". Toys here: 'toy' (= {TOY_DEFAULTS.get(spec.name)}), {', '.join(versions)}"


def family_load_options(spec: Family, role: str, args) -> dict:
    """The ``load`` arguments of the family's flags that were given (store-true flags always)."""
    return {
        o.load_as: getattr(args, o.flag.dest)
        for o in spec.options_for(role)
        if o.load_as is not None and getattr(args, o.flag.dest, None) is not None
    }


# ---------------------------------------------------------------------------------------------- checks without a model
def check_resolution(spec: Family, resolution, model: str) -> None:
    """A number of pixels below the family's minimum is refused before loading (the stock checkpoints;
    a tiny or toy model's own smaller multiple is checked once it is loaded, by ``check_loaded_resolution``)."""
    from ..toy.names import is_toy_model

    if isinstance(resolution, int) and model != "tiny" and not is_toy_model(model) and resolution < spec.min_resolution:
        raise ArgumentProblem(f"--resolution {resolution}: below the {spec.name} minimum of {spec.min_resolution} px")


def check_loaded_resolution(editor, resolution) -> None:
    if isinstance(resolution, int):
        try:
            editor.working_size(resolution, resolution, resolution)
        except ValueError as exc:
            raise ArgumentProblem(f"--resolution {resolution}: {exc}") from None


def check_paths(input_flag: str, input_path: str, output: str) -> None:
    """The input exists and the output is (or can become) a folder."""
    if not Path(input_path).exists():
        raise ArgumentProblem(f"{input_flag} {input_path}: no such file or folder")
    if Path(output).exists() and not Path(output).is_dir():
        raise ArgumentProblem(f"--output {output}: exists and is not a folder")


def apply_pixel_limit(args) -> None:
    if args.max_megapixels is not None:
        from ..images import set_pixel_limit

        try:
            set_pixel_limit(args.max_megapixels)
        except ValueError as exc:
            raise ArgumentProblem(str(exc)) from None


_SHARED: dict | None = None  # while ``shared_editors()`` is active: load key -> editor


def load_editor_for(spec: Family, role: str, args, device=None):
    from ..editors import load_editor

    options = family_load_options(spec, role, args)
    key = repr((args.model, spec.name, device or args.device, args.dtype, sorted(options.items())))
    if _SHARED is not None and key in _SHARED:
        return _SHARED[key]
    editor = load_editor(args.model, spec.name, device or args.device, args.dtype, **options)
    if _SHARED is not None:
        _SHARED[key] = editor
    return editor


@contextlib.contextmanager
def shared_editors():
    """Within: commands run in this process that load the same editor (model, family, device, dtype and
    options) get the one loaded first, e.g. ``decontext demo`` running attack and edit commands one after
    the other. Whatever a command prepares on it (embedded prompts) stays for the next; a prompt that needs
    text encoders an earlier command released fails loudly, so prepare every prompt first
    (``prepare(..., release=False)``)."""
    global _SHARED
    outer, _SHARED = _SHARED, {} if _SHARED is None else _SHARED
    try:
        yield _SHARED
    finally:
        _SHARED = outer
