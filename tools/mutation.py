"""Mutation testing of the math, one target at a time (docs/properties.md, "Mutation testing").

    python tools/mutation.py run schedule process   # mutate each target, run its guarding tests per mutant
    python tools/mutation.py run schedule 'minidiff.diffusion.schedule.x_spaced*'   # only these mutants
    python tools/mutation.py survivors schedule     # the surviving mutants, each with its diff
    python tools/mutation.py counts                 # killed / equivalent / other survivors / timed out

A target is a [mutation:NAME] section of setup.cfg: `mutate` (one source file) and `tests` (the fast
tests that guard it, as pytest node ids or files). The [mutmut] section holds the options every target
shares. mutmut 3 runs, for each mutant, only those selected tests that call the mutated function.

Each target runs in its own copy, mutants/NAME/ (git-ignored), laid out as the package installs:
kernels/ becomes minidiff/kernels/ (setup.py's package_dir), so mutmut names a kernel function by the
module the tests import (minidiff.kernels.reference), which it must to tell which tests call it.
Rerunning keeps each mutant's result while its function's source is unchanged.

tools/mutation_verdicts.txt gives a verdict on surviving mutants, one per line: the mutant's name, then
"equivalent: why" (no input can tell it from the original), "killed by hand: the test" (import-time
code, which mutmut's forked workers cannot see) or "other: why it lives on" (counted as surviving).
"""
import configparser
import filecmp
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"
VERDICTS = ROOT / "tools" / "mutation_verdicts.txt"
# (source in the repository, place in the copy): the copy is laid out as the package installs
TREES = (("minidiff", "minidiff"), ("kernels", "minidiff/kernels"), ("tests", "tests"))
FILES = ("pytest.ini",)
SKIP = ("__pycache__", ".hypothesis", ".pytest_cache")
# one thread per library: mutmut runs one mutant at a time on a small shared machine
THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _read_config():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    targets = {s.split(":", 1)[1]: cfg[s] for s in cfg.sections() if s.startswith("mutation:")}
    return cfg["mutmut"], targets


def _installed_path(path):
    """kernels/reference.py -> minidiff/kernels/reference.py (the copy's layout)."""
    for src, dst in TREES:
        if path.startswith(src + "/"):
            return dst + path[len(src):]
    raise ValueError(f"mutate must lie under one of {[s for s, _ in TREES]}; got {path!r}")


def _lines(value):
    return [line.strip() for line in value.splitlines() if line.strip()]


def _sync_file(src, dst):
    """Copy when the content differs; a fresh mtime tells mutmut to mutate the file again."""
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _sync_tree(src, dst):
    wanted = set()
    for path in src.rglob("*"):
        if path.is_file() and not any(part in SKIP for part in path.parts):
            rel = path.relative_to(src)
            wanted.add(rel)
            _sync_file(path, dst / rel)
    if dst.exists():
        for path in dst.rglob("*.py"):
            rel = path.relative_to(dst)
            inside_other_tree = rel.parts[0] == "kernels" and src.name == "minidiff"
            if rel not in wanted and not inside_other_tree and not any(p in SKIP for p in rel.parts):
                path.unlink()


def prepare(name, base, target):
    """Bring mutants/NAME/ up to date with the repository and write its setup.cfg."""
    work = WORK / name
    for src, dst in TREES:
        _sync_tree(ROOT / src, work / dst)
    for f in FILES:
        _sync_file(ROOT / f, work / f)
    lines = ["[mutmut]", "source_paths = minidiff", f"only_mutate = {_installed_path(target['mutate'])}",
             "also_copy =", *(f"    {f}" for f in FILES), "pytest_add_cli_args_test_selection ="]
    lines += [f"    {t}" for t in _lines(target["tests"])]
    options = {**base, **{k: v for k, v in target.items() if k not in ("mutate", "tests")}}
    for key, value in options.items():
        if not value.strip():
            continue  # a target's empty option removes the shared one
        lines.append(f"{key} =" + ("".join(f"\n    {v}" for v in _lines(value)) if "\n" in value else f" {value}"))
    text = "\n".join(lines) + "\n"
    cfg = work / "setup.cfg"
    if not cfg.exists() or cfg.read_text() != text:
        cfg.write_text(text)
    return work


