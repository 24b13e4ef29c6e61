"""Configuration layers: defaults < config file < MRQ_* environment < command line, and the
clear one-line errors for every kind of bad input."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from mrq.config import (
    DASHBOARD,
    DEPRECATED_FLAGS,
    OPTIONS,
    QUEUE,
    RUN,
    WORKER,
    Option,
    build_parser,
    deprecation_warnings,
    load_settings,
)
from mrq.exceptions import ConfigError
from mrq.options import COMMANDS
from mrq.options import _parse_bool as bool_parser


def write_config(tmp_path: Path, body: str, name: str = "mrq-config.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def worker_settings(tmp_path: Path, argv: list[str] | None = None, env: dict[str, str] | None = None):
    return load_settings(argv or [], scope=WORKER, env=env or {}, cwd=tmp_path)[0]


# --- precedence --------------------------------------------------------------------------------


def test_defaults_apply_without_any_layer(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path)
    assert settings.greenlets == 1
    assert settings.queues == ["default"]
    assert settings.redis_prefix == "mrq"
    assert settings.sources["greenlets"] == "default"


def test_config_file_in_working_directory_overrides_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "GREENLETS = 7\nQUEUES = ['high', 'low']\n")
    settings = worker_settings(tmp_path)
    assert settings.greenlets == 7
    assert settings.queues == ["high", "low"]
    assert settings.sources["greenlets"] == "file"


def test_environment_overrides_config_file(tmp_path: Path) -> None:
    write_config(tmp_path, "GREENLETS = 7\n")
    settings = worker_settings(tmp_path, env={"MRQ_GREENLETS": "12", "MRQ_QUEUES": "a b"})
    assert settings.greenlets == 12
    assert settings.queues == ["a", "b"]
    assert settings.sources["greenlets"] == "env"


def test_command_line_overrides_environment_and_file(tmp_path: Path) -> None:
    write_config(tmp_path, "GREENLETS = 7\nLOG_LEVEL = 'WARNING'\n")
    settings = worker_settings(
        tmp_path, ["--greenlets", "30", "--log_level", "INFO", "q1", "q2"], env={"MRQ_GREENLETS": "12"}
    )
    assert settings.greenlets == 30
    assert settings.queues == ["q1", "q2"]
    # INFO is also the default: an explicitly passed flag still wins over the file.
    assert settings.log_level == "INFO"
    assert settings.sources["log_level"] == "cli"


def test_gevent_is_an_alias_of_greenlets(tmp_path: Path) -> None:
    assert worker_settings(tmp_path, ["--gevent", "5"]).greenlets == 5


def test_explicit_config_path_replaces_the_default_file(tmp_path: Path) -> None:
    write_config(tmp_path, "GREENLETS = 7\n")
    other = write_config(tmp_path, "GREENLETS = 3\n", name="other.py")
    settings = worker_settings(tmp_path, ["--config", str(other)])
    assert settings.greenlets == 3
    assert settings.config_file == str(other)


def test_unknown_uppercase_file_keys_pass_through(tmp_path: Path) -> None:
    write_config(tmp_path, """
        MY_CUSTOM_KEY = {"a": 1}
        def HOOK(name, incr=1, **kw):
            return name
        METRIC_HOOK = HOOK
        _private = 1
        lower = 2
    """)
    settings = worker_settings(tmp_path)
    assert settings["my_custom_key"] == {"a": 1}
    assert settings["hook"]("x") == "x"
    assert settings.metric_hook("y") == "y"
    assert "lower" not in settings and "_private" not in settings


def test_mistyped_keys_and_variables_are_named_with_the_nearest_setting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_config(tmp_path, """
        GREENLET = 5
        DEQUEUE_STRATEGIE = "burst"
        MY_API_KEY = "x"
        REDIS_SECOND = "redis://127.0.0.1:1/0"
        MAX_LATENCY = 1
    """)
    with caplog.at_level("WARNING", logger="mrq.config"):
        settings = worker_settings(tmp_path, env={"MRQ_GREENLET": "7", "MRQ_NOPE": "1", "MRQ_TEST_X": "1",
                                                  "MRQ_CONFIG": str(tmp_path / "mrq-config.py")})
    lines = [record.getMessage() for record in caplog.records]
    assert settings.greenlets == 1 and settings["greenlet"] == 5  # not applied, kept as a custom key
    assert any("GREENLET is not an mrq setting: did you mean GREENLETS?" in line for line in lines)
    assert any("DEQUEUE_STRATEGIE is not an mrq setting: did you mean DEQUEUE_STRATEGY?" in line for line in lines)
    assert any("MRQ_GREENLET is not an mrq setting (did you mean MRQ_GREENLETS?): ignored" in line
               for line in lines)
    assert any(line.startswith("environment variable MRQ_NOPE is not an mrq setting") for line in lines)
    quiet = ("MY_API_KEY", "REDIS_SECOND", "MAX_LATENCY", "MRQ_TEST_X", "MRQ_CONFIG")  # custom, named, MRQ's, ours
    assert not [line for line in lines if any(name in line for name in quiet)], lines
    assert len(lines) == 4


def test_boolean_flag_and_env(tmp_path: Path) -> None:
    assert worker_settings(tmp_path, ["--scheduler"]).scheduler is True
    assert worker_settings(tmp_path, env={"MRQ_SCHEDULER": "0"}).scheduler is False
    assert worker_settings(tmp_path, env={"MRQ_SCHEDULER": "yes"}).scheduler is True


def test_tasks_from_environment_as_json(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path, env={"MRQ_TASKS": '{"tasks.x": {"queue": "q"}}'})
    assert settings.tasks == {"tasks.x": {"queue": "q"}}


# --- bad input -----------------------------------------------------------------------------------


def test_syntax_error_in_config_file_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "GREENLETS = 4\nQUEUES = ['a',\n")
    with pytest.raises(ConfigError) as info:
        worker_settings(tmp_path)
    message = str(info.value)
    assert str(path) in message and "line" in message and "syntax error" in message
    assert "\n" not in message


def test_exception_in_config_file_is_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "import nonexistent_module_xyz\n")
    with pytest.raises(ConfigError) as info:
        worker_settings(tmp_path)
    assert str(path) in str(info.value) and "nonexistent_module_xyz" in str(info.value)


def test_wrong_type_in_config_file_names_file_key_and_type(tmp_path: Path) -> None:
    path = write_config(tmp_path, "GREENLETS = 'many'\n")
    with pytest.raises(ConfigError) as info:
        worker_settings(tmp_path)
    message = str(info.value)
    assert str(path) in message and "GREENLETS" in message and "integer" in message and "'many'" in message


def test_wrong_type_in_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        worker_settings(tmp_path, env={"MRQ_GREENLETS": "abc"})
    assert "MRQ_GREENLETS" in str(info.value) and "integer" in str(info.value) and "'abc'" in str(info.value)


def test_out_of_range_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--greenlets.*>= 1"):
        worker_settings(tmp_path, ["--greenlets", "0"])


def test_invalid_choice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dequeue_strategy.*sequential, parallel, burst.*'fastest'"):
        worker_settings(tmp_path, ["--dequeue_strategy", "fastest"])


def test_unknown_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        worker_settings(tmp_path, ["--greenletz", "3"])
    assert "--greenletz" in str(info.value)


def test_invalid_json_in_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"MRQ_TASKS.*JSON"):
        worker_settings(tmp_path, env={"MRQ_TASKS": "{not json"})


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        worker_settings(tmp_path, ["--config", str(tmp_path / "nope.py")])


def test_bad_redis_prefix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="redis_prefix"):
        worker_settings(tmp_path, env={"MRQ_REDIS_PREFIX": "my prefix"})


def test_every_option_has_help_and_a_valid_default() -> None:
    for option in OPTIONS:
        assert option.help, option.name
        assert option.convert(option.default) == option.default, option.name


def test_worker_help_lists_every_worker_and_general_flag() -> None:
    help_text = build_parser(WORKER).format_help()
    for option in OPTIONS:
        if option.cli and option.scope in ("general", WORKER) and not option.positional:
            assert option.flag in help_text, option.name


def _listed_flags(help_text: str) -> list[str]:
    """The flags --help lists, in order: the first word of each option line."""
    return re.findall(r"(?m)^  (--?[\w-]+)", help_text)


@pytest.mark.parametrize("scope", COMMANDS)
def test_help_is_grouped_and_lists_only_what_the_command_uses(scope: str) -> None:
    help_text = build_parser(scope, prog=f"mrq-{scope}").format_help()
    sections = re.findall(r"(?m)^(\S.*):$", help_text)
    expected = [title for title, present in (
        ("options", any(o.cli and o.scope == scope and not o.positional for o in OPTIONS)),
        ("connections", True), ("job defaults (per task: TASKS in the config file)", scope != RUN),
        ("other options", True)) if present]
    assert [s for s in sections if s != "positional arguments"] == expected, sections
    listed = _listed_flags(help_text)
    for option in OPTIONS:
        if not option.cli or option.positional:
            continue
        assert (option.flag in listed) == option.shown_for(scope), (scope, option.name)
        if "_" in option.name:
            assert "--" + option.name not in listed  # one spelling shown: the hyphenated one
    assert not any(flag.lstrip("-") in DEPRECATED_FLAGS or flag.lstrip("-").replace("-", "_") in DEPRECATED_FLAGS
                   for flag in listed)
    # the command's own options come first, then connections (--redis first of them)
    own = [o.flag for o in OPTIONS if o.cli and o.scope == scope and not o.positional]
    if own:
        assert listed.index(own[-1]) < listed.index("--redis")
    if scope in (DASHBOARD, QUEUE):
        assert not {"--name", "--greenlets", "--quiet", "--default-job-timeout", "--max-jobs"} & set(listed)


def test_every_flag_is_accepted_hyphenated_and_with_underscores(tmp_path: Path) -> None:
    for option in OPTIONS:
        if not option.cli or option.positional or option.scope not in ("general", WORKER):
            continue
        spellings = dict.fromkeys((option.flag, "--" + option.name))
        for flag in spellings:
            if option.parse is bool_parser:
                on = worker_settings(tmp_path, [flag])
                off = worker_settings(tmp_path, ["--no-" + flag[2:]])
                assert on[option.name] is True and off[option.name] is False, flag
                assert on.sources[option.name] == "cli" == off.sources[option.name]
                continue
            value = option.choices[-1] if option.choices else _sample(option)
            settings = worker_settings(tmp_path, [flag, value])
            assert settings.sources[option.name] == "cli", flag
            assert settings[option.name] == option.convert(value), flag
    for name in DEPRECATED_FLAGS:  # MRQ 0.9's flags, in either spelling, still start the worker
        takes_value = DEPRECATED_FLAGS[name][0]
        for flag in ("--" + name, "--" + name.replace("_", "-")):
            _, args = load_settings([flag, *(["1"] if takes_value else [])], scope=WORKER, env={}, cwd=tmp_path)
            assert deprecation_warnings(args) == [f"--{name} is deprecated and ignored: {DEPRECATED_FLAGS[name][2]}"]


def _sample(option: Option) -> str:
    return {"redis": "redis://127.0.0.1:6390/1", "mongodb_jobs": "mongodb://127.0.0.1:27018/other",
            "mongodb_logs": "0", "redis_prefix": "other", "log_levels": "mrq.worker=DEBUG",
            "task_whitelist": "tasks.a,tasks.b", "task_blacklist": "tasks.c"}.get(
        option.name, str(max(7, int(option.minimum or 0))) if option.type_name in ("integer", "number") else "text")


def test_configuration_reference_in_docs_is_current() -> None:
    from mrq.config import reference_markdown

    docs = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert reference_markdown() in docs, "regenerate with: python -m mrq.config (see docs/configuration.md)"


#: The commands, and the most lines their --help may take at 80 columns (MRQ 0.9's layout took
#: 230, 119, 113 and 135: every shared option first, in both spellings, deprecated flags too).
HELP_LINES = {"mrq.cli.worker": 150, "mrq.cli.run": 60, "mrq.cli.queue": 90, "dashboard.cli": 65}


@pytest.mark.parametrize("module", sorted(HELP_LINES))
def test_every_command_has_a_short_help_and_a_version(module: str) -> None:
    import os
    import subprocess
    import sys

    from mrq.version import __version__

    env = {**os.environ, "COLUMNS": "80"}
    root = Path(__file__).parent.parent
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=env,
                          cwd=root, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) <= HELP_LINES[module], len(lines)
    assert lines[0].startswith("usage: mrq-") and lines[0].endswith(("[options]", "...]")), lines[0]
    assert "--max_jobs = --max-jobs" in done.stdout  # the underscore spelling is said to work
    for flag in ("--version", "-v"):
        done = subprocess.run([sys.executable, "-m", module, flag], capture_output=True, text=True, env=env,
                              cwd=root, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == f"mrq {__version__}", done
