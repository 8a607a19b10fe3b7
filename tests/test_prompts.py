"""Built-in prompts and the --prompt_override loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from autointerp_full.config import RunConfig
from autointerp_full.errors import UserError
from autointerp_full.prompts import default_prompts, load_prompts

REQUIRED = [
    "explainers.default.system",
    "explainers.default.system_single_token",
    "explainers.default.system_contrastive",
    "explainers.default.cot",
    "explainers.np_max_act.system_concise",
    "scorers.detection.system",
    "scorers.fuzz.system",
    "scorers.intruder.system",
    "scorers.simulation.system",
]


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty folder with no $PROMPT_CONFIG_FILE."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROMPT_CONFIG_FILE", raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def override(path: Path | None = None) -> RunConfig:
    return RunConfig(prompt_override=True, prompt_config_file=str(path) if path else None)


def test_defaults_have_every_key_as_text() -> None:
    prompts = default_prompts()
    assert set(REQUIRED) <= set(prompts.keys())
    for key in prompts.keys():
        assert isinstance(prompts.get(key), str) and len(prompts.get(key)) > 50
    for key in (
        "explainers.default.system",
        "explainers.default.system_single_token",
        "explainers.default.cot",
    ):
        assert "{prompt}" in prompts.get(key)
    assert load_prompts(RunConfig()).keys() == prompts.keys()


def test_messages_split_at_placeholder() -> None:
    prompts = default_prompts()
    messages = prompts.messages("explainers.default.system", "EXAMPLES HERE")
    assert messages[0]["role"] == "system" and "{prompt}" not in messages[0]["content"]
    assert messages[1] == {"role": "user", "content": "EXAMPLES HERE"}
    # Same system message whatever the examples: the server's prefix cache can reuse it.
    assert prompts.messages("explainers.default.system", "other")[0] == messages[0]
    no_placeholder = prompts.messages("explainers.default.system_contrastive", "X")
    assert (
        no_placeholder[0]["content"] == prompts.get("explainers.default.system_contrastive").strip()
    )
    assert prompts.render("explainers.default.system", prompt="Z").rstrip().endswith("Z")


def test_partial_override_keeps_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mine.yaml",
        """
explainers:
  default:
    system: |
      Finance researcher. {prompt}
scorers:
  fuzz:
    system: Judge the marks.
""",
    )
    prompts = load_prompts(override(path))
    assert prompts.get("explainers.default.system") == "Finance researcher. {prompt}\n"
    assert prompts.get("scorers.fuzz.system") == "Judge the marks."
    defaults = default_prompts()
    assert prompts.get("scorers.detection.system") == defaults.get("scorers.detection.system")
    assert prompts.source == str(path)
    assert prompts.messages("explainers.default.system", "EX")[1]["content"] == "EX"


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "explainers:\n  default:\n    sytem: hi {prompt}\n",
            "unknown prompt key 'explainers.default.sytem'; "
            "did you mean 'explainers.default.system'",
        ),
        (
            "explainers:\n  default:\n    system: no placeholder here\n",
            "prompt 'explainers.default.system' lacks the {prompt} placeholder",
        ),
        (
            "scorers:\n  fuzz:\n    system: 42\n",
            "prompt 'scorers.fuzz.system' must be text, got int",
        ),
        ("scorers:\n  fuzz:\n    system:\n", "prompt 'scorers.fuzz.system' must be text"),
        ("- just\n- a list\n", "expected a mapping"),
        ("", "the file is empty"),
    ],
)
def test_bad_override_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(UserError) as err:
        load_prompts(override(path))
    message = str(err.value)
    assert expected in message and str(path) in message and "--prompt_config_file" in message
    assert "\n" not in message


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", 'scorers:\n  fuzz:\n    system: "unclosed\n  x: [\n')
    with pytest.raises(UserError, match=r"broken.yaml: YAML syntax error at line \d+"):
        load_prompts(override(path))
    path = write(tmp_path / "tabs.yaml", "scorers:\n  fuzz: {system: a\n  detection: b\n")
    with pytest.raises(UserError, match="line 3"):
        load_prompts(override(path))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--prompt_config_file: .*nope.yaml: no such file"):
        load_prompts(override(tmp_path / "nope.yaml"))


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="^--prompt_config_file: --prompt_override needs"):
        load_prompts(override())
    env_file = write(tmp_path / "env.yaml", "scorers:\n  fuzz:\n    system: from env\n")
    monkeypatch.setenv("PROMPT_CONFIG_FILE", str(env_file))
    assert load_prompts(override()).get("scorers.fuzz.system") == "from env"
    write(tmp_path / "prompts.yaml", "scorers:\n  fuzz:\n    system: from cwd\n")
    assert load_prompts(override()).get("scorers.fuzz.system") == "from cwd"
    flag = write(tmp_path / "flag.yaml", "scorers:\n  fuzz:\n    system: from flag\n")
    assert load_prompts(override(flag)).get("scorers.fuzz.system") == "from flag"
    # Without --prompt_override nothing is read, even with files around.
    assert load_prompts(RunConfig(prompt_config_file=str(flag))).get(
        "scorers.fuzz.system"
    ) == default_prompts().get("scorers.fuzz.system")


def test_env_var_pointing_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPT_CONFIG_FILE", str(tmp_path / "gone.yaml"))
    with pytest.raises(UserError, match=r"^\$PROMPT_CONFIG_FILE: .*gone.yaml: no such file"):
        load_prompts(override())