def _env(profile="ci-fixed"):
    env = dict(os.environ, HYPOTHESIS_PROFILE=profile)
    env.update({k: "1" for k in THREADS})
    # mutmut forks each mutant's worker from a process that has run the tests: Numba's default
    # GNU-OpenMP thread pool then stops the child with SIGTERM; its own work queue survives a fork
    env["NUMBA_THREADING_LAYER"] = "workqueue"
    return env


def _mutmut_run(work, mutants, profile):
    # mutmut keeps which tests call which function in mutants/NAME/mutants/mutmut-stats.json. Do not
    # run `mutmut print-time-estimates` there: mutmut 3.8 empties that map (delete the file after).
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", os.environ.get("MUTMUT_CHILDREN", "1")]
    subprocess.run(cmd + list(mutants), cwd=work, env=_env(profile), check=False)


def run(names, mutants=()):
    """Each target's mutants under the quick `mutation` hypothesis profile, then every one that did not
    die (survived, timed out, or stopped by a signal) again under `mutation-ci`: the examples of
    ci-fixed, CI's profile (tests/conftest.py)."""
    base, targets = _read_config()
    for name in names:
        work = prepare(name, base, targets[name])
        print(f"== {name}: {targets[name]['mutate']}", flush=True)
        _mutmut_run(work, mutants, "mutation")
        again = [key for key, status in _results(name, targets[name]).items()
                 if status != "killed" and (not mutants or key in mutants)]
        if again:
            prepare(name, base, targets[name])  # tests written meanwhile take part
            print(f"== {name}: {len(again)} not killed, run again with ci-fixed's examples", flush=True)
            _mutmut_run(work, again, "mutation-ci")


def _results(name, target):
    """{mutant name: status} from mutmut's record of the target's mutated file."""
    from mutmut.stats import status_by_exit_code
    meta = WORK / name / "mutants" / (_installed_path(target["mutate"]) + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {key: status_by_exit_code[code] for key, code in codes.items()}


def verdicts():
    """{mutant name: (verdict, reason)} from tools/mutation_verdicts.txt."""
    out = {}
    for line in VERDICTS.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            verdict, _, why = rest.partition(":")
            if verdict not in ("equivalent", "killed by hand", "other"):
                raise ValueError(f"{VERDICTS.name}: unknown verdict {verdict!r} for {key}")
            out[key] = (verdict, why.strip())
    return out


def counts(names):
    _, targets = _read_config()
    given = verdicts()
    print("| target | mutants | killed | killed by hand | survived, equivalent | survived, other | timed out | other |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names or targets:
        results = _results(name, targets[name])
        c = Counter()
        for key, status in results.items():
            if status == "survived" and key in given and given[key][0] != "other":
                status = given[key][0]
            c[status] += 1
        shown = ("killed", "killed by hand", "equivalent", "survived", "timeout")
        rest = ", ".join(f"{v} {k}" for k, v in sorted(c.items()) if k not in shown) or "0"
        print(f"| {name} (`{targets[name]['mutate']}`) | {sum(c.values())} | "
              + " | ".join(str(c[k]) for k in shown) + f" | {rest} |")


def survivors(names):
    """Each mutant that neither died nor has a verdict, with the lines it changes."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    _, targets = _read_config()
    given = verdicts()
    for name in names or targets:
        path = _installed_path(targets[name]["mutate"])
        cwd = os.getcwd()
        os.chdir(WORK / name)
        try:
            for key, status in sorted(_results(name, targets[name]).items()):
                if status not in ("killed", "not checked") and key not in given:
                    diff = get_diff_for_mutant(key, path=path).splitlines()
                    changed = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
                    print(f"## {status}: {key}", *changed, sep="\n", flush=True)
        finally:
            os.chdir(cwd)


def main(argv):
    if len(argv) < 1 or argv[0] not in ("run", "counts", "survivors"):
        sys.exit(__doc__)
    _, targets = _read_config()
    command, rest = argv[0], argv[1:]
    names = [a for a in rest if a in targets]
    unknown = [a for a in rest if a not in targets and "." not in a]
    if unknown:
        sys.exit(f"unknown targets {unknown}; setup.cfg defines {sorted(targets)}")
    if command == "run":
        run(names or list(targets), [a for a in rest if a not in targets])
    elif command == "counts":
        counts(names)
    else:
        survivors(names)


if __name__ == "__main__":
    main(sys.argv[1:])
