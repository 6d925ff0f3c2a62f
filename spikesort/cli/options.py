"""What ``spikesort run`` and ``spikesort batch`` share: one option per sorting parameter (generated
from :class:`spikesort.params.Params`), the parameter precedence, the help layout that lists the
sorting parameters apart, and the output folder checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from spikesort.errors import SpikesortError
from spikesort.params import Params


def _flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _num(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def _param_help(f: dataclasses.Field) -> str:
    m = f.metadata
    default = f.default
    if isinstance(default, tuple):
        shown = ",".join(f"{x:g}" for x in default)
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = str(default)
    rng = ""
    if m.get("lo") is not None:
        rng = f"; range {_num(m['lo'])}-{_num(m['hi'])}"
    return f"{m['help']} [{m['stage']}; default {shown}{rng}]"


def _param_options():
    """One click option per Params field, generated from its metadata; default None = not given."""
    options = []
    for f in dataclasses.fields(Params):
        m, default, dest = f.metadata, f.default, "p_" + f.name
        if isinstance(default, bool):
            flag = _flag_name(f.name)
            opt = click.Option([f"{flag}/--no-{flag[2:]}", dest], default=None, help=_param_help(f))
        elif m.get("choices"):
            opt = click.Option(
                [_flag_name(f.name), dest], type=click.Choice(m["choices"]), default=None, help=_param_help(f)
            )
        elif isinstance(default, tuple):
            opt = click.Option(
                [_flag_name(f.name), dest], type=str, default=None, metavar="A,B,..", help=_param_help(f)
            )
        elif isinstance(default, int):
            opt = click.Option([_flag_name(f.name), dest], type=int, default=None, help=_param_help(f))
        elif isinstance(default, float):
            opt = click.Option([_flag_name(f.name), dest], type=float, default=None, help=_param_help(f))
        else:
            opt = click.Option([_flag_name(f.name), dest], type=str, default=None, help=_param_help(f))
        options.append(opt)
    return options


def _with_param_options(cmd: click.Command) -> click.Command:
    cmd.params.extend(_param_options())
    return cmd


def _parse_set(values) -> dict:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpikesortError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def resolve_params(*, config: str | None, set_values=(), flags: dict | None = None) -> Params:
    """defaults < --config file < --set KEY=VALUE < dedicated flags (--detect-threshold ...)."""
    from spikesort.params import load_config

    params = Params()
    if config is not None:
        values = load_config(config)
        try:
            params = Params.from_dict(values, base=params)
        except SpikesortError as exc:
            raise SpikesortError(f"config file {config}: {exc}") from None
    if set_values:
        params = Params.from_dict(_parse_set(set_values), base=params)
    given = {k[2:]: v for k, v in (flags or {}).items() if v is not None}
    if given:
        params = Params.from_dict(given, base=params)
    return params


class _RunCommand(click.Command):
    """Lists the sorter parameters in their own help section."""

    def format_options(self, ctx, formatter):
        own, tuned = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
            if record:
                (tuned if (param.name or "").startswith("p_") else own).append(record)
        with formatter.section("Options"):
            formatter.write_dl(own)
        with formatter.section("Sorting parameters (also from --config FILE.toml or --set KEY=VALUE)"):
            formatter.write_dl(tuned)


# --------------------------------------------------------------------------- the output folder


def _check_output_folder(out: Path, *, overwrite: bool, protected: list[Path], resume: bool = False) -> None:
    if resume and overwrite:
        raise SpikesortError(
            "--resume and --overwrite exclude each other: --resume keeps the finished stages, --overwrite deletes them"
        )
    if out.exists():
        if not out.is_dir():
            raise SpikesortError(f"output path {out} is a file, not a folder")
        from spikesort.pipeline.checkpoints import is_resumable_folder, is_unfinished

        if resume and not is_resumable_folder(out):
            raise SpikesortError(
                f"output folder {out} exists but holds no spikesort run to resume: choose another output folder"
            )
        if not overwrite and not resume:
            what = " and holds an unfinished run: continue it with --resume, or" if is_unfinished(out) else ":"
            raise SpikesortError(f"output folder {out} exists{what} use --overwrite to replace it")
    else:
        parent = out.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise SpikesortError(f"cannot create output folder {out}: {parent} is a file")
    # --overwrite deletes the folder: never when it holds the inputs
    target = out.resolve()
    for p in protected:
        p = p.resolve()
        if p == target or target in p.parents:
            raise SpikesortError(f"output folder {out} contains the input {p}: choose another output folder")
