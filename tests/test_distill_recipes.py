"""fiqa-distill's recipes: the embedded student's cycles as committed files, read strictly, equal to the flags
that made them; the command keeps a handful of options."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from fiqa_compile.distill import DistillConfig, build_parser, main, recipe_of
from fiqa_compile.distill_recipe import RECIPES_DIR, RecipeError, load_recipe, recipe_keys, shipped_recipes

ROOT = Path(__file__).resolve().parents[1]

# The eleven cycles as scripts/make_defaults.sh ran them before recipes (every DistillConfig field was a flag then),
# and the recipe each is now.
OLD_CYCLES = {
    "01_faces": '--faces "$FACES" --versions 2 --epochs 6 --seed 0 --no-utility-tta --out "$RUNS/student_faces"',
    "02_finetune": '--faces "$FACES" --versions 2 --seed 0 --init "$RUNS/student_faces" --epochs 10 --lr 0.0015 '
                   '--utility-weight 2 --no-utility-tta --out "$RUNS/student_ft"',
    "03_tta_hints": '--faces "$FACES" --versions 2 --seed 0 --init "$RUNS/student_ft" --epochs 7 --lr 0.001 '
                    '--utility-weight 3 --token-weight 1 --embedding-weight 1 --ema 0.998 --out "$RUNS/student_tta"',
    **{name: f'--faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/{init}" --epochs 3 --lr 0.001 '
             '--utility-weight 3 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --threads 2 '
             f'--out "$RUNS/{out}"'
       for name, init, out in (("04_background", "student_tta", "student_bg"),
                               ("05_background2", "student_bg", "student_bg2"))},
    "06_mirror": '--faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/student_bg2" --epochs 3 --lr 0.001 '
                 '--utility-weight 3 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --mirror-average '
                 '--threads 2 --out "$RUNS/student_mir"',
    "07_utility6": '--faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/student_mir" --epochs 3 --lr 0.001 '
                   '--utility-weight 6 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta '
                   '--mirror-average --threads 2 --out "$RUNS/student_mir2"',
    **{name: f'--faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/{init}" --epochs {epochs} --lr {lr} '
             '--utility-weight 6 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --mirror-average '
             f'--mixup 0.25 --part-swap {swap} --threads 2 --out "$RUNS/{out}"'
       for name, init, out, epochs, lr, swap in (
           ("08_mixup", "student_mir2", "student_mix", 3, 0.001, 0),
           ("09_mixup_low_lr", "student_mix", "student_mix2", 3, 0.0005, 0),
           ("10_part_swap", "student_mix2", "student_swap", 3, 0.0005, 0.25),
           ("11_part_swap_long", "student_swap", "student_swap2", 6, 0.001, 0.5))},
}


def old_flags(line: str) -> argparse.Namespace:
    """The flags as fiqa-distill read them before recipes: --versions, the run options, and one flag per
    DistillConfig field (a bool as --x / --no-x; a None default as a float)."""
    ap = argparse.ArgumentParser()
    for run_option in ("--faces", "--crops", "--out", "--init", "--utility-teacher", "--perceptual-teacher"):
        ap.add_argument(run_option, type=Path)
    ap.add_argument("--versions", type=int, default=2)
    ap.add_argument("--threads", type=int)
    for f in dataclasses.fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            ap.add_argument(flag, type=float if f.default is None else type(f.default), default=f.default)
    args = ap.parse_args(shlex.split(line))
    args.config = DistillConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DistillConfig)})
    return args


def make_defaults_cycles() -> dict[str, list[str]]:
    """recipe -> the fiqa-distill arguments stage 3 of scripts/make_defaults.sh passes (its ``distil`` lines)."""
    script = (ROOT / "scripts" / "make_defaults.sh").read_text()
    body = re.search(r"^distil\(\) \{.*?\n  (fiqa-distill .*?)\n\}", script, re.M | re.S).group(1)
    assert body == ('fiqa-distill --recipe "$RECIPES/$1.json" --faces "$2" --out "$RUNS/$3" '
                    '${4:+--init "$RUNS/$4"} ${5:+--threads "$5"}')
    cycles = {}
    for line in re.findall(r"^distil (.+)$", script, re.M):
        recipe, faces, out, *rest = shlex.split(line, posix=False)
        argv = ["--recipe", str(RECIPES_DIR / f"{recipe}.json"), "--faces", faces.strip('"'), "--out", f"$RUNS/{out}"]
        if rest:
            argv += ["--init", f"$RUNS/{rest[0]}"]
        if len(rest) > 1:
            argv += ["--threads", rest[1]]
        cycles[recipe] = argv
    return cycles


def test_the_eleven_cycles_are_committed_recipes_equal_to_the_flags_that_made_them():
    cycles = make_defaults_cycles()
    assert list(cycles) == list(OLD_CYCLES) == [p.stem for p in shipped_recipes()]
    for name, line in OLD_CYCLES.items():
        old = old_flags(line)
        new = build_parser().parse_args(cycles[name])
        recipe = recipe_of(new)
        assert recipe.config == old.config, name
        assert recipe.versions == old.versions, name
        assert recipe.utility_teacher is None and recipe.perceptual_teacher is None, name
        # the same photos, start and run directory as before; threads do not change the configuration
        assert (str(new.faces), str(new.init), str(new.out), new.threads) == \
               (str(old.faces), str(old.init), str(old.out), old.threads), name


def test_shipped_recipes_are_complete_and_described():
    keys = recipe_keys()
    readme = (RECIPES_DIR / "README.md").read_text()
    for path in shipped_recipes():
        content = json.loads(path.read_text())
        assert list(content) == list(keys), f"{path.name} lists every key, in the README's order"
        description = content["description"]
        assert description.startswith(f"Cycle {int(path.stem[:2])}: ") and "\n" not in description, path.name
        assert f"[`{path.name}`]({path.name})" in readme, f"the README's table lists {path.name}"
    for key in keys:
        assert f"| `{key}` |" in readme, f"the README explains {key}"


def test_recipes_are_package_data():
    host = tomllib.loads((ROOT / "host" / "pyproject.toml").read_text())
    assert "recipes/*" in host["tool"]["setuptools"]["package-data"]["fiqa_compile"]


def test_no_recipe_is_the_built_in_defaults_and_the_command_line_overrides_a_recipe(tmp_path):
    base = ["--crops", str(tmp_path), "--out", str(tmp_path / "o")]
    assert recipe_of(build_parser().parse_args(base)).config == DistillConfig()
    recipe = recipe_of(build_parser().parse_args([*base, "--recipe", "11_part_swap_long"]))  # a shipped name
    assert recipe.path == RECIPES_DIR / "11_part_swap_long.json" and recipe.config.part_swap == 0.5
    cfg = recipe_of(build_parser().parse_args([*base, "--recipe", "08_mixup", "--epochs", "2", "--lr", "0.01",
                                               "--seed", "3", "--max-minutes", "5"])).config
    assert (cfg.epochs, cfg.lr, cfg.seed, cfg.max_minutes, cfg.mixup) == (2, 0.01, 3, 5.0, 0.25)


def test_a_toml_recipe_reads_as_its_json_twin_and_teacher_paths_are_read_from_its_folder(tmp_path):
    shipped = json.loads((RECIPES_DIR / "10_part_swap.json").read_text())
    lines = [f"{k} = {json.dumps(v)}" for k, v in shipped.items() if v is not None]
    (tmp_path / "swap.toml").write_text("\n".join(lines) + '\nutility_teacher = "teachers/u"\n')
    recipe = load_recipe(tmp_path / "swap.toml")
    assert recipe.config == load_recipe("10_part_swap").config
    assert recipe.utility_teacher == tmp_path / "teachers" / "u" and recipe.perceptual_teacher is None


def test_the_help_has_few_options_and_no_measured_figures():
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings]
    assert len(options) <= 12 and all(a.help for a in options)
    text = parser.format_help()
    assert not re.search(r"\d\.\d|SRCC|%", text), text


@pytest.mark.parametrize("content, message", [
    ({"ema": 1.5}, "ema = 1.5: the decay must be in [0, 1)"),
    ({"augment": -0.1}, "augment = -0.1: the share of each batch must be in [0, 1]"),
    ({"mixup": 1.5}, "mixup = 1.5: the share of each batch must be in [0, 1]"),
    ({"part_swap": 2}, "part_swap = 2.0: the share of each batch must be in [0, 1]"),
    ({"mixup": 0.3, "online_utility": False}, "mixup needs online_utility"),
    ({"part_swap": 0.3, "online_utility": False}, "part_swap needs online_utility"),
    ({"augment": 0.3, "online_utility": False}, "augment needs online_utility"),
    ({"token_weight": 1, "online_utility": False}, "token_weight needs online_utility"),
    ({"epochs": 0}, "epochs = 0: need 1 or more"),
    ({"batch_size": 0}, "batch_size = 0: need 1 or more"),
    ({"held_out": 1.2}, "held_out = 1.2: the held-out share must be between 0 and 1"),
    ({"student": "bogus"}, "student = 'bogus' is not a student architecture"),
    ({"versions": -1}, "versions = -1 must be 0 or more"),
    ({"utility_weigth": 2}, "unknown key 'utility_weigth' (did you mean utility_weight?)"),
    ({"max_minutes": 30}, "max_minutes is a setting of a run, not of a recipe: pass --max-minutes"),
    ({"ema": "0.9"}, "ema = '0.9' must be a number"),
    ({"epochs": 3.5}, "epochs = 3.5 must be an integer"),
    ({"mirror_average": 1}, "mirror_average = 1 must be true or false"),
    ({"utility_teacher": 3}, "utility_teacher = 3 must be a string or null"),
    ({"description": "two\nlines"}, "description must be one line"),
])
def test_a_bad_recipe_is_refused_naming_the_key_and_the_file_before_any_work(content, message, tmp_path, capsys):
    recipe, out = tmp_path / "bad.json", tmp_path / "student"
    recipe.write_text(json.dumps(content))
    assert main(["--crops", str(tmp_path / "no-labels"), "--out", str(out), "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"recipe {recipe}: " in err and message in err
    assert not out.exists()
    with pytest.raises(RecipeError):
        load_recipe(recipe)


@pytest.mark.parametrize("text, message", [("{not json", "is not valid JSON"), ("[1, 2]", "one object of keys")])
def test_an_unreadable_recipe_is_refused(text, message, tmp_path):
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(tmp_path / "r.json")
    with pytest.raises(RecipeError, match="no such file, nor a shipped recipe"):
        load_recipe(tmp_path / "missing.json")
