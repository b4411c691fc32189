"""The README opens with the two commands users run first; CI must run the second verbatim."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert cmds[0].startswith("./install.sh && vla-compress ")
    assert cmds[1].startswith("./install.sh && ")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in [line.strip() for line in ci]


def test_readme_main_command_runs_a_shipped_recipe_on_a_shipped_checkpoint():
    from vla_compress.cli.pipeline_cmd import DEMO_CHECKPOINT, DEMO_RECIPE
    from vla_compress.pipeline.recipe import load_recipe

    assert _readme_commands()[0] == "./install.sh && vla-compress demo"
    assert (DEMO_CHECKPOINT / "config.json").is_file(), f"the demo uses {DEMO_CHECKPOINT}, which is not shipped"
    assert load_recipe(DEMO_RECIPE).name == DEMO_RECIPE
