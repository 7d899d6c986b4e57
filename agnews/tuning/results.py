"""A study's results: the leaderboard and `best.yaml`, the best trial's settings over the base run's."""

from datetime import datetime, timezone
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from agnews.atomic import atomic_file
from agnews.errors import AGNewsError
from agnews.tuning.space import OBJECTIVE


def flags_to_dict(flags: list[str]) -> dict:
    """`--a.b value` / `--a.b=value` pass-through fit flags as a nested dict (for best.yaml)."""
    nested: dict = {}
    i = 0
    while i < len(flags):
        flag = flags[i]
        if not flag.startswith("--"):
            raise AGNewsError(f"fit flag {flag!r} after '--' should be --name value")
        if "=" in flag:
            key, value = flag[2:].split("=", 1)
            i += 1
        elif i + 1 < len(flags):
            key, value = flag[2:], flags[i + 1]
            i += 2
        else:
            raise AGNewsError(f"fit flag {flag} after '--' has no value")
        if key == "config":
            raise AGNewsError("give the base config as the search's --config, not after '--'")
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return nested


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def settings_base(config: str | None, fit_flags: list[str]) -> dict:
    base = yaml.safe_load(Path(config).read_text()) if config else {}
    return merge(base or {}, flags_to_dict(fit_flags))


def leaderboard(study: optuna.Study, top: int = 10) -> str:
    done = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    names = list(done[0].params) if done else []
    lines = [
        f"| rank | trial | {OBJECTIVE} | minutes | " + " | ".join(names) + " |",
        "|---:|---:|---:|---:|" + "---|" * len(names),
    ]
    for rank, t in enumerate(done[:top], 1):
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in (t.params.get(n) for n in names)]
        lines.append(
            f"| {rank} | {t.number} | {t.value:.4f} | {t.user_attrs.get('minutes', '')} | " + " | ".join(cells) + " |"
        )
    counts = {
        s.name.lower(): len(study.get_trials(states=(s,)))
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    lines.append("")
    lines.append(f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed or interrupted")
    return "\n".join(lines) + "\n"


def report(study: optuna.Study, space: dict, folder: Path, base: dict, trial_time: str | None) -> None:
    board = leaderboard(study)
    (folder / "leaderboard.md").write_text(f"# Study {study.study_name}\n\n{board}")
    print(board)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    if not done:
        return
    best = max(done, key=lambda t: t.value)
    settings = dict(base)
    for name, value in best.params.items():
        part, key = space[name][0].split(".")
        settings = merge(settings, {part: {key: value}})
    if trial_time:
        settings = merge(settings, {"trainer": {"max_time": trial_time}})
    settings = merge(settings, {"checkpoint": {"monitor": OBJECTIVE, "mode": "max"}})
    header = (
        f"# Best of study {study.study_name}: trial {best.number}, {OBJECTIVE} {best.value:.4f} "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC).\n# python -m agnews.train fit --config {folder / 'best.yaml'}\n"
    )
    path = folder / "best.yaml"
    with atomic_file(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(settings, sort_keys=False))
    print(
        f"agnews: best trial {best.number} ({OBJECTIVE} {best.value:.4f}) -> {path}; leaderboard: {folder / 'leaderboard.md'}"
    )
