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


def test_readme_main_command_names_a_shipped_checkpoint():
    ckpt = _readme_commands()[0].split("vla-compress eval ", 1)[1].split()[0]
    assert (ROOT / ckpt / "config.json").is_file(), f"README's main command uses {ckpt}, which is not shipped"
